"""What this process may use of the machine, a container's limits included: the CPUs and the
memory that size our worker pools (Beam's local workers, the generator's)."""
from __future__ import annotations

import os
from typing import Dict, List, Optional

CGROUP = "/sys/fs/cgroup"
# cgroup v1 writes "no limit" as the largest page-aligned int64, not as "max".
_V1_UNLIMITED = 1 << 60


def _fields(*path: str) -> List[str]:
    with open(os.path.join(*path)) as f:
        return f.read().split()


def _quota(cgroup: str) -> Optional[float]:
    """The CPUs a container's quota allows, or None: no quota, or no cgroup files to say."""
    try:
        quota, period = _fields(cgroup, "cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
    except (OSError, ValueError):
        try:  # v1
            quota, period = _fields(cgroup, "cpu", "cpu.cfs_quota_us")[0], _fields(cgroup, "cpu", "cpu.cfs_period_us")[0]
        except (OSError, IndexError):
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return float(quota) / float(period)
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus(cgroup: str = CGROUP) -> int:
    """This process's CPU affinity, capped by a container's CPU quota (a Kubeflow pod limited to
    one CPU on a big node must not start a worker per node CPU)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _quota(cgroup)
    return cpus if quota is None else max(1, min(cpus, int(quota)))


def _stat(*path: str) -> Dict[str, int]:
    values = _fields(*path)
    return {k: int(v) for k, v in zip(values[::2], values[1::2]) if v.isdigit()}


def _container_headroom(cgroup: str) -> Optional[int]:
    """A container's memory limit less its working set, or None when it has no limit.

    The working set leaves out inactive page cache, as the kubelet counts it: the
    kernel reclaims that before the OOM killer comes."""
    try:
        limit, used = _fields(cgroup, "memory.max")[0], int(_fields(cgroup, "memory.current")[0])
        inactive = _stat(cgroup, "memory.stat").get("inactive_file", 0)
    except (OSError, IndexError, ValueError):
        try:  # v1
            v1 = os.path.join(cgroup, "memory")
            limit, used = _fields(v1, "memory.limit_in_bytes")[0], int(_fields(v1, "memory.usage_in_bytes")[0])
            inactive = _stat(v1, "memory.stat").get("total_inactive_file", 0)
        except (OSError, IndexError, ValueError):
            return None
    if limit == "max" or not limit.isdigit() or int(limit) >= _V1_UNLIMITED:
        return None
    return max(0, int(limit) - max(0, used - inactive))


def available_memory(cgroup: str = CGROUP, meminfo: str = "/proc/meminfo") -> Optional[int]:
    """Bytes this process can still use: the machine's available memory, capped by what a
    container's limit leaves; None when neither can be read (not Linux)."""
    try:
        with open(meminfo) as f:
            machine = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except (OSError, ValueError):
        machine = None
    container = _container_headroom(cgroup)
    known = [m for m in (machine, container) if m is not None]
    return min(known) if known else None
