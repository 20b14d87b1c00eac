"""Synthetic click logs with a planted truth."""

# Bump when the generated data changes, so cached default data is regenerated.
VERSION = 4
