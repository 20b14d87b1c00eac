"""What this process may use of the machine, its cgroups' limits included: the CPUs and the
memory that size our worker pools (Beam's local workers, the generator's).

A limit may sit on this process's own cgroup or on any above it (a Kubeflow pod's container, an
Airflow worker run as a systemd service with MemoryMax), so every cgroup from this process's up
to the mount counts, and the tightest wins. /proc/self/cgroup names this process's cgroup; a
container that mounts its own cgroup as the root shows a path that is not there, and the mount
is then the cgroup.

It also picks this process's memory allocator: jemalloc, preloaded by re-running the command."""
from __future__ import annotations

import os
import sys
from typing import Callable, Dict, Iterator, List, Optional, TypeVar

CGROUP = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"
# cgroup v1 writes "no limit" as the largest page-aligned int64, not as "max".
_V1_UNLIMITED = 1 << 60
T = TypeVar("T")


def _fields(*path: str) -> List[str]:
    with open(os.path.join(*path)) as f:
        return f.read().split()


def _own_paths(proc: str) -> Dict[str, str]:
    """{controller: this process's cgroup path}; "" is cgroup v2's single hierarchy."""
    paths: Dict[str, str] = {}
    try:
        with open(proc) as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for controller in controllers.split(",") if controllers else [""]:
                    paths[controller] = path
    except (OSError, ValueError):
        pass
    return paths


def _folders(mount: str, path: Optional[str]) -> Iterator[str]:
    """The cgroup folder at `path` under `mount`, then each parent up to the mount."""
    mount = os.path.normpath(mount)
    here = os.path.normpath(os.path.join(mount, (path or "").lstrip("/")))
    if os.path.commonpath([here, mount]) != mount or not os.path.isdir(here):
        here = mount
    while True:
        yield here
        if here == mount:
            return
        here = os.path.dirname(here)


def _found(read: Callable[[str, bool], Optional[T]], controller: str, cgroup: str, proc: str) -> List[T]:
    """`read(folder, v1)` of this process's cgroup and every one above it, in v2's single hierarchy
    and in v1's `controller` one: the values found (None: no limit there, or no files)."""
    own = _own_paths(proc)
    values = [read(f, False) for f in _folders(cgroup, own.get(""))] + \
        [read(f, True) for f in _folders(os.path.join(cgroup, controller), own.get(controller))]
    return [v for v in values if v is not None]


def _quota(folder: str, v1: bool) -> Optional[float]:
    """The CPUs a cgroup's quota allows, or None: no quota, or no files to say."""
    try:
        if v1:
            quota, period = _fields(folder, "cpu.cfs_quota_us")[0], _fields(folder, "cpu.cfs_period_us")[0]
        else:
            quota, period = _fields(folder, "cpu.max")  # "<quota> <period>" or "max <period>"
        if quota in ("max", "-1"):
            return None
        return float(quota) / float(period)
    except (OSError, IndexError, ValueError, ZeroDivisionError):
        return None


def usable_cpus(cgroup: str = CGROUP, proc: str = PROC_CGROUP) -> int:
    """This process's CPU affinity, capped by its cgroups' CPU quotas (a Kubeflow pod limited to
    one CPU on a big node must not start a worker per node CPU)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quotas = _found(_quota, "cpu", cgroup, proc)
    return cpus if not quotas else max(1, min(cpus, int(min(quotas))))


def _stat(*path: str) -> Dict[str, int]:
    values = _fields(*path)
    return {k: int(v) for k, v in zip(values[::2], values[1::2]) if v.isdigit()}


def _headroom(folder: str, v1: bool) -> Optional[int]:
    """A cgroup's memory limit less its working set, or None when it has no limit.

    The working set leaves out inactive page cache, as the kubelet counts it: the
    kernel reclaims that before the OOM killer comes."""
    try:
        if v1:
            limit, used = _fields(folder, "memory.limit_in_bytes")[0], int(_fields(folder, "memory.usage_in_bytes")[0])
            inactive = _stat(folder, "memory.stat").get("total_inactive_file", 0)
        else:
            limit, used = _fields(folder, "memory.max")[0], int(_fields(folder, "memory.current")[0])
            inactive = _stat(folder, "memory.stat").get("inactive_file", 0)
    except (OSError, IndexError, ValueError):
        return None
    if not limit.isdigit() or int(limit) >= _V1_UNLIMITED:  # v2's "max"
        return None
    return max(0, int(limit) - max(0, used - inactive))


def available_memory(cgroup: str = CGROUP, meminfo: str = "/proc/meminfo", proc: str = PROC_CGROUP) -> Optional[int]:
    """Bytes this process can still use: the machine's available memory, capped by what its
    cgroups' limits leave; None when nothing can be read (not Linux)."""
    try:
        with open(meminfo) as f:
            machine = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except (OSError, ValueError):
        machine = None
    known = _found(_headroom, "memory", cgroup, proc) + ([machine] if machine is not None else [])
    return min(known) if known else None


# --- the allocator --------------------------------------------------------------------------------

# Where Debian and Ubuntu's libjemalloc2 puts it (the Docker images install it).
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2")
ALLOCATORS = ("jemalloc", "system")


def add_allocator_argument(parser, saves: str = "9%% less CPU for a small weekly run") -> None:
    """--allocator, for a command whose process allocates heavily; `saves` says what jemalloc saved it."""
    parser.add_argument("--allocator", choices=ALLOCATORS, default="jemalloc",
                        help=f"memory allocator of this process: jemalloc (preloaded when the system has "
                             f"libjemalloc2; {saves}) or the system's malloc")


def jemalloc_path() -> Optional[str]:
    """The installed libjemalloc2, or None."""
    return next((p for p in JEMALLOC_PATHS if os.path.exists(p)), None)


def with_allocator(allocator: str, environ=os.environ) -> Optional[Dict[str, str]]:
    """The environment to re-run this process in with jemalloc preloaded, or None to go on as is.

    TensorFlow, Beam and protobuf allocate and free many small strings and
    protos: under glibc's malloc a served call spent about 14% of its CPU
    there, and jemalloc cut the server's CPU per call by 10-15% and a small
    weekly run's by 9% (docs/performance.md). TF Serving links
    tcmalloc for the same reason. The allocator must be in place before the
    first allocation, hence a re-exec."""
    if allocator != "jemalloc" or "jemalloc" in environ.get("LD_PRELOAD", ""):
        return None
    path = jemalloc_path()
    if path is None:
        return None
    preload = " ".join(filter(None, [path, environ.get("LD_PRELOAD", "")]))
    return dict(environ, LD_PRELOAD=preload)


def reexec_with_allocator(args) -> None:
    """Replaces this process by the same command with jemalloc preloaded (when --allocator asks
    for it and the system has it); returns when there is nothing to do, or when the command was
    not this process's own (`args.own_process`: parsed from sys.argv, not called from Python)."""
    env = with_allocator(args.allocator) if getattr(args, "own_process", False) else None
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
