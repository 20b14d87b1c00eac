"""The names several folders share, each defined once.

As TFX's standard_component_specs names every channel once: the trainers
export these names, and the pusher, the gates, the server, the CLI and the
benchmark read them. Standard library only, so anything may import it,
down to `deepfm-tfx models list`, which must not import TensorFlow.
"""
import os
import re

# --- Serving signatures: what both trainers export and every client calls.
SERVING_SIGNATURE = "serving_default"  # TF Serving's default; the Evaluator and gRPC clients call it
FEATURES_SIGNATURE = "features"  # raw features by name, so a JSON client needs no protobuf
EXAMPLES_INPUT_KEY = "examples"  # serving_default's one input: serialized tf.Examples
OUTPUT_KEY = "click_probability"  # both signatures' output, shape [batch, 1]
SERVE_TAG = "serve"  # the MetaGraph tag TF Serving loads

# --- Paths inside a model.
SERVING_MODEL_DIR = "Format-Serving"  # the SavedModel's folder in a TFX Model artifact
SAVED_MODEL_FILE = "saved_model.pb"
VARIABLES_DIR = "variables"
VARIABLES_INDEX = "variables.index"  # present once a SavedModel's weights are complete
VARIABLES_CHECKPOINT = os.path.join(VARIABLES_DIR, "variables")  # a SavedModel's weights as a checkpoint prefix
ASSETS_EXTRA = "assets.extra"  # TF Serving's folder for files that are not part of the graph
WARMUP_FILE = os.path.join(ASSETS_EXTRA, "tf_serving_warmup_requests")  # TF Serving replays it at load
TRAINING_INFO_FILE = "training_info.json"  # beside SERVING_MODEL_DIR: what the Trainer run says of itself
RESUME_DIR = "resume"  # <pipeline root>/Trainer/resume/<key>: checkpoints a re-run resumes from

# --- Which variables are the model's weights and which are optimizer slots.
MODEL_SCOPE = "deepfm"  # the Keras model's name: every weight's name starts with it
# What the TF1 optimizers (and the tables' sighting counts) append to a variable's name.
SIGHTINGS_SUFFIX = "/sightings"
TF1_SLOT_SUFFIXES = ("/Adam", "/Adam_1", "/Adagrad", SIGHTINGS_SUFFIX)
# The Embedding layers holding the id tables, whose gradients are row slices.
TABLE_LAYERS = ("field_embeddings", "linear_weights")
# Keys of a Keras SavedModel's object-based checkpoint that are optimizer state,
# counters or metric accumulators, not the model's weights.
_NOT_WEIGHT_KEYS = re.compile(r"optimizer|/Adam|global_step|save_counter|keras_api/metrics|_CHECKPOINTABLE_OBJECT_GRAPH")


def is_slot_name(name: str) -> bool:
    """True for a TF1 optimizer slot's checkpoint name (not a model weight)."""
    return name.endswith(TF1_SLOT_SUFFIXES)


def is_model_weight_name(name: str) -> bool:
    """True for a weight of the model in an Estimator checkpoint (not a slot, not the global step)."""
    return name.startswith(MODEL_SCOPE + "/") and not is_slot_name(name)


def is_table_name(name: str) -> bool:
    """True for an id table's variable name, in Keras and in an Estimator's graph alike."""
    return any(f"{layer}/embeddings" in name for layer in TABLE_LAYERS)


def is_weight_key(key: str) -> bool:
    """True for a model weight's key in a SavedModel's variables checkpoint, from either trainer."""
    return not _NOT_WEIGHT_KEYS.search(key)


# --- Version labels in models.config (TF Serving's version_labels).
STABLE = "stable"  # takes all un-pinned traffic
CANARY = "canary"  # a candidate loaded beside stable; equal to stable when none is on trial
LABELS = (STABLE, CANARY)

# --- The online experiment's decisions.
PROMOTE, KEEP_RUNNING, ROLL_BACK = "promote", "keep running", "roll back"
# The split is broken (sample-ratio mismatch): the experiment stops deciding and nothing moves.
SAMPLE_RATIO_MISMATCH = "sample ratio mismatch"
DECISIONS = (PROMOTE, KEEP_RUNNING, ROLL_BACK, SAMPLE_RATIO_MISMATCH)
# The bearer token experiment routes (outcomes, status) require, when set; never a flag.
OUTCOMES_TOKEN_ENV = "DEEPFM_TFX_OUTCOMES_TOKEN"

# --- Exit codes of every command.
EXIT_OK = 0  # pushed, or nothing to do
EXIT_ERROR = 1  # anything unexpected
EXIT_BAD_INPUT = 2  # DataError, FeatureSpecError, a bad flag
EXIT_GATE = 3  # a gate refused the data or the model

# --- Gates: what a run summary's `blocked_by` names (the pipeline's node ids, but DriftSkew).
EXAMPLE_VALIDATOR_GATE = "ExampleValidator"
DRIFT_SKEW_GATE = "DriftSkew"  # TFDV's name for the drift and skew anomalies DriftGate stops on
EVALUATOR_GATE = "Evaluator"  # its AUC floor
PAIRED_AUC_GATE = "PairedAucGate"
LATENCY_GATE = "LatencyGate"  # the pusher's serving check: p99 of 100-candidate requests, loaded memory
DATA_GATES = (EXAMPLE_VALIDATOR_GATE, DRIFT_SKEW_GATE)  # they stop a week before training: its data is bad

# --- The Trainer's (and Transform's) custom_config keys.
FEATURE_SPEC_KEY = "feature_spec"
TRAINING_KEY = "training"  # TrainingConfig as a dict
# Which training loop; also the key in training_info.json, version records and run
# summaries. Its value predates the name "trainer": ml-metadata caches and stored records use it.
TRAINER_KEY = "trainer_runner"

# --- Frequency admission: what Transform writes and the run summary reads.
# One vocabulary asset per min_count, "<prefix><min_count>", lines "<count> <key>": the
# admitted ids' keys, and per field a total key whose count is the field's occurrences.
ADMITTED_IDS_ASSET_PREFIX = "admitted_ids_min"
# key = field index << ADMISSION_FIELD_BITS | the token's hash (below ADMISSION_TOTAL_KEY).
ADMISSION_FIELD_BITS = 52
ADMISSION_TOTAL_KEY = (1 << ADMISSION_FIELD_BITS) - 1
