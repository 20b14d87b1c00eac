"""A versioned model repository in TF Serving's layout, safe to crash in.

    <repo>/<model>/<version>/saved_model.pb   the SavedModel TF Serving loads
    <repo>/<model>/<version>.record.json      what it is: metrics, runner, data...
    <repo>/models.config                       TF Serving config pinning the serving version

A push copies into `<model>/.incoming-<version>` (TF Serving only loads
all-digit folder names), fsyncs it, and renames it into place, so a version
appears whole or not at all. Its record is written after that, and
models.config last, each by an atomic replace: a push that dies at any point
leaves the served version untouched. Rollback only replaces models.config;
prune renames a version out of sight before deleting it. Writers hold an
flock on `<repo>/.lock`, so the next writer may clear what a dead one left.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import time
from typing import Any, Dict, Iterator, List, Optional

CONFIG_FILE = "models.config"
LOCK_FILE = ".lock"
# An operator's rollback holds until `models release`; TF Serving ignores the file.
HOLD_FILE = "hold.json"
_INCOMING = ".incoming-"
_TMP = ".tmp-"
_DIGITS = re.compile(r"[0-9]+")
_RECORD = re.compile(r"([0-9]+)\.record\.json")


class RepositoryError(RuntimeError):
    pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}{_TMP}{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def _fsync_tree(root: str) -> None:
    # Bottom-up so each folder's entries are durable before its parent's.
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(folder)


@contextlib.contextmanager
def _locked(repo: str) -> Iterator[None]:
    fd = os.open(os.path.join(repo, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            # Some network filesystems cannot lock; a single writer is still safe.
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        yield
    finally:
        os.close(fd)  # also releases the flock


def _clear_leftovers(repo: str, model: str) -> None:
    """Removes what a dead writer left. Only call holding the lock."""
    base = os.path.join(repo, model)
    for name in os.listdir(base):
        path = os.path.join(base, name)
        record = _RECORD.fullmatch(name)
        if name.startswith(_INCOMING):
            shutil.rmtree(path, ignore_errors=True)
        elif _TMP in name or (record and not os.path.isdir(os.path.join(base, record.group(1)))):
            # A record without its folder is from a prune that died mid-way.
            os.remove(path)
    for name in os.listdir(repo):
        if name.startswith(CONFIG_FILE + _TMP):
            os.remove(os.path.join(repo, name))


def _complete(folder: str) -> bool:
    if not os.path.isfile(os.path.join(folder, "saved_model.pb")):
        return False
    variables = os.path.join(folder, "variables")
    return not os.path.isdir(variables) or os.path.isfile(os.path.join(variables, "variables.index"))


def version_dir(repo: str, model: str, version: int) -> str:
    return os.path.join(repo, model, str(version))


def hold_path(repo: str, model: str) -> str:
    return os.path.join(repo, model, HOLD_FILE)


def held(repo: str, model: str) -> Optional[Dict[str, Any]]:
    """The operator's hold from `models rollback`, or None: while held, pushes are not served."""
    path = hold_path(repo, model)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def record_path(repo: str, model: str, version: int) -> str:
    return os.path.join(repo, model, f"{version}.record.json")


def versions(repo: str, model: str) -> List[int]:
    """Complete versions, oldest first: all-digit folders holding a loadable-looking SavedModel."""
    base = os.path.join(repo, model)
    if not os.path.isdir(base):
        return []
    return sorted(int(d) for d in os.listdir(base)
                  if _DIGITS.fullmatch(d) and _complete(os.path.join(base, d)))


