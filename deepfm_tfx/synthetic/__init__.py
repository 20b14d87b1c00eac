"""Synthetic click logs with a planted truth, and the weekly simulation on them."""

# Bump when the generated data changes, so cached default data is regenerated.
VERSION = 4
# What a deliberately bad week of the simulation looks like.
BAD_KINDS = ("broken_column", "shuffled_labels")
