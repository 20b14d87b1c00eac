"""Synthetic click logs with a planted truth, and the weekly simulation on them."""

# Bump when the generated data changes, so cached default data is regenerated.
VERSION = 4
# What a deliberately bad week of the simulation looks like. The first two are stopped
# by the offline gates; a worse candidate passes them (lowered) and only the online A/B test can stop it.
WORSE_CANDIDATE = "worse_candidate"
BAD_KINDS = ("broken_column", "shuffled_labels", WORSE_CANDIDATE)
