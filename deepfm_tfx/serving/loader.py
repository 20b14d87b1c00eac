"""models.config -> loaded versions and labels, reloaded when the config changes.

Like TF Serving's ServerCore with its availability-preserving policy:

- The versions a model's `model_version_policy` names are loaded
  (`specific`, `latest { num_versions }`, `all`; unset means the latest one).
- A version takes traffic only after it has loaded and replayed its warmup
  requests. Requests then see the new routing table in one reference swap.
- A label moves only to a version that is loaded. While its new target loads,
  the label keeps answering from its old version, which stays loaded for it
  even if the config no longer names it; so a push, a rollback or a label move
  written in one step never fails a request.
- A version the config drops is unloaded after the swap, and its Session
  closes when the last request holding it has finished. While none of the
  named versions of a model has loaded, the old ones keep serving.

One loader thread polls the config and the version folders; requests never
wait for it. It runs at a lower CPU priority so a load slows requests less.

A repository in an object store (`s3://bucket/prefix`) is polled the same
way; a version is downloaded whole into a local cache before TensorFlow
loads it. A version whose download or load failed is tried again with a
growing pause (TF Serving, tensorflow/serving#1738, never retries one), and
while the store cannot be reached the loaded versions keep serving.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from deepfm_tfx import model_repository, models_config
from deepfm_tfx.contracts import SAVED_MODEL_FILE
from deepfm_tfx.serving import errors
from deepfm_tfx.serving.errors import ServingError
from deepfm_tfx.serving.servable import Servable

log = logging.getLogger("deepfm_tfx.serving")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
LOADER_NICE = 10  # default CPU priority of the loader thread, below the request threads' 0
RETRY_SECONDS = (1.0, 60.0)  # a failed version from a store is retried after 1 s, 2 s, 4 s ... at most 60 s


@dataclasses.dataclass
class VersionStatus:
    state: str
    error_code: str = errors.OK
    error_message: str = ""


@dataclasses.dataclass(frozen=True)
class ModelRoutes:
    versions: Dict[int, Servable]
    labels: Dict[str, int]

    @property
    def latest(self) -> Optional[int]:
        return max(self.versions) if self.versions else None


class ModelManager:
    def __init__(self, repository: str, config_file: Optional[str] = None, poll_seconds: float = 1.0,
                 load: Callable[[str, int, str], Servable] = None, loader_nice: int = LOADER_NICE):
        self.in_store = model_repository.is_store(repository)
        self.repository = repository.rstrip("/") if self.in_store else os.path.abspath(repository)
        if self.in_store:
            self.config_file = f"{self.repository}/{models_config.CONFIG_FILE}"
            self._cache_dir = tempfile.mkdtemp(prefix="deepfm-tfx-serve-")
        else:
            self.config_file = config_file or os.path.join(self.repository, models_config.CONFIG_FILE)
            self._cache_dir = None
        self._retry: Dict[Tuple[str, int], Tuple[int, float]] = {}  # (model, version) -> (failures, retry at)
        self.poll_seconds = poll_seconds
        self.loader_nice = loader_nice
        self._load = load or (lambda model, version, path: Servable(model, version, path).load())
        self._routes: Dict[str, ModelRoutes] = {}  # replaced whole, never mutated: reads need no lock
        self._status: Dict[str, Dict[int, VersionStatus]] = {}
        self._failed: Dict[Tuple[str, int], str] = {}  # (model, version) -> the folder state that failed
        self._fingerprint: Optional[str] = None
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.config_error: Optional[str] = None
        self.reloads = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Loads what the config names (as TF Serving does before it opens its ports),
        then watches it."""
        self.poll()
        self._thread = threading.Thread(target=self._watch, name="model-loader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for routes in self._routes.values():
            for servable in routes.versions.values():
                servable.retire()
        self._routes = {}
        if self._cache_dir:
            shutil.rmtree(self._cache_dir, ignore_errors=True)

    def _watch(self) -> None:
        try:  # Linux gives each thread its own nice value.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.loader_nice)
        except (AttributeError, OSError):
            pass
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the loader must outlive any one bad config or version
                log.exception("reloading %s failed; serving what is loaded", self.config_file)

    # ------------------------------------------------------------ requests

    def models(self) -> List[str]:
        return sorted(self._routes)

    def resolve(self, model: str, version: Optional[int] = None, label: Optional[str] = None) -> Servable:
        """The version a request names (a number, a label, or the latest), acquired:
        the caller must release() it."""
        for _ in range(3):  # a swap may retire what we just looked up; look again
            servable = self._lookup(model, version, label)
            if servable.acquire():
                return servable
        raise ServingError(errors.UNAVAILABLE, f"model {model} is being reloaded; retry")

    def _lookup(self, model: str, version: Optional[int], label: Optional[str]) -> Servable:
        if not model:
            raise errors.invalid("ModelSpec has no name specified.")
        if version is not None and label is not None:
            raise errors.invalid(f"Both model version ({version}) and model version label ({label}) "
                                 f"cannot be supplied.")
        routes = self._routes.get(model)
        if label is not None:
            if routes is None or label not in routes.labels:
                raise errors.invalid(f"Unrecognized servable version label: {label}")
            version = routes.labels[label]
        if routes is None or not routes.versions:
            request = f"Specific({model}, {version})" if version is not None else f"Latest({model})"
            raise ServingError(errors.NOT_FOUND, f"Servable not found for request: {request}")
        if version is None:
            version = routes.latest
        servable = routes.versions.get(version)
        if servable is None:
            raise ServingError(errors.NOT_FOUND, f"Servable not found for request: Specific({model}, {version})")
        return servable

    def status(self, model: str, version: Optional[int] = None) -> List[Tuple[int, VersionStatus]]:
        states = self._status.get(model, {})
        if version is not None:
            if version not in states:
                raise ServingError(errors.NOT_FOUND, f"Could not find version {version} of model {model}")
            return [(version, states[version])]
        if not states:
            raise ServingError(errors.NOT_FOUND, f"Could not find any versions of model {model}")
        return sorted(states.items())

    def labels(self, model: str) -> Dict[str, int]:
        routes = self._routes.get(model)
        return dict(routes.labels) if routes else {}

    # ------------------------------------------------------------ reloading

    def _model_dir(self, entry) -> str:
        # base_path names where production mounts the repository (/models/deepfm);
        # here the repository is --model-repository, so its last part is the folder.
        return os.path.join(self.repository, os.path.basename(entry.base_path.rstrip("/")) or entry.name)

    def _read_config(self) -> bytes:
        if not self.in_store:
            with open(self.config_file, "rb") as f:
                return f.read()
        raw = model_repository.read_file(self.repository, models_config.CONFIG_FILE)
        if raw is None:
            raise FileNotFoundError(f"{self.config_file} does not exist")
        return raw

    def _version_tags(self, model_dir: str) -> Dict[int, str]:
        """{complete version: what changes when it is replaced}."""
        repo, name = os.path.dirname(model_dir), os.path.basename(model_dir)
        if self.in_store:
            return model_repository.version_tags(repo, name)
        return {v: str(_mtime(os.path.join(model_dir, str(v)))) for v in model_repository.versions(repo, name)}

    def _local_path(self, model_dir: str, version: int) -> str:
        if not self.in_store:
            return os.path.join(model_dir, str(version))
        return model_repository.local_copy(os.path.dirname(model_dir), os.path.basename(model_dir), version,
                                           self._cache_dir)

    def _retry_due(self, key: Tuple[str, int]) -> bool:
        return key in self._retry and time.monotonic() >= self._retry[key][1]

    def _wanted(self, entry, on_disk: List[int]) -> List[int]:
        policy = entry.model_version_policy.WhichOneof("policy_choice")
        if policy == "specific":
            named = set(entry.model_version_policy.specific.versions)
            missing = named - set(on_disk)
            if missing:
                log.warning("%s: versions %s named in %s are not complete under %s", entry.name,
                            sorted(missing), os.path.basename(self.config_file), self._model_dir(entry))
            return sorted(named & set(on_disk))
        if policy == "all":
            return list(on_disk)
        count = entry.model_version_policy.latest.num_versions if policy == "latest" else 1
        return list(on_disk[-max(count, 1):])

    def _desired(self) -> Tuple[Dict[str, Tuple[str, List[int], Dict[str, int], Dict[int, str]]], str]:
        raw = self._read_config()
        config = models_config.parse(raw.decode(), self.config_file)
        desired = {}
        digest = hashlib.sha256(raw)
        for entry in config.model_config_list.config:
            model_dir = self._model_dir(entry)
            tags = self._version_tags(model_dir)
            wanted = self._wanted(entry, sorted(tags))
            desired[entry.name] = (model_dir, wanted, dict(entry.version_labels), tags)
            for v in wanted:  # a replaced folder (same number) reloads
                digest.update(f"{entry.name}/{v}:{tags[v]}".encode())
        return desired, digest.hexdigest()

    def poll(self) -> bool:
        """Reloads if the config or the versions it selects changed; True if it did."""
        with self._reload_lock:
            try:
                desired, fingerprint = self._desired()
            except (OSError, models_config.ConfigError) as e:
                if str(e) != self.config_error:
                    log.error("cannot read %s: %s; serving what is loaded", self.config_file, e)
                self.config_error = str(e)
                return False
            self.config_error = None
            if fingerprint == self._fingerprint and not any(self._retry_due(k) for k in self._retry):
                return False
            self._apply(desired)
            self._fingerprint = fingerprint
            self.reloads += 1
            return True

    def _apply(self, desired: Dict[str, Tuple[str, List[int], Dict[str, int], Dict[int, str]]]) -> None:
        wanted_now = {(m, v) for m, (_, wanted, _, _) in desired.items() for v in wanted}
        self._retry = {k: r for k, r in self._retry.items() if k in wanted_now}
        # 1. Load and warm what is new, publishing each version as soon as it is ready.
        for model, (model_dir, wanted, _, tags) in desired.items():
            for version in wanted:
                if version in self._loaded(model):
                    continue
                state = f"{model_dir}/{version}:{tags[version]}"
                if self._failed.get((model, version)) == state and not self._retry_due((model, version)):
                    continue  # failed before, unchanged since: do not retry every poll
                servable = self._load_one(model, version, lambda d=model_dir, v=version: self._local_path(d, v),
                                          state)
                if servable is not None:
                    routes = self._routes.get(model) or ModelRoutes({}, {})
                    self._publish(model, ModelRoutes({**routes.versions, version: servable}, routes.labels))
        # 2. Move labels to loaded targets, then drop what nothing needs any more.
        for model in sorted(set(self._routes) | set(desired)):
            routes = self._routes.get(model) or ModelRoutes({}, {})
            _, wanted, want_labels, _ = desired.get(model, ("", [], {}, {}))
            labels = {}
            for label, target in want_labels.items():
                if target in routes.versions:
                    labels[label] = target
                elif label in routes.labels:  # keep answering from the old target until the new one loads
                    labels[label] = routes.labels[label]
                    log.warning("%s: label %r stays on version %s until version %s is loaded", model, label,
                                routes.labels[label], target)
                else:
                    log.warning("%s: label %r names version %s, which is not loaded", model, label, target)
            keep = {v for v in wanted if v in routes.versions} | set(labels.values())
            if not any(v in routes.versions for v in wanted) and model in desired:
                keep |= set(routes.versions)  # nothing new is up: keep serving the old versions
            versions = {v: s for v, s in routes.versions.items() if v in keep}
            self._publish(model, ModelRoutes(versions, labels))
            for version, servable in routes.versions.items():
                if version not in keep:
                    self._set_status(model, version, UNLOADING)
                    servable.retire()
                    if self._cache_dir and getattr(servable, "path", "").startswith(self._cache_dir):
                        shutil.rmtree(servable.path, ignore_errors=True)  # loaded in memory; the copy is spent
                    self._set_status(model, version, END)
                    log.info("%s: unloaded version %s", model, version)

    def _loaded(self, model: str) -> Dict[int, Servable]:
        routes = self._routes.get(model)
        return routes.versions if routes else {}

    def _load_one(self, model: str, version: int, locate: Callable[[], str], state: str) -> Optional[Servable]:
        self._set_status(model, version, LOADING)
        started = time.monotonic()
        try:
            servable = self._load(model, version, locate())
            warmed = servable.warm_up()
        except Exception as e:  # noqa: BLE001 - a bad version must not take the server down
            self._failed[(model, version)] = state
            message = f"{type(e).__name__}: {e}".strip()
            self._set_status(model, version, END, errors.UNKNOWN, message[:2000])
            retry = ""
            if self.in_store:  # a store's errors pass; a folder's failed version stays failed until replaced
                failures = self._retry.get((model, version), (0, 0.0))[0] + 1
                pause = min(RETRY_SECONDS[0] * 2 ** (failures - 1), RETRY_SECONDS[1])
                self._retry[(model, version)] = (failures, time.monotonic() + pause)
                retry = f"; trying again in {pause:.0f}s"
            log.error("%s: version %s failed to load: %s%s", model, version, message, retry)
            return None
        self._failed.pop((model, version), None)
        self._retry.pop((model, version), None)
        self._set_status(model, version, AVAILABLE)
        log.info("%s: version %s available (loaded in %.1fs, %d warmup requests in %.1fs)", model, version,
                 time.monotonic() - started - servable.warmup_seconds, warmed, servable.warmup_seconds)
        return servable

    def _publish(self, model: str, routes: ModelRoutes) -> None:
        new = dict(self._routes)
        if routes.versions or routes.labels:
            new[model] = routes
        else:
            new.pop(model, None)
        self._routes = new  # one reference swap: a request sees the old table or the new one

    def _set_status(self, model: str, version: int, state: str, code: str = errors.OK, message: str = "") -> None:
        self._status.setdefault(model, {})[version] = VersionStatus(state, code, message)


def _mtime(path: str) -> int:
    try:
        return os.stat(os.path.join(path, SAVED_MODEL_FILE)).st_mtime_ns
    except OSError:
        return 0
