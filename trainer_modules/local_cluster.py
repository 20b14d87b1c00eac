"""A training cluster as local processes on loopback ports: what `--cluster workers=2,ps=1` starts.

One chief, N workers and M parameter servers, each its own process with its
own TF_CONFIG, as Kubernetes (a TFJob) would start them. The launcher acts as
the scheduler too: a worker that dies is started again (its work goes on,
asynchronous training does not wait for it); a parameter server or the chief
that dies stops the whole cluster with an error, and the re-run resumes from
the last checkpoint. Every task is stopped when training ends or fails, and
dies with the Trainer (PR_SET_DEATHSIG) if the Trainer itself is killed.

No TensorFlow here: one fork server (`python -m deepfm_tfx.trainer_modules.cluster_task
--fork-server`) imports it once and forks every task, a restarted worker too.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional

CHIEF, WORKER, PS = "chief", "worker", "ps"
TASK_MODULE = "deepfm_tfx.trainer_modules.cluster_task"
FORK_SERVER_FLAG = "--fork-server"  # cluster_task.py's
TASK_NAME_PREFIX = "deepfm-"  # a forked task's process name (ps, top): deepfm-worker1
FORK_SERVER_START_SECONDS = 600  # its imports, on a busy machine
# A worker is restarted at most this many times, so a task that cannot start fails the run.
MAX_RESTARTS = 5
PROGRESS_DIR = "progress"  # each training task writes its steps here, as <task>.json


class ClusterFailed(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class ClusterShape:
    workers: int
    ps: int

    def __str__(self) -> str:
        return f"workers={self.workers},ps={self.ps}"


def parse(text: str) -> ClusterShape:
    """'workers=2,ps=1' (the chief comes with it); a ValueError names what is wrong."""
    parts = dict(p.split("=", 1) for p in text.replace(" ", "").split(",") if "=" in p)
    if not re.fullmatch(r"(workers=\d+|ps=\d+)(,(workers=\d+|ps=\d+))*", text.replace(" ", "")) \
            or set(parts) != {"workers", "ps"}:
        raise ValueError(f"--cluster takes workers=N,ps=M, e.g. workers=2,ps=1; got {text!r}")
    shape = ClusterShape(int(parts["workers"]), int(parts["ps"]))
    if shape.ps < 1:
        raise ValueError(f"--cluster needs at least one parameter server (ps=1), got {text!r}")
    return shape


def free_ports(count: int) -> List[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cluster_spec(shape: ClusterShape) -> Dict[str, List[str]]:
    ports = free_ports(1 + shape.workers + shape.ps)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    spec = {CHIEF: addresses[:1], WORKER: addresses[1:1 + shape.workers], PS: addresses[1 + shape.workers:]}
    return {job: tasks for job, tasks in spec.items() if tasks}  # workers=0: the chief trains alone


def task_name(kind: str, index: int) -> str:
    return CHIEF if kind == CHIEF else f"{kind}{index}"


# The Trainer's pid, for the task to check it is still its parent once it has asked to die with it.
PARENT_PID_ENV = "DEEPFM_TFX_CLUSTER_PARENT_PID"


def die_with_parent() -> None:
    """Linux: this task gets SIGKILL when the Trainer's thread that started it dies.

    Called by the task itself after exec, not as Popen's preexec_fn: running
    Python in the forked child of the Trainer, whose Beam and gRPC threads are
    live, aborted a task at start now and then (gRPC's "epoll_wait error: Bad
    file descriptor", SIGABRT), and Python's docs call preexec_fn unsafe with
    threads. If the Trainer died before the call, the task is an orphan already
    and exits.
    """
    expected = os.environ.get(PARENT_PID_ENV)
    if not expected:  # not started by LocalCluster (a TFJob's pod): the pod's lifetime is the operator's
        return
    die_with(int(expected))


def die_with(parent: int) -> None:
    """SIGKILL for this process when `parent` (its parent) dies; exits at once if it already has."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_DEATHSIG
    except OSError:
        return
    if os.getppid() != parent:
        os._exit(1)


def _how(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclasses.dataclass
class _Task:
    kind: str
    index: int
    process: Optional["ForkedTask"] = None
    restarts: int = 0
    log: Optional[str] = None

    @property
    def name(self) -> str:
        return task_name(self.kind, self.index)


class LocalCluster:
    """Starts the tasks, supervises them until the chief is done, stops them all."""

    def __init__(self, shape: ClusterShape, task_config: dict, checkpoint_dir: Optional[str] = None,
                 work_dir: Optional[str] = None):
        self.shape, self.checkpoint_dir = shape, checkpoint_dir
        self.work_dir = work_dir or tempfile.mkdtemp(prefix="deepfm-cluster-")
        shutil.rmtree(os.path.join(self.work_dir, PROGRESS_DIR), ignore_errors=True)  # a failed attempt's
        os.makedirs(os.path.join(self.work_dir, PROGRESS_DIR), exist_ok=True)
        self.spec = cluster_spec(shape)
        self.config_file = os.path.join(self.work_dir, "task_config.json")
        with open(self.config_file, "w") as f:
            json.dump({**task_config, "work_dir": self.work_dir}, f)
        self.tasks = [_Task(PS, i) for i in range(shape.ps)] + [_Task(CHIEF, 0)] + \
            [_Task(WORKER, i) for i in range(shape.workers)]
        self.restarts: Dict[str, int] = {}
        self.server: Optional[ForkServer] = None

    def _start(self, task: _Task) -> None:
        if self.server is None:
            self.server = ForkServer(self.config_file, os.path.join(self.work_dir, "fork_server.log"))
        task.log = os.path.join(self.work_dir, f"{task.name}.log")
        task.process = self.server.fork(task.name, {"cluster": self.spec,
                                                    "task": {"type": task.kind, "index": task.index}}, task.log)

    def pid(self, name: str) -> int:
        """The process id of a task, e.g. "worker1" (the fault tests kill it)."""
        return next(t.process.pid for t in self.tasks if t.name == name)

    def start(self) -> "LocalCluster":
        for task in self.tasks:
            self._start(task)
        return self

    def progress(self) -> Dict[str, dict]:
        """{task: {"steps": steps it ran, "global_step": the cluster's step it last saw}}."""
        out = {}
        folder = os.path.join(self.work_dir, PROGRESS_DIR)
        for name in os.listdir(folder):
            try:
                with open(os.path.join(folder, name)) as f:
                    out[name[:-len(".json")]] = json.load(f)
            except (OSError, ValueError):  # being replaced
                continue
        return out

    def wait(self, on_progress: Optional[Callable[[Dict[str, dict]], None]] = None,
             poll_seconds: float = 0.5) -> None:
        """Until the chief ends; restarts dead workers; ClusterFailed if the chief or a ps dies."""
        while True:
            if on_progress:
                on_progress(self.progress())
            for task in self.tasks:
                code = task.process.poll()
                if code is None:
                    continue
                if task.kind == CHIEF and code == 0:
                    return
                if task.kind == WORKER and code == 0:
                    continue  # done: the cluster reached its last step
                if task.kind == WORKER and task.restarts < MAX_RESTARTS:
                    task.restarts += 1
                    self.restarts[task.name] = task.restarts
                    print(f"deepfm-tfx cluster: {task.name} died ({_how(code)}); restarting it", file=sys.stderr,
                          flush=True)
                    self._start(task)
                    continue
                steps = max((p.get("global_step", 0) for p in self.progress().values()), default=0)
                saved = last_checkpoint_step(self.checkpoint_dir) if self.checkpoint_dir else None
                resume = f"resumes from the last checkpoint (step {saved})" if saved else "starts again at step 0 " \
                    "(no checkpoint yet)"
                raise ClusterFailed(
                    f"the training cluster's {task.name} died ({_how(code)}) near step {steps}, so every task was "
                    f"stopped; running the pipeline again {resume}; the tasks' logs are in {self.work_dir}")
            time.sleep(poll_seconds)

    def stop(self) -> None:
        for task in self.tasks:
            if task.process is not None and task.process.poll() is None:
                task.process.terminate()
        deadline = time.monotonic() + 10
        for task in self.tasks:
            if task.process is None:
                continue
            try:
                task.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                task.process.kill()
                task.process.wait()
        if self.server is not None:
            self.server.close()
            self.server = None

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class ForkServer:
    """The process that forks the tasks (cluster_task.serve_forks), and the tasks' exits it reports."""

    def __init__(self, config_file: str, log_path: str):
        env = dict(os.environ)
        env[PARENT_PID_ENV] = str(os.getpid())
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", TASK_MODULE, FORK_SERVER_FLAG, config_file],
                                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        self.changed = threading.Condition()
        self.codes: Dict[int, int] = {}
        self.forked: List[int] = []
        self.gone = False
        threading.Thread(target=self._read, name="cluster-fork-server", daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            message = json.loads(line)
            with self.changed:
                if "pid" in message:
                    self.forked.append(message["pid"])
                else:
                    self.codes[message["exited"]] = message["code"]
                self.changed.notify_all()
        with self.changed:  # the server is gone, and its tasks with it (PR_SET_DEATHSIG)
            self.gone = True
            self.changed.notify_all()

    def fork(self, name: str, tf_config: dict, log: str) -> "ForkedTask":
        """A new task; the first call waits for the server's imports."""
        with self.changed:
            count = len(self.forked)
            request = {"name": name, "tf_config": tf_config, "log": log}
            try:
                self.process.stdin.write(json.dumps(request).encode() + b"\n")
                self.process.stdin.flush()
            except BrokenPipeError:
                pass  # gone: reported below
            self.changed.wait_for(lambda: len(self.forked) > count or self.gone, FORK_SERVER_START_SECONDS)
            if len(self.forked) == count:
                if not self.gone:
                    self.process.kill()
                raise ClusterFailed(f"the training cluster's fork server exited ({_how(self.process.wait())}) "
                                    f"before starting {name}; its log: {self.log_path}")
            return ForkedTask(self, self.forked[count])

    def close(self) -> None:
        """Ends the server once its tasks are stopped (closing its stdin is the signal)."""
        try:
            self.process.stdin.close()
            self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


class ForkedTask:
    """A forked task, as Popen would show it: the fork server reaps it and reports its exit."""

    def __init__(self, server: ForkServer, pid: int):
        self.server, self.pid = server, pid

    def poll(self) -> Optional[int]:
        with self.server.changed:
            if self.pid in self.server.codes:
                return self.server.codes[self.pid]
            return -signal.SIGKILL if self.server.gone else None

    def wait(self, timeout: Optional[float] = None) -> int:
        with self.server.changed:
            if not self.server.changed.wait_for(lambda: self.poll() is not None, timeout):
                raise subprocess.TimeoutExpired(f"{TASK_NAME_PREFIX}task {self.pid}", timeout)
        return self.poll()

    def _signal(self, signum: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


def last_checkpoint_step(directory: str) -> Optional[int]:
    """The step of the newest checkpoint a TF checkpoint state file names, without TensorFlow."""
    try:
        with open(os.path.join(directory, "checkpoint")) as f:
            match = re.search(r'^model_checkpoint_path: ".*-(\d+)"', f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def shares(progress: Dict[str, dict]) -> Dict[str, float]:
    """Each training task's part of the steps done so far."""
    steps = {name: p.get("steps", 0) for name, p in sorted(progress.items())}
    total = sum(steps.values())
    return {name: n / total for name, n in steps.items()} if total else {}
