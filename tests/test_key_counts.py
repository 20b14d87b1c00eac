"""Admission's id counts (trainer_modules/key_counts.py): exact over any split into batches
and spans, and written as tft.vocabulary writes them (test_admission runs them in Transform)."""
import collections

import numpy as np

from deepfm_tfx.trainer_modules import key_counts


def test_counts_are_exact_however_the_keys_are_split_into_batches_and_merged():
    rng = np.random.default_rng(0)
    keys = np.concatenate([rng.zipf(1.2, 50_000) % 7000, rng.integers(0, 1 << 60, 200)]).astype(np.int64)
    truth = collections.Counter(keys.tolist())
    batches = np.array_split(keys, 37)
    # Two "spans" counted apart, one of them from its cache encoding, then merged.
    coder = key_counts._CountsCoder()
    span1 = coder.decode_cache(coder.encode_cache(key_counts.merge([key_counts.count(b) for b in batches[:20]])))
    span2 = key_counts.merge([key_counts.count(b) for b in batches[20:]])
    merged_keys, merged_counts = key_counts.merge([span1, span2])
    assert dict(zip(merged_keys.tolist(), merged_counts.tolist())) == truth
    assert np.all(np.diff(merged_keys) > 0)


def test_the_file_keeps_keys_at_min_count_largest_count_first_then_largest_key_text():
    counts = (np.array([5, 12, 40, 7, 300], np.int64), np.array([3, 3, 1, 9, 3], np.int64))
    # tft.vocabulary sorts (count, token bytes) descending: "5" > "300" > "12" as text.
    assert key_counts.vocabulary_lines(counts, 3) == b"9 7\n3 5\n3 300\n3 12\n"
    assert key_counts.vocabulary_lines(counts, 10) == key_counts.EMPTY_LINE
