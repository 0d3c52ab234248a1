"""Canary rollouts: which arm (stable or canary) a request takes, from its id and a share.

The arm is a pure function of the request id, so a retried or replayed request stays on the
arm it took the first time, and every stage that asks gets the same answer without talking to
the others. Rollback is setting the share to 0 in the one stage that reads it.

>>> canary_arm("r-42", 0.0)
'stable'
>>> canary_arm("r-42", 1.0)
'canary'
"""

from __future__ import annotations

import hashlib
from typing import Literal

Arm = Literal["stable", "canary"]

#: Buckets a request id hashes into; a share is a fraction of them.
BUCKETS = 10_000


def rollout_bucket(request_id: str, salt: str = "") -> int:
    """The request's bucket in [0, BUCKETS): stable across processes and Python versions."""
    digest = hashlib.sha256(f"{salt}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def canary_arm(request_id: str, share: float, salt: str = "") -> Arm:
    """ "canary" for about `share` of request ids (0: never, 1: always), else "stable".

    `salt` names the rollout (the prompt, a tier's model), so that two rollouts running at
    once split the traffic independently instead of sending the same requests to both."""
    if share <= 0.0:
        return "stable"
    if share >= 1.0:
        return "canary"
    return "canary" if rollout_bucket(request_id, salt) < share * BUCKETS else "stable"
