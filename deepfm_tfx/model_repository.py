"""A versioned model repository in TF Serving's layout, safe to crash in.

    <repo>/<model>/<version>/saved_model.pb   the SavedModel TF Serving loads
    <repo>/<model>/<version>.record.json      what it is: metrics, trainer, data...
    <repo>/models.config                       TF Serving's ModelServerConfig: the versions to
                                               load, and the `stable` and `canary` labels

A push copies into `<model>/.incoming-<version>` (TF Serving only loads
all-digit folder names), fsyncs it, and renames it into place, so a version
appears whole or not at all. Its record is written after that, and
models.config last, each by an atomic replace: a push that dies at any point
leaves the served version untouched. Rollback only replaces models.config;
prune renames a version out of sight before deleting it. Writers hold an
flock on `<repo>/.lock`, so the next writer may clear what a dead one left.

Labels move in two steps, because TF Serving assigns a label only to a loaded
version (a config naming an unloaded one is refused, and the old labels stay):
first the new version is added beside the labelled ones, then, once a server
reports it AVAILABLE (`wait`), the labels move and versions nothing labels
are dropped. Without `wait` (no server named) the second step follows at once.
models.config is read and written with TF Serving's own proto (models_config).
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
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from deepfm_tfx import models_config
from deepfm_tfx import saved_model_check
from deepfm_tfx.contracts import (ASSETS_EXTRA, CANARY, LABELS, SAVED_MODEL_FILE, STABLE, VARIABLES_CHECKPOINT,
                                  VARIABLES_DIR, VARIABLES_INDEX)

CONFIG_FILE = models_config.CONFIG_FILE
LOCK_FILE = ".lock"
# An operator's rollback holds until `models release`; TF Serving ignores the file.
HOLD_FILE = "hold.json"
_INCOMING = ".incoming-"
_TMP = ".tmp-"
_DIGITS = re.compile(r"[0-9]+")
_RECORD = re.compile(r"([0-9]+)\.(?:record\.json|report\.html)")  # a version's record, and its run report
# TF Serving's model names; a name is also a folder here and a URL path segment there.
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
# What a dead _atomic_write leaves, and nothing else: `<file>.tmp-<pid>`.
_TMP_FILE = re.compile(r".+\.tmp-[0-9]+")
# A version's own copy of its record: inside the folder, so it appears atomically with it.
VERSION_RECORD = os.path.join(ASSETS_EXTRA, "deepfm_tfx.record.json")


class RepositoryError(RuntimeError):
    pass


def check_model_name(model: str) -> str:
    """The name, if TF Serving can serve it and it names a folder inside the repository."""
    if not isinstance(model, str) or not _MODEL_NAME.fullmatch(model):
        raise RepositoryError(f"model name {model!r} is not allowed: TF Serving model names use letters, digits, "
                              f"'_', '-' and '.', start with a letter, digit or '_', and hold no path separator")
    return model


def model_dir(repo: str, model: str) -> str:
    """<repo>/<model>; refuses a name or a symbolic link that would lead outside the repository."""
    path = os.path.join(repo, check_model_name(model))
    if os.path.islink(path):
        raise RepositoryError(f"{path} is a symbolic link; the repository reads and writes only its own folders")
    return path


def fsync_dir(path: str) -> None:
    """Makes a folder's entries (a new or renamed file in it) survive a crash."""
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
    fsync_dir(os.path.dirname(path) or ".")


def _fsync_tree(root: str) -> None:
    # Bottom-up so each folder's entries are durable before its parent's.
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


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
    base = model_dir(repo, model)
    for name in os.listdir(base):
        path = os.path.join(base, name)
        record = _RECORD.fullmatch(name)
        if name.startswith(_INCOMING):
            shutil.rmtree(path, ignore_errors=True)
        elif _TMP_FILE.fullmatch(name) or (record and not os.path.isdir(os.path.join(base, record.group(1)))):
            # A record without its folder is from a prune that died mid-way.
            os.remove(path)
    for name in os.listdir(repo):
        if name.startswith(CONFIG_FILE + _TMP) and _TMP_FILE.fullmatch(name):
            os.remove(os.path.join(repo, name))


