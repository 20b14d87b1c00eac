"""TFMA's rebinning and confusion matrices, replaced (components/tfma_histograms.py): the same
numbers as TFMA's own functions, exactly, and the Evaluator's AUC unchanged."""
import random

import pytest

from deepfm_tfx.components import tfma_histograms

tfma_metrics = pytest.importorskip("tensorflow_model_analysis.metrics")
from tensorflow_model_analysis.metrics import binary_confusion_matrices as bcm  # noqa: E402
from tensorflow_model_analysis.metrics import calibration_histogram as ch  # noqa: E402

ORIGINAL_REBIN, ORIGINAL_MATRICES = ch.rebin, bcm._histogram_to_binary_confusion_matrices
FAST_REBIN, FAST_MATRICES = tfma_histograms._rebin(ch), tfma_histograms._matrices(bcm)


def _histogram(rng, size, num_buckets=10000, integer_weights=False):
    ids = sorted(rng.sample(range(0, num_buckets + 2), size))  # 0 and num_buckets + 1 are -inf and +inf
    weight = (lambda: float(rng.randint(0, 3))) if integer_weights else rng.random
    return [ch.Bucket(i, weight(), rng.random(), weight() + rng.random()) for i in ids]


def _rebin_thresholds(thresholds):
    # As binary_confusion_matrices' result() builds them for its matrices.
    out = [t + bcm._EPSILON if t != 0 else t for t in thresholds]
    if thresholds[0] >= 0:
        out = [-bcm._EPSILON] + out
    if thresholds[-1] < 1.0:
        out = out + [1.0 + bcm._EPSILON]
    return out


def _outcome(function, *args):
    try:
        return function(*args)
    except Exception as e:  # noqa: BLE001 - compared, not hidden
        return type(e)


def _as_tuples(histogram):
    return [(b.bucket_id, b.weighted_labels, b.weighted_predictions, b.weighted_examples) for b in histogram]


THRESHOLDS = {
    "auc, 10,000": [i / 10000 for i in range(10000)],
    "a few, uneven": [0.0, 0.05, 0.3, 0.31, 0.9],
    "negative and past 1": [-1e-7, 0.25, 0.5, 1.0, 1.5],
    "one": [0.5],
    "all relevant": [float("-inf")],
}


@pytest.mark.parametrize("name", sorted(THRESHOLDS))
@pytest.mark.parametrize("size", [0, 1, 2, 7, 300])
def test_the_same_buckets_and_matrices_as_tfma(name, size):
    rng = random.Random(f"{name}-{size}")
    thresholds = THRESHOLDS[name]
    for integer_weights in (False, True):
        histogram = _histogram(rng, size, integer_weights=integer_weights)
        rebin_thresholds = _rebin_thresholds(thresholds) if thresholds[0] != float("-inf") else thresholds
        expected, got = ORIGINAL_REBIN(rebin_thresholds, histogram), FAST_REBIN(rebin_thresholds, histogram)
        assert _as_tuples(got) == _as_tuples(expected)
        assert FAST_MATRICES(thresholds, expected) == ORIGINAL_MATRICES(thresholds, expected)
        # The raw histogram, as TFMA passes it for thresholds [-inf]; other thresholds can fail, alike.
        assert _outcome(FAST_MATRICES, thresholds, histogram) == _outcome(ORIGINAL_MATRICES, thresholds, histogram)


def test_other_bucket_counts_and_ranges():
    rng = random.Random(3)
    histogram = _histogram(rng, 40, num_buckets=100)
    for thresholds in ([-0.5, 0.0, 0.5, 2.0], [0.1 * i for i in range(11)]):
        assert _as_tuples(FAST_REBIN(thresholds, histogram, 100, -1.0, 3.0)) == \
            _as_tuples(ORIGINAL_REBIN(thresholds, histogram, 100, -1.0, 3.0))


def test_installed_the_auc_is_tfmas():
    import numpy as np
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.metrics import metric_types

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500).astype(float)
    predictions = np.clip(0.3 * labels + rng.random(500) * 0.7, 0, 1)

    def auc():
        computations = tfma.metrics.AUC().computations(example_weighted=False)
        histogram, matrices, metric = computations
        accumulator = histogram.combiner.create_accumulator()
        for label, prediction in zip(labels, predictions):
            accumulator = histogram.combiner.add_input(accumulator, metric_types.StandardMetricInputs(
                labels=np.array([label]), predictions=np.array([prediction]), example_weights=np.array([1.0])))
        results = histogram.combiner.extract_output(accumulator)
        results.update(matrices.result(results))
        return next(iter(metric.result(results).values()))

    before = auc()
    tfma_histograms.install()
    assert ch.rebin is not ORIGINAL_REBIN and bcm._histogram_to_binary_confusion_matrices is not ORIGINAL_MATRICES
    assert auc() == before
