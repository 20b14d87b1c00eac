"""DeepCTR 0.9.4's DeepFM, the trainer section's outside reference, set up as
its documentation shows: per-field label-encoded ids, model.fit on numpy.

DeepCTR is a benchmark-only dependency (requirements-bench.txt; `make bench`
installs it), never a runtime one.
"""
from __future__ import annotations

from typing import Dict


def build_model(inputs, vocabulary_sizes: Dict[str, int], steps_per_execution: int, optimizer):
    """The same embedding size, DNN, L2 and optimizer as our trainers; no dropout."""
    import tensorflow as tf
    try:
        from deepctr.feature_column import DenseFeat, SparseFeat
        from deepctr.models import DeepFM as DeepCTRDeepFM
    except ImportError as e:
        raise ImportError("deepctr is not installed; `make bench` installs requirements-bench.txt") from e
    c, layout = inputs.config, inputs.layout
    columns = [SparseFeat(n, vocabulary_size=vocabulary_sizes[n], embedding_dim=c.embedding_dim, dtype="int32")
               for n in layout.categorical] + [DenseFeat(n, 1) for n in layout.numerical]
    model = DeepCTRDeepFM(columns, columns, dnn_hidden_units=tuple(c.dnn_units), l2_reg_linear=c.embedding_l2,
                          l2_reg_embedding=c.embedding_l2, l2_reg_dnn=0, dnn_dropout=0, task="binary")
    model.compile(optimizer=optimizer, loss="binary_crossentropy",
                  metrics=[tf.keras.metrics.AUC(name="auc")], steps_per_execution=steps_per_execution)
    return model


class Encoder:
    """Per-field compact ids, as DeepCTR's examples prepare data (LabelEncoder
    per sparse field); 0 is kept for ids the training split never saw."""

    def __init__(self, train_features, layout):
        import numpy as np
        self.layout = layout
        self.uniques = {n: np.unique(train_features[n]) for n in layout.categorical}
        self.vocabulary_sizes = {n: len(u) + 1 for n, u in self.uniques.items()}

    def __call__(self, features):
        import numpy as np
        out = {}
        for n, u in self.uniques.items():
            x = features[n]
            pos = np.clip(np.searchsorted(u, x), 0, len(u) - 1)
            out[n] = np.where(u[pos] == x, pos + 1, 0).astype(np.int32)
        # DeepCTR has no notion of missing: NaN (our Transform's "missing") becomes 0, as in its examples.
        out.update({n: np.nan_to_num(features[n].astype(np.float32), nan=0.0) for n in self.layout.numerical})
        return out