def _complete(folder: str) -> bool:
    if not os.path.isfile(os.path.join(folder, SAVED_MODEL_FILE)):
        return False
    variables = os.path.join(folder, VARIABLES_DIR)
    return not os.path.isdir(variables) or os.path.isfile(os.path.join(variables, VARIABLES_INDEX))


def version_dir(repo: str, model: str, version: int) -> str:
    return os.path.join(model_dir(repo, model), str(version))


def hold_path(repo: str, model: str) -> str:
    return os.path.join(model_dir(repo, model), HOLD_FILE)


def held(repo: str, model: str) -> Optional[Dict[str, Any]]:
    """The operator's hold from `models rollback`, or None: while held, pushes are not served."""
    path = hold_path(repo, model)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def record_path(repo: str, model: str, version: int) -> str:
    return os.path.join(model_dir(repo, model), f"{version}.record.json")


def versions(repo: str, model: str) -> List[int]:
    """Complete versions, oldest first: all-digit folders holding a loadable-looking SavedModel."""
    base = model_dir(repo, model)
    if not os.path.isdir(base):
        return []
    return sorted(int(d) for d in os.listdir(base)
                  if _DIGITS.fullmatch(d) and _complete(os.path.join(base, d)))


def _config_path(repo: str) -> str:
    return os.path.join(repo, CONFIG_FILE)


def read_config(repo: str) -> models_config.ModelServerConfig:
    try:
        return models_config.read(_config_path(repo))
    except models_config.ConfigError as e:
        raise RepositoryError(str(e)) from None


def labels(repo: str, model: str) -> Dict[str, int]:
    """{"stable": version, "canary": version}; a config from before labels pins one
    version, which is then both."""
    entry = models_config.find(read_config(repo), model)
    found = models_config.labels(entry)
    stable = models_config.stable_version(entry)
    if stable is not None:
        found.setdefault(STABLE, stable)
        found.setdefault(CANARY, found[STABLE])
    return found


def serving_version(repo: str, model: str) -> Optional[int]:
    """The stable version: the one all traffic gets, except a canary's share."""
    return labels(repo, model).get(STABLE)


def canary_version(repo: str, model: str) -> Optional[int]:
    """The version on trial, or None when the canary label is on stable."""
    found = labels(repo, model)
    return found[CANARY] if found.get(CANARY) not in (None, found.get(STABLE)) else None


def render_config(repo: str, model: str, version: int,
                  base_path_prefix: str = models_config.DEFAULT_BASE_PATH_PREFIX) -> str:
    """models.config serving `version` of `model` as both stable and canary."""
    config = models_config.ModelServerConfig()
    entry = models_config.upsert(config, model, models_config.base_path_for(base_path_prefix, model))
    models_config.set_versions(entry, [version])
    models_config.set_labels(entry, {STABLE: version, CANARY: version})
    return models_config.render(config)


Wait = Callable[[str, int], None]  # wait(model, version): returns once a server has it loaded


def _move_labels(repo: str, model: str, moves: Dict[str, int], wait: Optional[Wait] = None,
                 base_path: Optional[str] = None) -> Dict[str, int]:
    """Points labels at versions in TF Serving's two steps. Only call holding the lock.

    Step 1 loads every new target beside what the labels serve now; step 2,
    after `wait`, moves the labels and drops versions no label names. A wait
    that fails leaves step 1 in place (safe: nothing moved); running the same
    move again finishes it.
    """
    path = _config_path(repo)
    config = read_config(repo)
    entry = models_config.upsert(config, model, base_path)
    current = labels(repo, model)
    target = dict(current, **moves)
    loaded = set(models_config.specific_versions(entry) or []) | set(current.values())
    new = set(target.values()) - set(current.values())
    if new and wait is not None:
        models_config.set_versions(entry, loaded | new)
        if models_config.labels(entry) != current:
            models_config.set_labels(entry, current)  # write labels out explicitly if the file had none
        _atomic_write(path, models_config.render(config))
        for version in sorted(new):
            wait(model, version)
    models_config.set_versions(entry, set(target.values()))
    models_config.set_labels(entry, target)
    _atomic_write(path, models_config.render(config))
    return target


PUSH_AS = LABELS


