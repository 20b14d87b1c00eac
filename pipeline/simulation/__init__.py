"""The weekly simulation: weeks of retraining on synthetic data, and each week's online A/B test.

It drives the local orchestrator and `deepfm-tfx serve`, so it sits above
them, beside the CLI. Nothing heavy is imported here: `deepfm-tfx simulate
--help` reads these names.
"""
import dataclasses

# What a deliberately bad week looks like. The first two are stopped by the offline
# gates; a worse candidate passes them (lowered) and only the online A/B test can stop it.
WORSE_CANDIDATE = "worse_candidate"
BAD_KINDS = ("broken_column", "shuffled_labels", WORSE_CANDIDATE)


@dataclasses.dataclass
class OnlineConfig:
    requests_per_round: int = 1000
    rows_per_request: int = 100       # candidates per request; the arm's scores pick the shown ones
    shown: int = 10                   # the top this many are shown, at positions 1..shown
    rounds: int = 6                   # reports read (always valid: as many as you like); the last ends it
    users: int = 20_000
    canary_share: float = 0.5
    clients: int = 4
    min_outcomes_per_arm: int = 5000
    feature_log_share: float = 0.2
    seed: int = 7
