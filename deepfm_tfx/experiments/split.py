"""Which arm a request key gets: a salted SHA-256 of the key, compared with the canary share.

Python's hash() is salted per process, so two servers (or one restarted)
would disagree; SHA-256 is the same everywhere. The salt is the experiment's
(its name by default), so a key's arm in one experiment says nothing about
its arm in the next. A key lands in the canary when its bucket, a number in
[0, 1), is below the share: raising the share only moves keys from stable to
canary, never back.
"""
from __future__ import annotations

import hashlib

from deepfm_tfx.contracts import CANARY, LABELS, STABLE

ARMS = LABELS  # an experiment splits traffic between the two labels


def bucket(key: str, salt: str) -> float:
    """A number in [0, 1), uniform over keys, fixed for (key, salt)."""
    digest = hashlib.sha256(salt.encode("utf-8") + b"\x00" + key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def arm_of(key: str, salt: str, canary_share: float) -> str:
    return CANARY if bucket(key, salt) < canary_share else STABLE