def push(repo: str, model: str, saved_model_dir: str, record: Dict[str, Any], push_as: str = STABLE,
         wait: Optional[Wait] = None, extra_files: Optional[Dict[str, bytes]] = None,
         base_path: Optional[str] = None) -> int:
    """Copies a SavedModel in as a new version and labels it.

    push_as="stable" moves both labels to it; "canary" loads it beside stable
    under the canary label (the first version of a model becomes stable
    either way). While a rollback holds, nothing is labelled. `extra_files`
    ({relative path: bytes}, e.g. the warmup requests) are written into the
    version before it appears.
    """
    if push_as not in PUSH_AS:
        raise RepositoryError(f"push_as must be one of {PUSH_AS}, got {push_as!r}")
    if not _complete(saved_model_dir):
        raise RepositoryError(f"{saved_model_dir} holds no complete SavedModel; refusing to push it")
    if why := saved_model_check.problem(saved_model_dir):
        raise RepositoryError(f"{saved_model_dir} cannot be served: {why}; refusing to push it")
    base = model_dir(repo, model)
    os.makedirs(base, exist_ok=True)
    fsync_dir(repo)
    with _locked(repo):
        _clear_leftovers(repo, model)
        retried = _pushed_from(repo, model, record.get("source_model"))
        if retried is not None:
            # An earlier push of this same model: finish it if it died after its rename.
            version, record = retried
            if os.path.exists(record_path(repo, model, version)):
                return version
        else:
            # Above every number in use, complete or not, so the rename never lands on one.
            taken = [int(m.group(1)) for m in (re.fullmatch(r"([0-9]+)(\.record\.json)?", n)
                                               for n in os.listdir(base)) if m]
            version = max([int(time.time())] + [t + 1 for t in taken])
            incoming = os.path.join(base, f"{_INCOMING}{version}")
            final = os.path.join(base, str(version))
            shutil.copytree(saved_model_dir, incoming)
            record = dict(record, version=version, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          path=os.path.abspath(final))
            extra = dict(extra_files or {}, **{VERSION_RECORD: json.dumps(record, indent=2, sort_keys=True).encode()})
            for relative, data in extra.items():
                target = os.path.join(incoming, relative)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as f:
                    f.write(data)
            _fsync_tree(incoming)
            os.rename(incoming, final)
            fsync_dir(base)
        hold = held(repo, model)
        as_canary = push_as == CANARY and serving_version(repo, model) is not None
        record["served_on_push"] = hold is None
        record["pushed_as"] = "held" if hold else (CANARY if as_canary else STABLE)
        if hold is None:
            moves = {CANARY: version} if as_canary else {STABLE: version, CANARY: version}
            _move_labels(repo, model, moves, wait, base_path)
        # Last: a record beside the folder says the push finished.
        _atomic_write(record_path(repo, model, version), json.dumps(record, indent=2, sort_keys=True))
    return version


def _pushed_from(repo: str, model: str, source_model: Optional[str]) -> Optional[Tuple[int, Dict[str, Any]]]:
    """The version (and its record) an earlier push of `source_model` created, finished or not."""
    if source_model is None:
        return None
    for v in reversed(versions(repo, model)):
        record = read_record(repo, model, v)
        if record and record.get("source_model") == source_model:
            return v, record
    return None


def read_record(repo: str, model: str, version: int) -> Optional[Dict[str, Any]]:
    """The record beside the version, or its own copy inside when a push died before writing that."""
    for path in (record_path(repo, model, version), os.path.join(version_dir(repo, model, version), VERSION_RECORD)):
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
    return None


def version_of_source(repo: str, model: str, source_model: str) -> Optional[int]:
    """The version a finished push of this Trainer output created, if any."""
    found = _pushed_from(repo, model, source_model)
    return found[0] if found and os.path.exists(record_path(repo, model, found[0])) else None


def list_models(repo: str, model: str) -> List[Dict[str, Any]]:
    found = labels(repo, model)
    return [{"version": v, "serving": v == found.get(STABLE),
             "labels": sorted(k for k, target in found.items() if target == v),
             "record": read_record(repo, model, v)}
            for v in versions(repo, model)]


