"""The admission section: frequency admission's min_count against the table
factor, on the criteo profile at 100k and 500k rows (2M with --admission-rows),
for the Keras model and for DeepCTR 0.9.4's DeepFM on the same rows, with and
without the same admission.

Each cell trains on the same rows from memory: the span's 90% training split
with the transform graph's ids computed here in numpy (the field-prefixed
token's 64-bit fingerprint mod the table, or the field's rare row when the
training split saw the id fewer than min_count times), numbers log-z-scored
as Transform does. The table for a factor f is the next power of two at least
f times the admitted ids, as id_space sizes it. Every model trains for the
learning curve's passes over its data and is scored on the held-out 10%,
against the planted truth's Bayes AUC on the same rows.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Sequence

from bench.common import fmt, parse_list, table, write_partial
from bench.learning_curve import steps_for
from bench.runs import ensure_data

NEEDS = ()
MIN_COUNTS, FACTORS = (1, 2, 3, 5, 10), (0.5, 1, 2)
SIZES, QUICK_SIZES = (100_000, 500_000), (20_000,)
GAP_TARGET, GAP_TARGET_ROWS = 0.012, 500_000
EVAL_SHARE = 0.1
FINGERPRINT_MOD = 1 << 62  # a power of two: fingerprint mod 2^62 mod 2^k is Transform's id at 2^k buckets


def add_arguments(p) -> None:
    p.add_argument("--admission-rows", type=lambda s: parse_list(s, int),
                   help="admission: sizes (default 100000,500000; --quick: 20000)")
    p.add_argument("--admission-min-counts", type=lambda s: parse_list(s, int),
                   help="admission: min_count values (default 1,2,3,5,10)")
    p.add_argument("--admission-factors", type=lambda s: parse_list(s, float),
                   help="admission: table factors over the admitted ids (default 0.5,1,2)")
    p.add_argument("--admission-no-deepctr", action="store_true", help="admission: skip DeepCTR's cells")
    p.add_argument("--admission-no-counting", action="store_true",
                   help="admission: skip timing Transform's id counting (tft.vocabulary against key_counts)")


def load_rows(rows: int) -> Dict[str, Any]:
    """The span as fingerprints, numbers and labels, split 90/10 by a seeded permutation."""
    import glob
    import os

    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from deepfm_tfx.schemas import feature_spec
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    root = ensure_data(rows, profile="criteo")
    frame = pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False)
                       for f in sorted(glob.glob(os.path.join(root, "span-1", "*.csv")))], ignore_index=True)
    fingerprints = {name: tf.strings.to_hash_bucket_fast(
        (name + "=" + frame[name]).to_numpy(object).astype(bytes), FINGERPRINT_MOD).numpy()
        for name in spec.categorical}
    numbers = {name: pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64) for name in spec.numerical}
    raw = {name: frame[name].to_numpy(object) for name in spec.categorical}
    raw.update(numbers)
    labels = frame[spec.label].astype(int).to_numpy()
    order = np.random.default_rng(0).permutation(len(labels))
    cut = int(len(labels) * (1 - EVAL_SHARE))
    return {"spec": spec, "root": root, "fingerprints": fingerprints, "numbers": numbers, "raw": raw,
            "labels": labels, "train": np.sort(order[:cut]), "eval": np.sort(order[cut:])}


def numerical(data: Dict[str, Any]) -> Dict[str, Any]:
    """Signed log1p, then z-scored with the training split's present values; missing stays NaN."""
    import numpy as np
    out = {}
    for name, x in data["numbers"].items():
        v = np.sign(x) * np.log1p(np.abs(x))
        train = v[data["train"]]
        train = train[~np.isnan(train)]
        std = train.std() if len(train) else 0.0
        out[name] = ((v - train.mean()) / std if std > 0 else np.where(np.isnan(v), v, 0.0)).astype(np.float32)
    return out


def admitted_sets(data: Dict[str, Any], min_count: int) -> Dict[str, Any]:
    """Per field, the fingerprints the training split holds at least min_count times."""
    import numpy as np
    out = {}
    for name, h in data["fingerprints"].items():
        keys, counts = np.unique(h[data["train"]], return_counts=True)
        out[name] = keys[counts >= min_count]
    return out


