"""How many CPUs this process may use: what sizes our worker pools (Beam's local workers, the generator's)."""
from __future__ import annotations

import os
from typing import List, Optional


def _quota(cgroup: str) -> Optional[float]:
    """The CPUs a container's quota allows, or None: no quota, or no cgroup files to say."""
    def fields(*parts: str) -> List[str]:
        with open(os.path.join(cgroup, *parts)) as f:
            return f.read().split()
    try:
        quota, period = fields("cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
    except (OSError, ValueError):
        try:  # v1
            quota, period = fields("cpu", "cpu.cfs_quota_us")[0], fields("cpu", "cpu.cfs_period_us")[0]
        except (OSError, IndexError):
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return float(quota) / float(period)
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus(cgroup: str = "/sys/fs/cgroup") -> int:
    """This process's CPU affinity, capped by a container's CPU quota (a Kubeflow pod limited to
    one CPU on a big node must not start a worker per node CPU)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _quota(cgroup)
    return cpus if quota is None else max(1, min(cpus, int(quota)))