def _check_version(repo: str, model: str, version: int) -> None:
    base = model_dir(repo, model)
    if not os.path.isdir(base):
        raise RepositoryError(f"{repo} has no model {model!r}")
    known = versions(repo, model)
    if version not in known:
        folder = os.path.join(base, str(version))
        if os.path.isdir(folder):
            raise RepositoryError(f"version {version} of {model!r} is incomplete ({folder} lacks "
                                  f"{SAVED_MODEL_FILE} or {VARIABLES_CHECKPOINT}.index); not serving it")
        raise RepositoryError(f"{model!r} has no version {version} in {repo}; versions are "
                              f"{', '.join(map(str, known)) or 'none'}")
    if why := saved_model_check.problem(os.path.join(base, str(version))):
        raise RepositoryError(f"version {version} of {model!r} cannot be served: {why}; not serving it")


def rollback(repo: str, model: str, version: int, wait: Optional[Wait] = None,
             base_path: Optional[str] = None) -> None:
    """Serves another complete version by moving `stable` to it; deletes nothing.

    A canary on trial keeps its label; a canary label on the old stable
    follows. The rollback holds: later pushes land as versions but are not
    served until `release`.
    """
    with _locked(repo):
        _check_version(repo, model, version)
        current = labels(repo, model)
        moves = {STABLE: version}
        if current.get(CANARY) in (None, current.get(STABLE)):
            moves[CANARY] = version
        _move_labels(repo, model, moves, wait, base_path)
        _atomic_write(hold_path(repo, model), json.dumps(
            {"version": version, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))


def canary(repo: str, model: str, version: int, wait: Optional[Wait] = None,
           base_path: Optional[str] = None) -> Dict[str, int]:
    """Loads `version` beside stable under the canary label; stable keeps its traffic."""
    with _locked(repo):
        _check_version(repo, model, version)
        if serving_version(repo, model) is None:
            raise RepositoryError(f"{model!r} has no stable version yet; a canary needs one to be compared with")
        return _move_labels(repo, model, {CANARY: version}, wait, base_path)


def promote(repo: str, model: str, version: Optional[int] = None, wait: Optional[Wait] = None,
            base_path: Optional[str] = None) -> Dict[str, int]:
    """Makes the canary (or `version`) stable; both labels then name it and the old
    stable is unloaded."""
    with _locked(repo):
        if version is None:
            version = canary_version(repo, model)
            if version is None:
                raise RepositoryError(f"{model!r} has no canary to promote (the canary label is on stable "
                                      f"{serving_version(repo, model)}); name a version")
        _check_version(repo, model, version)
        return _move_labels(repo, model, {STABLE: version, CANARY: version}, wait, base_path)


def release(repo: str, model: str) -> Optional[Dict[str, Any]]:
    """Ends a rollback's hold; the next push is served again. Returns the hold it ended."""
    with _locked(repo):
        hold = held(repo, model)
        if hold is not None:
            os.remove(hold_path(repo, model))
            fsync_dir(os.path.join(repo, model))
    return hold


def prune(repo: str, model: str, keep: int, dry_run: bool = False) -> List[int]:
    """Removes all but the newest `keep` versions and their records, never a labelled or loaded one."""
    if keep < 1:
        raise RepositoryError("--keep must be at least 1")
    base = model_dir(repo, model)
    if not os.path.isdir(base):
        return []
    with _locked(repo):
        entry = models_config.find(read_config(repo), model)
        in_use = set(labels(repo, model).values()) | set(
            (models_config.specific_versions(entry) or []) if entry is not None else [])
        doomed = [v for v in versions(repo, model)[:-keep] if v not in in_use]
        if dry_run:
            return doomed
        _clear_leftovers(repo, model)
        for v in doomed:
            # Out of TF Serving's sight in one rename; a crash after it leaves only leftovers.
            trash = os.path.join(base, f"{_INCOMING}deleted-{v}")
            os.rename(os.path.join(base, str(v)), trash)
            fsync_dir(base)
            for beside in (record_path(repo, model, v), os.path.join(base, f"{v}.report.html")):
                if os.path.exists(beside):
                    os.remove(beside)
            shutil.rmtree(trash)
        fsync_dir(base)
    return doomed