def ids(data: Dict[str, Any], admitted, buckets: int, min_count: int) -> Dict[str, Any]:
    """What the transform graph gives: hashed id, or the field's rare row after the table."""
    import numpy as np
    out = {}
    for i, (name, h) in enumerate(data["fingerprints"].items()):
        own = h % buckets
        out[name] = own if min_count <= 1 else np.where(np.isin(h, admitted[name]), own, buckets + i)
    return out


def _split(features, labels, index):
    return {k: v[index] for k, v in features.items()}, labels[index].astype("float32")


def train_keras(features, labels, data, num_ids: int, steps: int) -> float:
    import types

    from bench.transformed_data import array_dataset
    from deepfm_tfx.synthetic.generator import auc
    from deepfm_tfx.trainer_modules import hparams, keras_trainer
    from deepfm_tfx.trainer_modules.deepfm import FieldLayout
    spec = data["spec"]
    config = hparams.TrainingConfig()
    layout = FieldLayout(categorical=tuple(spec.categorical), numerical=tuple(spec.numerical), num_ids=num_ids)
    model = keras_trainer.build_model(types.SimpleNamespace(layout=layout, config=config), steps)
    x, y = _split(features, labels, data["train"])
    model.fit(array_dataset(x, y, config.batch_size), steps_per_epoch=steps, epochs=1, verbose=0)
    ex, ey = _split(features, labels, data["eval"])
    logits = model.predict(ex, batch_size=8192, verbose=0).reshape(-1)
    return auc(ey, logits)


def train_deepctr(features, labels, data, steps: int) -> float:
    """DeepCTR as its examples prepare data: each field label-encoded on the training split."""
    import types

    from bench import deepctr_contender
    from bench.trainer import _optimizer
    from bench.transformed_data import array_dataset
    from deepfm_tfx.synthetic.generator import auc
    from deepfm_tfx.trainer_modules import hparams
    from deepfm_tfx.trainer_modules.deepfm import FieldLayout
    spec = data["spec"]
    config = hparams.TrainingConfig()
    layout = FieldLayout(categorical=tuple(spec.categorical), numerical=tuple(spec.numerical))
    inputs = types.SimpleNamespace(layout=layout, config=config)
    x, y = _split(features, labels, data["train"])
    encoder = deepctr_contender.Encoder(x, layout)
    model = deepctr_contender.build_model(inputs, encoder.vocabulary_sizes, config.steps_per_execution,
                                          _optimizer(config, steps))
    model.fit(array_dataset(encoder(x), y, config.batch_size), steps_per_epoch=steps, epochs=1, verbose=0)
    ex, ey = _split(features, labels, data["eval"])
    return auc(ey, model.predict(encoder(ex), batch_size=8192, verbose=0).reshape(-1))


def bayes(data: Dict[str, Any]) -> float:
    import json
    import os

    from deepfm_tfx.synthetic import generator
    with open(os.path.join(data["root"], "span-1", "bayes.json")) as f:
        report = json.load(f)
    index = data["eval"]
    columns = {k: v[index] for k, v in data["raw"].items()}
    return generator.bayes_of_rows(report, [(columns, data["labels"][index])])["bayes_auc"]


COUNTERS = ("none", "tft.vocabulary", "key_counts")


