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

On an object store (`s3://bucket/prefix`, `gs://...`), which has neither
rename nor flock, the same layout is written in another order: a version's
objects go up variables first and saved_model.pb last (a version counts only
once that is there), then models.config names it, in one PUT conditional on
the ETag the writer read, and then its record. Writers take a lease object
instead of the flock; a second writer is refused at once (object_store.Lease).
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

from deepfm_tfx import models_config, object_store
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
    """<repo>/<model> (a folder or a store URL); refuses a name or a symbolic link that would lead outside the repository."""
    if object_store.is_url(repo):
        return f"{repo.rstrip('/')}/{check_model_name(model)}"
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




class _Folder:
    """The repository in a local (or mounted) folder: renames, fsync and flock."""

    def __init__(self, repo: str):
        self.repo = repo

    def path(self, *parts: str) -> str:
        return os.path.join(self.repo, *parts)

    def read(self, relative: str) -> Optional[bytes]:
        try:
            with open(self.path(relative), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, relative: str, text: str) -> None:
        _atomic_write(self.path(relative), text)

    def remove(self, relative: str) -> None:
        path = self.path(relative)
        if os.path.exists(path):
            os.remove(path)
            fsync_dir(os.path.dirname(path))

    def has_model(self, model: str) -> bool:
        return os.path.isdir(model_dir(self.repo, model))

    def names(self, model: str) -> List[str]:
        return os.listdir(model_dir(self.repo, model))

    def versions(self, model: str) -> List[int]:
        base = model_dir(self.repo, model)
        if not os.path.isdir(base):
            return []
        return sorted(int(d) for d in os.listdir(base) if _DIGITS.fullmatch(d) and _complete(os.path.join(base, d)))

    def has_folder(self, model: str, version: int) -> bool:
        return os.path.isdir(self.path(model, str(version)))

    def problem(self, model: str, version: int) -> Optional[str]:
        return saved_model_check.problem(self.path(model, str(version)))

    def locked(self):
        return _locked(self.repo)

    def read_config(self) -> models_config.ModelServerConfig:
        try:
            return models_config.read(self.path(CONFIG_FILE))
        except models_config.ConfigError as e:
            raise RepositoryError(str(e)) from None

    def write_config(self, text: str) -> None:
        _atomic_write(self.path(CONFIG_FILE), text)

    def prepare(self, model: str) -> None:
        os.makedirs(model_dir(self.repo, model), exist_ok=True)
        fsync_dir(self.repo)

    def clear_leftovers(self, model: str) -> None:
        _clear_leftovers(self.repo, model)

    def put_version(self, model: str, version: int, saved_model_dir: str, extra: Dict[str, bytes]) -> None:
        base = model_dir(self.repo, model)
        incoming = os.path.join(base, f"{_INCOMING}{version}")
        shutil.copytree(saved_model_dir, incoming)
        for relative, data in extra.items():
            target = os.path.join(incoming, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(data)
        _fsync_tree(incoming)
        os.rename(incoming, os.path.join(base, str(version)))
        fsync_dir(base)

    def delete_version(self, model: str, version: int) -> None:
        base = model_dir(self.repo, model)
        # Out of TF Serving's sight in one rename; a crash after it leaves only leftovers.
        trash = os.path.join(base, f"{_INCOMING}deleted-{version}")
        os.rename(os.path.join(base, str(version)), trash)
        fsync_dir(base)
        for beside in (f"{version}.record.json", f"{version}.report.html"):
            if os.path.exists(os.path.join(base, beside)):
                os.remove(os.path.join(base, beside))
        shutil.rmtree(trash)
        fsync_dir(base)

    def local_copy(self, model: str, version: int, cache_dir: Optional[str] = None) -> str:
        return self.path(model, str(version))


class _Bucket:
    """The repository under an object store prefix: ordered uploads, conditional PUTs, a lease."""

    def __init__(self, repo: str):
        self.repo = repo.rstrip("/")
        self.store = _store(self.repo)
        self._config_etag: Optional[str] = None
        self._lease: Optional[object_store.Lease] = None

    def path(self, *parts: str) -> str:
        return self.store.display("/".join(parts))

    def read(self, relative: str) -> Optional[bytes]:
        return self.store.read(relative)

    def write(self, relative: str, text: str) -> None:
        self.store.put(relative, text.encode())

    def remove(self, relative: str) -> None:
        self.store.delete(relative)

    def _objects(self, model: str) -> Dict[str, Tuple[int, str]]:
        return self.store.list(check_model_name(model))

    def has_model(self, model: str) -> bool:
        return bool(self._objects(model))

    def names(self, model: str) -> List[str]:
        return sorted({key.split("/", 1)[0] for key in self._objects(model)})

    def version_tags(self, model: str) -> Dict[int, str]:
        return {int(key.split("/")[0]): tag for key, (_, tag) in self._objects(model).items()
                if key.count("/") == 1 and key.endswith("/" + SAVED_MODEL_FILE) and _DIGITS.fullmatch(key.split("/")[0])}

    def versions(self, model: str) -> List[int]:
        # saved_model.pb goes up last, so a version with it is whole.
        return sorted(self.version_tags(model))

    def has_folder(self, model: str, version: int) -> bool:
        return any(key.startswith(f"{version}/") for key in self._objects(model))

    def problem(self, model: str, version: int) -> Optional[str]:
        data = self.store.read(f"{model}/{version}/{SAVED_MODEL_FILE}")
        return f"it has no {SAVED_MODEL_FILE}" if data is None else saved_model_check.bytes_problem(data)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        try:
            with object_store.Lease(self.store) as self._lease:
                yield
        except object_store.LeaseHeld as e:
            raise RepositoryError(str(e)) from None
        finally:
            self._lease = None

    def _still_mine(self) -> None:
        if self._lease is not None:
            self._lease.renew()

    def read_config(self) -> models_config.ModelServerConfig:
        found = self.store.get(CONFIG_FILE)
        self._config_etag = found[1] if found else None
        if found is None:
            return models_config.ModelServerConfig()
        try:
            return models_config.parse(found[0].decode(), self.path(CONFIG_FILE))
        except models_config.ConfigError as e:
            raise RepositoryError(str(e)) from None

    def write_config(self, text: str) -> None:
        self._still_mine()
        try:  # the config this writer read, or none if there was none: never another writer's
            self._config_etag = self.store.put(CONFIG_FILE, text.encode(), if_match=self._config_etag,
                                               if_absent=self._config_etag is None)
        except object_store.PreconditionFailed:
            raise RepositoryError(f"{self.path(CONFIG_FILE)} was changed by another writer while this one "
                                  f"ran; it was not overwritten; run the command again") from None

    def prepare(self, model: str) -> None:
        check_model_name(model)

    def clear_leftovers(self, model: str) -> None:
        """Deletes versions a dead writer left without saved_model.pb, and records without a
        version. Only call holding the lease: nobody else is uploading then."""
        objects = self._objects(model)
        whole = {key.split("/")[0] for key in objects if key.count("/") == 1 and key.endswith("/" + SAVED_MODEL_FILE)}
        doomed = [f"{model}/{key}" for key in objects
                  if (_DIGITS.fullmatch(key.split("/")[0]) and "/" in key and key.split("/")[0] not in whole)
                  or ((record := _RECORD.fullmatch(key)) and record.group(1) not in whole)]
        self.store.delete_many(doomed)

    def put_version(self, model: str, version: int, saved_model_dir: str, extra: Dict[str, bytes]) -> None:
        base = f"{model}/{version}"
        files = sorted(object_store.walk_files(saved_model_dir),
                       key=lambda f: (f == SAVED_MODEL_FILE, not f.startswith(VARIABLES_DIR + "/"), f))
        extra = {relative.replace(os.sep, "/"): data for relative, data in extra.items()}
        for relative in files:
            self._still_mine()
            if relative == SAVED_MODEL_FILE:
                for name, data in sorted(extra.items()):
                    self.store.put(f"{base}/{name}", data)
            if relative not in extra:
                self.store.upload_file(os.path.join(saved_model_dir, relative), f"{base}/{relative}")

    def delete_version(self, model: str, version: int) -> None:
        # saved_model.pb first: from then on no reader counts the version.
        self.store.delete(f"{model}/{version}/{SAVED_MODEL_FILE}")
        for beside in (f"{version}.record.json", f"{version}.report.html"):
            self.store.delete(f"{model}/{beside}")
        self.store.delete_many([f"{model}/{key}" for key in self._objects(model) if key.startswith(f"{version}/")])

    def local_copy(self, model: str, version: int, cache_dir: Optional[str] = None) -> str:
        """The version downloaded into `cache_dir` (a temporary folder by default), whole:
        into a side folder, renamed into place once complete; reused while saved_model.pb's
        ETag is unchanged."""
        import hashlib
        import tempfile

        objects = {key[len(f"{version}/"):]: tag for key, (_, tag) in self._objects(model).items()
                   if key.startswith(f"{version}/")}
        if SAVED_MODEL_FILE not in objects:
            raise RepositoryError(f"{self.path(model, str(version))} is not a complete version")
        tag = hashlib.sha256(f"{self.repo}:{objects[SAVED_MODEL_FILE]}".encode()).hexdigest()[:12]
        cache = cache_dir or os.path.join(tempfile.gettempdir(), "deepfm-tfx-store-cache")
        final = os.path.join(cache, model, f"{version}-{tag}")
        if os.path.isfile(os.path.join(final, SAVED_MODEL_FILE)):
            return final
        incoming = os.path.join(cache, model, f"{_INCOMING}{version}-{tag}-{os.getpid()}")
        shutil.rmtree(incoming, ignore_errors=True)
        for relative in sorted(objects, key=lambda f: f == SAVED_MODEL_FILE):
            self.store.download_file(f"{model}/{version}/{relative}", os.path.join(incoming, relative))
        try:
            os.rename(incoming, final)
        except OSError:  # another process put the same version there first
            shutil.rmtree(incoming, ignore_errors=True)
        return final


_STORES: Dict[Tuple[str, Optional[str]], object_store.Store] = {}


def _store(repo: str) -> object_store.Store:
    # One client per location and endpoint: a boto3 client takes tens of milliseconds to make.
    key = (repo, os.environ.get("AWS_ENDPOINT_URL"))
    if key not in _STORES:
        _STORES[key] = object_store.Store(repo)
    return _STORES[key]


def _backend(repo: str):
    return _Bucket(repo) if object_store.is_url(repo) else _Folder(repo)


def is_store(repo: str) -> bool:
    """Whether the repository is in an object store rather than a folder."""
    return object_store.is_url(repo)


def version_dir(repo: str, model: str, version: int) -> str:
    return f"{model_dir(repo, model)}/{version}" if is_store(repo) else os.path.join(model_dir(repo, model), str(version))


def local_copy(repo: str, model: str, version: int, cache_dir: Optional[str] = None) -> str:
    """A local folder holding the version: itself in a folder repository, a downloaded copy
    from a store (for TensorFlow, which reads no s3:// here)."""
    return _backend(repo).local_copy(model, int(version), cache_dir)


def version_tags(repo: str, model: str) -> Dict[int, str]:
    """{complete version: a tag that changes when the version is replaced} (an ETag, or an mtime)."""
    files = _backend(repo)
    if isinstance(files, _Bucket):
        return files.version_tags(model)
    return {v: str(os.stat(os.path.join(version_dir(repo, model, v), SAVED_MODEL_FILE)).st_mtime_ns)
            for v in files.versions(model)}


def read_file(repo: str, relative: str) -> Optional[bytes]:
    """A file of the repository by its path inside it (e.g. models.config), or None."""
    return _backend(repo).read(relative)


def hold_path(repo: str, model: str) -> str:
    return f"{model_dir(repo, model)}/{HOLD_FILE}" if is_store(repo) else os.path.join(model_dir(repo, model), HOLD_FILE)


def _held(files, model: str) -> Optional[Dict[str, Any]]:
    data = files.read(f"{check_model_name(model)}/{HOLD_FILE}")
    return json.loads(data) if data is not None else None


def held(repo: str, model: str) -> Optional[Dict[str, Any]]:
    """The operator's hold from `models rollback`, or None: while held, pushes are not served."""
    if not is_store(repo):
        model_dir(repo, model)  # refuses a symbolic link
    return _held(_backend(repo), model)


def record_path(repo: str, model: str, version: int) -> str:
    base = model_dir(repo, model)
    return f"{base}/{version}.record.json" if is_store(repo) else os.path.join(base, f"{version}.record.json")


def versions(repo: str, model: str) -> List[int]:
    """Complete versions, oldest first: all-digit folders holding a loadable-looking SavedModel."""
    if not is_store(repo):
        model_dir(repo, model)
    return _backend(repo).versions(model)


def read_config(repo: str) -> models_config.ModelServerConfig:
    return _backend(repo).read_config()


def _labels_in(config: models_config.ModelServerConfig, model: str) -> Dict[str, int]:
    entry = models_config.find(config, model)
    found = models_config.labels(entry)
    stable = models_config.stable_version(entry)
    if stable is not None:
        found.setdefault(STABLE, stable)
        found.setdefault(CANARY, found[STABLE])
    return found


def labels(repo: str, model: str) -> Dict[str, int]:
    """{"stable": version, "canary": version}; a config from before labels pins one
    version, which is then both."""
    return _labels_in(read_config(repo), model)


def _stable(files, model: str) -> Optional[int]:
    return _labels_in(files.read_config(), model).get(STABLE)


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


def _move_labels(files, model: str, moves: Dict[str, int], wait: Optional[Wait] = None,
                 base_path: Optional[str] = None) -> Dict[str, int]:
    """Points labels at versions in TF Serving's two steps. Only call holding the lock.

    Step 1 loads every new target beside what the labels serve now; step 2,
    after `wait`, moves the labels and drops versions no label names. A wait
    that fails leaves step 1 in place (safe: nothing moved); running the same
    move again finishes it.
    """
    config = files.read_config()
    current = _labels_in(config, model)
    entry = models_config.upsert(config, model, base_path)
    target = dict(current, **moves)
    loaded = set(models_config.specific_versions(entry) or []) | set(current.values())
    new = set(target.values()) - set(current.values())
    if new and wait is not None:
        models_config.set_versions(entry, loaded | new)
        if models_config.labels(entry) != current:
            models_config.set_labels(entry, current)  # write labels out explicitly if the file had none
        files.write_config(models_config.render(config))
        for version in sorted(new):
            wait(model, version)
    models_config.set_versions(entry, set(target.values()))
    models_config.set_labels(entry, target)
    files.write_config(models_config.render(config))
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
    files = _backend(repo)
    model_dir(repo, model)
    files.prepare(model)
    with files.locked():
        files.clear_leftovers(model)
        retried = _pushed_from(files, model, record.get("source_model"))
        if retried is not None:
            # An earlier push of this same model: finish it if it died after its version was whole.
            version, record = retried
            if files.read(f"{model}/{version}.record.json") is not None:
                return version
        else:
            # Above every number in use, complete or not, so the new version never lands on one.
            taken = [int(m.group(1)) for m in (re.fullmatch(r"([0-9]+)(\.record\.json)?", n)
                                               for n in files.names(model)) if m]
            version = max([int(time.time())] + [t + 1 for t in taken])
            final = version_dir(repo, model, version)
            record = dict(record, version=version, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          path=final if is_store(repo) else os.path.abspath(final))
            extra = dict(extra_files or {}, **{VERSION_RECORD: json.dumps(record, indent=2, sort_keys=True).encode()})
            files.put_version(model, version, saved_model_dir, extra)
        hold = _held(files, model)
        as_canary = push_as == CANARY and _stable(files, model) is not None
        record["served_on_push"] = hold is None
        record["pushed_as"] = "held" if hold else (CANARY if as_canary else STABLE)
        if hold is None:
            moves = {CANARY: version} if as_canary else {STABLE: version, CANARY: version}
            _move_labels(files, model, moves, wait, base_path)
        # Last: a record beside the folder says the push finished.
        files.write(f"{model}/{version}.record.json", json.dumps(record, indent=2, sort_keys=True))
    return version


def _pushed_from(files, model: str, source_model: Optional[str]) -> Optional[Tuple[int, Dict[str, Any]]]:
    """The version (and its record) an earlier push of `source_model` created, finished or not."""
    if source_model is None:
        return None
    for v in reversed(files.versions(model)):
        record = _read_record(files, model, v)
        if record and record.get("source_model") == source_model:
            return v, record
    return None


def _read_record(files, model: str, version: int) -> Optional[Dict[str, Any]]:
    for relative in (f"{model}/{version}.record.json", f"{model}/{version}/{VERSION_RECORD}"):
        data = files.read(relative)
        if data is not None:
            return json.loads(data)
    return None


def read_record(repo: str, model: str, version: int) -> Optional[Dict[str, Any]]:
    """The record beside the version, or its own copy inside when a push died before writing that."""
    if not is_store(repo):
        model_dir(repo, model)
    return _read_record(_backend(repo), check_model_name(model), version)


def version_of_source(repo: str, model: str, source_model: str) -> Optional[int]:
    """The version a finished push of this Trainer output created, if any."""
    files = _backend(repo)
    found = _pushed_from(files, model, source_model)
    return found[0] if found and files.read(f"{model}/{found[0]}.record.json") is not None else None


def list_models(repo: str, model: str) -> List[Dict[str, Any]]:
    files = _backend(repo)
    found = _labels_in(files.read_config(), model)
    return [{"version": v, "serving": v == found.get(STABLE),
             "labels": sorted(k for k, target in found.items() if target == v),
             "record": _read_record(files, model, v)}
            for v in files.versions(model)]


def _check_version(files, model: str, version: int) -> None:
    repo = files.repo
    if not files.has_model(model):
        raise RepositoryError(f"{repo} has no model {model!r}")
    known = files.versions(model)
    if version not in known:
        folder = files.path(model, str(version))
        if files.has_folder(model, version):
            raise RepositoryError(f"version {version} of {model!r} is incomplete ({folder} lacks "
                                  f"{SAVED_MODEL_FILE} or {VARIABLES_CHECKPOINT}.index); not serving it")
        raise RepositoryError(f"{model!r} has no version {version} in {repo}; versions are "
                              f"{', '.join(map(str, known)) or 'none'}")
    if why := files.problem(model, version):
        raise RepositoryError(f"version {version} of {model!r} cannot be served: {why}; not serving it")


def rollback(repo: str, model: str, version: int, wait: Optional[Wait] = None,
             base_path: Optional[str] = None) -> None:
    """Serves another complete version by moving `stable` to it; deletes nothing.

    A canary on trial keeps its label; a canary label on the old stable
    follows. The rollback holds: later pushes land as versions but are not
    served until `release`.
    """
    model_dir(repo, model)
    files = _backend(repo)
    with files.locked():
        _check_version(files, model, version)
        current = _labels_in(files.read_config(), model)
        moves = {STABLE: version}
        if current.get(CANARY) in (None, current.get(STABLE)):
            moves[CANARY] = version
        _move_labels(files, model, moves, wait, base_path)
        files.write(f"{model}/{HOLD_FILE}", json.dumps(
            {"version": version, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))


def canary(repo: str, model: str, version: int, wait: Optional[Wait] = None,
           base_path: Optional[str] = None) -> Dict[str, int]:
    """Loads `version` beside stable under the canary label; stable keeps its traffic."""
    model_dir(repo, model)
    files = _backend(repo)
    with files.locked():
        _check_version(files, model, version)
        if _stable(files, model) is None:
            raise RepositoryError(f"{model!r} has no stable version yet; a canary needs one to be compared with")
        return _move_labels(files, model, {CANARY: version}, wait, base_path)


def promote(repo: str, model: str, version: Optional[int] = None, wait: Optional[Wait] = None,
            base_path: Optional[str] = None) -> Dict[str, int]:
    """Makes the canary (or `version`) stable; both labels then name it and the old
    stable is unloaded."""
    model_dir(repo, model)
    files = _backend(repo)
    with files.locked():
        if version is None:
            found = _labels_in(files.read_config(), model)
            if found.get(CANARY) in (None, found.get(STABLE)):
                raise RepositoryError(f"{model!r} has no canary to promote (the canary label is on stable "
                                      f"{found.get(STABLE)}); name a version")
            version = found[CANARY]
        _check_version(files, model, version)
        return _move_labels(files, model, {STABLE: version, CANARY: version}, wait, base_path)


def release(repo: str, model: str) -> Optional[Dict[str, Any]]:
    """Ends a rollback's hold; the next push is served again. Returns the hold it ended."""
    model_dir(repo, model)
    files = _backend(repo)
    with files.locked():
        hold = _held(files, model)
        if hold is not None:
            files.remove(f"{model}/{HOLD_FILE}")
    return hold


def prune(repo: str, model: str, keep: int, dry_run: bool = False) -> List[int]:
    """Removes all but the newest `keep` versions and their records, never a labelled or loaded one."""
    if keep < 1:
        raise RepositoryError("--keep must be at least 1")
    model_dir(repo, model)
    files = _backend(repo)
    if not files.has_model(model):
        return []
    with files.locked():
        config = files.read_config()
        entry = models_config.find(config, model)
        in_use = set(_labels_in(config, model).values()) | set(
            (models_config.specific_versions(entry) or []) if entry is not None else [])
        doomed = [v for v in files.versions(model)[:-keep] if v not in in_use]
        if dry_run:
            return doomed
        files.clear_leftovers(model)
        for v in doomed:
            files.delete_version(model, v)
    return doomed