def _pins(repo: str) -> Dict[str, int]:
    """{model name: pinned version} from models.config."""
    path = os.path.join(repo, CONFIG_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        text = re.sub(r"#[^\n]*", "", f.read())
    pins: Dict[str, int] = {}
    # `model_config_list {` does not match: `_` is a word character.
    for block in re.split(r"\bconfig\s*\{", text)[1:]:
        name = re.search(r'name:\s*"([^"]*)"', block)
        version = re.search(r"versions:\s*(\d+)", block)
        if name and version:
            pins.setdefault(name.group(1), int(version.group(1)))
    return pins


def serving_version(repo: str, model: str) -> Optional[int]:
    return _pins(repo).get(model)


def _render(pins: Dict[str, int], base_path_prefix: str = "/models") -> str:
    blocks = "".join(
        "  config {\n"
        f'    name: "{model}"\n'
        f'    base_path: "{base_path_prefix.rstrip("/")}/{model}"\n'
        '    model_platform: "tensorflow"\n'
        f"    model_version_policy {{ specific {{ versions: {version} }} }}\n"
        "  }\n" for model, version in sorted(pins.items()))
    return ("# Generated by deepfm-tfx: TF Serving serves exactly these versions.\n"
            "model_config_list {\n" + blocks + "}\n")


def render_config(repo: str, model: str, version: int, base_path_prefix: str = "/models") -> str:
    return _render({model: version}, base_path_prefix)


def _serve(repo: str, model: str, version: int) -> None:
    # Other models' pins in the same repository are kept.
    pins = dict(_pins(repo), **{model: version})
    _atomic_write(os.path.join(repo, CONFIG_FILE), _render(pins))


def push(repo: str, model: str, saved_model_dir: str, record: Dict[str, Any]) -> int:
    """Copies a SavedModel in as a new version and makes it the serving one."""
    if not _complete(saved_model_dir):
        raise RepositoryError(f"{saved_model_dir} holds no complete SavedModel; refusing to push it")
    base = os.path.join(repo, model)
    os.makedirs(base, exist_ok=True)
    _fsync_dir(repo)
    with _locked(repo):
        _clear_leftovers(repo, model)
        # Above every number in use, complete or not, so the rename never lands on one.
        taken = [int(m.group(1)) for m in (re.fullmatch(r"([0-9]+)(\.record\.json)?", n) for n in os.listdir(base))
                 if m]
        version = max([int(time.time())] + [t + 1 for t in taken])
        incoming = os.path.join(base, f"{_INCOMING}{version}")
        final = os.path.join(base, str(version))
        shutil.copytree(saved_model_dir, incoming)
        _fsync_tree(incoming)
        os.rename(incoming, final)
        _fsync_dir(base)
        record = dict(record, version=version, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      path=os.path.abspath(final))
        hold = held(repo, model)
        record["served_on_push"] = hold is None
        _atomic_write(record_path(repo, model, version), json.dumps(record, indent=2, sort_keys=True))
        if hold is None:
            _serve(repo, model, version)
    return version


def read_record(repo: str, model: str, version: int) -> Optional[Dict[str, Any]]:
    path = record_path(repo, model, version)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def version_of_source(repo: str, model: str, source_model: str) -> Optional[int]:
    """The version already pushed from this Trainer output, if any."""
    for v in reversed(versions(repo, model)):
        record = read_record(repo, model, v)
        if record and record.get("source_model") == source_model:
            return v
    return None


def list_models(repo: str, model: str) -> List[Dict[str, Any]]:
    serving = serving_version(repo, model)
    return [{"version": v, "serving": v == serving, "record": read_record(repo, model, v)}
            for v in versions(repo, model)]


def rollback(repo: str, model: str, version: int) -> None:
    """Serves another complete version by rewriting models.config; deletes nothing.

    The rollback holds: later pushes land as versions but are not served
    until `release`.
    """
    base = os.path.join(repo, model)
    if not os.path.isdir(base):
        raise RepositoryError(f"{repo} has no model {model!r}")
    with _locked(repo):
        known = versions(repo, model)
        if version not in known:
            folder = os.path.join(base, str(version))
            if os.path.isdir(folder):
                raise RepositoryError(f"version {version} of {model!r} is incomplete ({folder} lacks "
                                      f"saved_model.pb or variables/variables.index); not serving it")
            raise RepositoryError(f"{model!r} has no version {version} in {repo}; versions are "
                                  f"{', '.join(map(str, known)) or 'none'}")
        _serve(repo, model, version)
        _atomic_write(hold_path(repo, model), json.dumps(
            {"version": version, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))


def release(repo: str, model: str) -> Optional[Dict[str, Any]]:
    """Ends a rollback's hold; the next push is served again. Returns the hold it ended."""
    with _locked(repo):
        hold = held(repo, model)
        if hold is not None:
            os.remove(hold_path(repo, model))
            _fsync_dir(os.path.join(repo, model))
    return hold


def prune(repo: str, model: str, keep: int, dry_run: bool = False) -> List[int]:
    """Removes all but the newest `keep` versions and their records, never the serving one."""
    if keep < 1:
        raise RepositoryError("--keep must be at least 1")
    base = os.path.join(repo, model)
    if not os.path.isdir(base):
        return []
    with _locked(repo):
        serving = serving_version(repo, model)
        doomed = [v for v in versions(repo, model)[:-keep] if v != serving]
        if dry_run:
            return doomed
        _clear_leftovers(repo, model)
        for v in doomed:
            # Out of TF Serving's sight in one rename; a crash after it leaves only leftovers.
            trash = os.path.join(base, f"{_INCOMING}deleted-{v}")
            os.rename(os.path.join(base, str(v)), trash)
            _fsync_dir(base)
            if os.path.exists(record_path(repo, model, v)):
                os.remove(record_path(repo, model, v))
            shutil.rmtree(trash)
        _fsync_dir(base)
    return doomed