def _cpu_seconds() -> float:
    import resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def counting(rows: int, min_count: int) -> Dict[str, float]:
    """Seconds of Transform's analysis of a span's admission keys (what preprocessing_fn counts:
    each id's field-tagged hash and each field's total key), in one process on the same rows:
    with no counter (reading the rows into Beam), with tft.vocabulary (what preprocessing_fn
    used before) and with key_counts. Both counters' files are checked to be the same."""
    import glob
    import os
    import tempfile

    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import tensorflow as tf
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.tfxio import tensor_adapter, tensor_representation_util

    from deepfm_tfx.contracts import ADMISSION_FIELD_BITS, ADMISSION_TOTAL_KEY
    from deepfm_tfx.schemas import feature_spec
    from deepfm_tfx.trainer_modules import key_counts, preprocessing
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    root = ensure_data(rows, profile="criteo")
    frame = pd.concat([pd.read_csv(f, dtype=str, keep_default_na=False)
                       for f in sorted(glob.glob(os.path.join(root, "span-1", "*.csv")))], ignore_index=True)
    width = len(spec.categorical)
    keys = np.stack([preprocessing.admission_keys(i, tf.constant((name + "=" + frame[name]).to_numpy(object)
                                                                 .astype(bytes))).numpy()
                     for i, name in enumerate(spec.categorical)]
                    + [np.full(len(frame), i << ADMISSION_FIELD_BITS | ADMISSION_TOTAL_KEY, np.int64)
                       for i in range(width)], axis=1)
    # As Transform reads its input: Arrow record batches, each row a list of its keys.
    schema = schema_utils.schema_from_feature_spec({"k": tf.io.FixedLenFeature([2 * width], tf.int64)})
    config = tensor_adapter.TensorAdapterConfig(
        pa.schema([pa.field("k", pa.large_list(pa.int64()))]),
        tensor_representation_util.InferTensorRepresentationsFromSchema(schema))
    batches = [pa.RecordBatch.from_arrays([pa.LargeListArray.from_arrays(
        pa.array(np.arange(len(chunk) + 1, dtype=np.int64) * 2 * width), pa.array(chunk.reshape(-1)))], ["k"])
        for chunk in np.array_split(keys, max(len(keys) // 1000, 1))]
    seconds, files = {}, {}
    for counter in COUNTERS:
        def fn(inputs, counter=counter):
            flat = tf.reshape(inputs["k"], [-1])
            if counter == "tft.vocabulary":
                tft.vocabulary(flat, frequency_threshold=min_count, store_frequency=True, vocab_filename="counts")
            elif counter == "key_counts":
                key_counts.counted_vocabulary(flat, min_count, "counts")
            return {"k": inputs["k"] + tf.cast(tft.min(flat), tf.int64) * 0}
        out = tempfile.mkdtemp()
        t, cpu = time.time(), _cpu_seconds()
        with tft_beam.Context(temp_dir=tempfile.mkdtemp(), force_tf_compat_v1=False):
            transform_fn = (batches, config) | tft_beam.AnalyzeDataset(fn)
            _ = transform_fn | tft_beam.WriteTransformFn(out)
        seconds[counter] = round(time.time() - t, 1)
        # On a shared machine the wall clock measures the neighbours; the process's CPU time does not.
        seconds[f"{counter} cpu"] = round(_cpu_seconds() - cpu, 1)
        if counter != "none":
            with open(tft.TFTransformOutput(out).vocabulary_file_by_name("counts"), "rb") as f:
                files[counter] = f.read()
        print(f"    counting {rows:,} rows' {keys.size:,} keys, {counter}: {seconds[counter]} s "
              f"({seconds[counter + ' cpu']} s CPU)", flush=True)
    seconds["same_file"] = files["tft.vocabulary"] == files["key_counts"]
    return seconds


def run(args, shared: Dict[str, Any]) -> Dict[str, Any]:
    import numpy as np

    from deepfm_tfx.pipeline.id_space import buckets_for
    sizes = args.admission_rows or list(QUICK_SIZES if args.quick else SIZES)
    min_counts: Sequence[int] = args.admission_min_counts or MIN_COUNTS
    factors: Sequence[float] = args.admission_factors or FACTORS
    out: Dict[str, Any] = {"cells": [], "min_counts": list(min_counts), "factors": list(factors), "counting": {}}
    for rows in sizes:
        if not args.admission_no_counting:
            from deepfm_tfx.schemas import feature_spec
            out["counting"][str(rows)] = counting(rows, feature_spec.load(feature_spec.DEFAULT_SPEC).min_count)
        data = load_rows(rows)
        numbers = numerical(data)
        steps = steps_for(rows)
        bayes_auc = bayes(data)
        distinct = sum(len(np.unique(h[data["train"]])) for h in data["fingerprints"].values())
        print(f"  {rows:,} rows: {distinct:,} distinct ids in the training split, Bayes AUC {bayes_auc:.4f}, "
              f"{steps} steps per model", flush=True)
        for m in min_counts:
            admitted = admitted_sets(data, m)
            n_admitted = sum(len(a) for a in admitted.values()) if m > 1 else distinct
            rare = float(np.mean([~np.isin(h[data["train"]], admitted[n])
                                  for n, h in data["fingerprints"].items()])) if m > 1 else 0.0
            cells: List[Dict[str, Any]] = []

            def cell(model: str, auc: float, started: float) -> Dict[str, Any]:
                return {"rows": rows, "model": model, "min_count": m, "admitted_ids": n_admitted,
                        "distinct_ids": distinct, "rare_share": rare, "auc": auc, "bayes_auc": bayes_auc,
                        "gap": bayes_auc - auc, "seconds": round(time.time() - started, 1)}

            for f in factors:
                buckets = buckets_for(n_admitted, f)
                if any(c["buckets"] == buckets for c in cells):
                    continue  # the factor rounds to a table already measured
                t = time.time()
                features = dict(ids(data, admitted, buckets, m), **numbers)
                auc = train_keras(features, data["labels"], data, buckets + (len(admitted) if m > 1 else 0), steps)
                cells.append(dict(cell("keras", auc, t), factor=f, buckets=buckets))
                print(f"    keras   min_count {m:>2} factor {f:<4} 2^{buckets.bit_length() - 1}: AUC {auc:.4f} "
                      f"gap {bayes_auc - auc:.4f} ({cells[-1]['seconds']} s)", flush=True)
            if not args.admission_no_deepctr:
                t = time.time()
                # Exact per-id encoding: the fingerprint itself, or a rare value per field.
                fp = {n: (h if m <= 1 else np.where(np.isin(h, admitted[n]), h, -1))
                      for n, h in data["fingerprints"].items()}
                auc = train_deepctr(dict(fp, **numbers), data["labels"], data, steps)
                cells.append(dict(cell("deepctr", auc, t), factor=None, buckets=None))
                print(f"    deepctr min_count {m:>2}: AUC {auc:.4f} gap {bayes_auc - auc:.4f} "
                      f"({cells[-1]['seconds']} s)", flush=True)
            out["cells"] += cells
            write_partial(args, {"admission": out})
    keras = [c for c in out["cells"] if c["model"] == "keras"]
    out["best_by_rows"] = {str(r): min((c for c in keras if c["rows"] == r), key=lambda c: c["gap"])
                           for r in sizes if any(c["rows"] == r for c in keras)}
    return out


def _factor() -> float:
    from deepfm_tfx.pipeline.id_space import FACTOR
    return FACTOR


def curve(res: Dict[str, Any]) -> List[List[Any]]:
    """Per size: the gap without admission and with the shipped default (min_count, factor)."""
    from deepfm_tfx.schemas import feature_spec
    default = feature_spec.load(feature_spec.DEFAULT_SPEC).min_count

    def gap(rows, model, min_count, factor=None):
        found = [c["gap"] for c in res["cells"] if c["rows"] == rows and c["model"] == model
                 and c["min_count"] == min_count and (factor is None or c["factor"] == factor)]
        return fmt(found[0], 4) if found else "-"
    sizes = sorted({c["rows"] for c in res["cells"]})
    return [[f"{r:,}", gap(r, "keras", 1, _factor()), gap(r, "keras", default, _factor()), gap(r, "deepctr", 1),
             gap(r, "deepctr", default)] for r in sizes]


def show(res: Dict[str, Any]) -> None:
    rows = [[f"{c['rows']:,}", c["model"], c["min_count"], fmt(c["factor"]),
             f"2^{c['buckets'].bit_length() - 1}" if c["buckets"] else "per field", f"{c['admitted_ids']:,}",
             f"{c['rare_share']:.3f}", f"{c['auc']:.4f}", f"{c['gap']:.4f}", c["seconds"]] for c in res["cells"]]
    print(table(["rows", "model", "min_count", "factor", "table", "admitted ids", "rare share", "AUC",
                 "gap to Bayes", "s"], rows, title="\nFrequency admission: min_count x table factor (criteo profile)"))
    print(table(["rows", "gap without admission (min_count 1)", "gap with the default", "DeepCTR without",
                 "DeepCTR with the default's admission"], curve(res),
                title=f"\nLearning curve with and without admission (the shipped spec's min_count, factor {fmt(_factor())})"))
    for r, c in res.get("counting", {}).items():
        print(f"  Transform's id counting at {int(r):,} rows, wall (CPU) s: tft.vocabulary {c['tft.vocabulary']} "
              f"({c['tft.vocabulary cpu']}), key_counts {c['key_counts']} ({c['key_counts cpu']}), the rows alone "
              f"{c['none']} ({c['none cpu']}); same vocabulary file: {c['same_file']}")
    for r, best in res.get("best_by_rows", {}).items():
        print(f"  best Keras cell at {int(r):,} rows: min_count {best['min_count']}, factor {best['factor']}, "
              f"gap {best['gap']:.4f}" + (f" (target <= {GAP_TARGET})" if int(r) == GAP_TARGET_ROWS else ""))
