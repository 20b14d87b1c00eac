"""The training knobs both trainers read, with their defaults: the one source.

No TensorFlow here, so the command line and the orchestrators can read the
defaults without importing it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence

DISTRIBUTIONS = ("auto", "default", "mirrored", "multi_worker")
LEARNING_RATE_DECAYS = ("cosine", "none")
WARM_START_SLOTS = ("reset", "carry")
INPUT_CACHES = ("auto", "memory", "off")
# How the embedding tables learn. "lazy_adam" and "adagrad" touch only the rows
# a batch looks up (their L2 too), so a step costs the same at 2^18 or 2^24
# buckets; "adam" is the dense recipe: table-wide L2, Adam on every row.
EMBEDDING_OPTIMIZERS = ("lazy_adam", "adagrad", "adam")


@dataclasses.dataclass(frozen=True)
class ModelHParams:
    """What the DeepFM's shape and regularisation need; built by TrainingConfig.model."""
    embedding_dim: int
    dnn_units: Sequence[int]
    embedding_l2: float
    # True: L2 on the rows a batch looks up (a loss term, sparse gradient);
    # False: on the whole table (a regularizer, dense gradient).
    embedding_l2_rows: bool = True


def _knob(default, help: str, **extra):
    return dataclasses.field(default=default, metadata={"help": help, **extra})


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = _knob(1024, "examples per training step")
    learning_rate: float = _knob(5e-3, "peak learning rate of this run")
    # "cosine" decays the rate to 0 over the run's own steps: a constant rate
    # left the rare ids' embeddings noisy (0.003 AUC on the default data).
    learning_rate_decay: str = _knob("cosine", "learning-rate schedule over this run's steps",
                                     choices=LEARNING_RATE_DECAYS)
    embedding_dim: int = _knob(8, "embedding size shared by the FM and the DNN")
    dnn_units: tuple = _knob((64, 32), "DNN layer widths, comma-separated", list=True)
    # Strong enough that rare ids do not overfit in a few epochs.
    embedding_l2: float = _knob(3e-4, "L2 on the embedding rows (those a batch looks up, per example; "
                                      "the whole table with embedding_optimizer adam)")
    embedding_optimizer: str = _knob("lazy_adam", "update of the embedding tables: lazy_adam or adagrad touch only "
                                                  "the looked-up rows; adam updates every row (the dense recipe); "
                                                  "the other weights always use Adam",
                                     choices=EMBEDDING_OPTIMIZERS)
    # Adagrad's steps shrink with the squared gradients it has summed, so it
    # wants a larger rate than Adam (optimizers.ADAGRAD_RATE).
    embedding_learning_rate: float = _knob(0.0, "peak learning rate of the embedding tables (0: learning_rate "
                                                "with lazy_adam and adam, 1.0 with adagrad)")
    steps_per_execution: int = _knob(20, "Keras trainer: steps per tf.function call")
    # Parsing the gzipped tf.Examples costs more than a step; auto caches when
    # the parsed training split fits in a quarter of memory (at most 2 GiB).
    input_cache: str = _knob("auto", "keep the training split's parsed batches in memory after the first pass",
                             choices=INPUT_CACHES)
    # Keras can only log between executions: it rounds up to a multiple of steps_per_execution.
    log_every_steps: int = _knob(100, "TensorBoard: log training loss and AUC every N steps")
    distribution: str = _knob("auto", "auto: mirrored over local GPUs when there are several",
                              choices=DISTRIBUTIONS)
    # A warm start carries the weights; "reset" starts Adam's moments fresh, so
    # the new week's gradients are not damped by last week's second moments.
    warm_start_slots: str = _knob("reset", "optimizer slots on a warm start", choices=WARM_START_SLOTS)
    # A killed Trainer resumes from its last checkpoint when the pipeline is re-run.
    checkpoint_every_steps: int = _knob(0, "save a checkpoint to resume from every N steps (0: four per run)")
    # Local processes on loopback ports, as a cluster scheduler would start them (trainer_modules/local_cluster.py).
    cluster: str = _knob("", "train on a local cluster of parameter servers and workers, e.g. workers=2,ps=1 "
                             "(empty: one process)")

    def checkpoint_every(self, train_steps: int) -> int:
        return self.checkpoint_every_steps or max(train_steps // 4, 1)

    @property
    def model(self) -> ModelHParams:
        return ModelHParams(self.embedding_dim, tuple(self.dnn_units), self.embedding_l2,
                            embedding_l2_rows=self.embedding_optimizer != "adam")

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "TrainingConfig":
        d = dict(d or {})
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown training setting(s) {sorted(unknown)}")
        if "dnn_units" in d:
            d["dnn_units"] = tuple(int(u) for u in d["dnn_units"])
        return cls(**d)
