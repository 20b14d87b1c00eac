"""Object storage (S3 and S3-compatible stores) for the model repository.

A location is `s3://bucket/prefix` (or `gs://bucket/prefix`, through Cloud
Storage's S3-compatible XML API). The endpoint and the credentials come only
from the standard AWS variables and files that boto3 reads itself
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_DEFAULT_REGION`, profiles): never from our flags, and never logged.

An object store has no rename and no lock. What it has, and what the
repository's safety rests on here, is a PUT that succeeds only if the object
is absent (If-None-Match: *) or unchanged since it was read (If-Match: its
ETag), and a DELETE with If-Match. `Lease` builds a writer's lock from them.
boto3 is imported on first use, so importing this module stays cheap.
"""
from __future__ import annotations

import json
import os
import socket
import time
from typing import Dict, Iterator, List, Optional, Tuple

SCHEMES = ("s3://", "gs://")
GCS_ENDPOINT = "https://storage.googleapis.com"  # gs:// without AWS_ENDPOINT_URL
LEASE_OBJECT = ".lease"
LEASE_SECONDS = 600  # renewed while a push uploads; a writer found dead on this host frees it at once


class StoreError(OSError):
    """The store refused or could not be reached; an OSError so callers that survive a
    missing file survive this too."""


class PreconditionFailed(StoreError):
    """A conditional write or delete lost: someone else wrote the object first."""


def is_url(path: str) -> bool:
    return isinstance(path, str) and path.startswith(SCHEMES)


def split_url(url: str) -> Tuple[str, str, str]:
    """(scheme, bucket, prefix without slashes at either end)."""
    scheme, rest = url.split("://", 1)
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"{url} names no bucket; expected {scheme}://bucket/prefix")
    return scheme, bucket, prefix.strip("/")


def _client(scheme: str, timeouts: Tuple[float, float], attempts: int):
    import boto3
    from botocore.config import Config

    endpoint = None
    if scheme == "gs" and not os.environ.get("AWS_ENDPOINT_URL"):
        endpoint = GCS_ENDPOINT
    retries = {"mode": "standard"}
    if not os.environ.get("AWS_MAX_ATTEMPTS"):  # the standard variable wins
        retries["total_max_attempts"] = attempts
    config = Config(connect_timeout=timeouts[0], read_timeout=timeouts[1], retries=retries)
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


class Store:
    """Objects under one `scheme://bucket/prefix`, addressed by paths relative to it."""

    def __init__(self, url: str, timeouts: Tuple[float, float] = (5.0, 20.0), attempts: int = 3):
        self.url = url.rstrip("/")
        self.scheme, self.bucket, self.prefix = split_url(url)
        self._s3 = _client(self.scheme, timeouts, attempts)

    def key(self, relative: str = "") -> str:
        return "/".join(p for p in (self.prefix, relative.strip("/")) if p)

    def display(self, relative: str = "") -> str:
        return "/".join(p for p in (self.url, relative.strip("/")) if p)

    def _call(self, op: str, relative: str, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = getattr(self._s3, op)(Bucket=self.bucket, **kwargs)
            if op == "get_object":  # the body streams: its errors are the store's too
                response["Body"] = response["Body"].read()
            return response
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                raise PreconditionFailed(f"{self.display(relative)}: changed by another writer") from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(self.display(relative)) from None
            raise StoreError(f"{self.display(relative)}: {code or status} from the object store") from None
        except BotoCoreError as e:
            raise StoreError(f"{self.display(relative)}: {e}") from None

    def get(self, relative: str) -> Optional[Tuple[bytes, str]]:
        """(bytes, ETag), or None when the object does not exist."""
        try:
            r = self._call("get_object", relative, Key=self.key(relative))
            return r["Body"], r["ETag"]
        except FileNotFoundError:
            return None

    def read(self, relative: str) -> Optional[bytes]:
        found = self.get(relative)
        return found[0] if found else None

    def etag(self, relative: str) -> Optional[str]:
        try:
            return self._call("head_object", relative, Key=self.key(relative))["ETag"]
        except FileNotFoundError:
            return None

    def put(self, relative: str, data: bytes, if_match: Optional[str] = None, if_absent: bool = False) -> str:
        """Writes one object whole (a reader sees the old bytes or the new ones); returns its ETag.
        `if_match`/`if_absent` make it conditional: PreconditionFailed when the condition fails."""
        kwargs = {}
        if if_match:
            kwargs["IfMatch"] = if_match
        elif if_absent:
            kwargs["IfNoneMatch"] = "*"
        return self._call("put_object", relative, Key=self.key(relative), Body=data, **kwargs)["ETag"]

    def delete(self, relative: str, if_match: Optional[str] = None) -> None:
        kwargs = {"IfMatch": if_match} if if_match else {}
        try:
            self._call("delete_object", relative, Key=self.key(relative), **kwargs)
        except FileNotFoundError:
            pass

    def delete_many(self, relatives: List[str]) -> None:
        for start in range(0, len(relatives), 1000):  # S3's limit per request
            chunk = relatives[start:start + 1000]
            if chunk:
                self._call("delete_objects", chunk[0], Delete={
                    "Objects": [{"Key": self.key(r)} for r in chunk], "Quiet": True})

    def list(self, relative: str = "") -> Dict[str, Tuple[int, str]]:
        """{path relative to `relative`: (size, ETag)} of every object under it."""
        prefix = self.key(relative)
        prefix = prefix + "/" if prefix else ""
        found: Dict[str, Tuple[int, str]] = {}
        token = None
        while True:
            kwargs = {"Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            r = self._call("list_objects_v2", relative, **kwargs)
            for o in r.get("Contents", []):
                found[o["Key"][len(prefix):]] = (o["Size"], o["ETag"])
            if not r.get("IsTruncated"):
                return found
            token = r["NextContinuationToken"]

    def check(self) -> None:
        """One small request: StoreError if the store cannot be reached or the bucket is not there."""
        self._call("list_objects_v2", "", Prefix=self.key() + "/" if self.prefix else "", MaxKeys=1)

    def upload_file(self, local: str, relative: str) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._s3.upload_file(local, self.bucket, self.key(relative))
        except (BotoCoreError, ClientError, S3UploadFailedError) as e:
            raise StoreError(f"{self.display(relative)}: upload failed: {e}") from None

    def download_file(self, relative: str, local: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
        try:
            self._s3.download_file(self.bucket, self.key(relative), local)
        except (BotoCoreError, ClientError) as e:
            raise StoreError(f"{self.display(relative)}: download failed: {e}") from None


def open_object(url: str):
    """A streaming read of the object at `scheme://bucket/key` through boto3 (read(n), close())."""
    scheme, bucket, key = split_url(url)
    store = Store(f"{scheme}://{bucket}")
    try:
        return store._s3.get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as e:  # noqa: BLE001 - botocore's errors, as the store's
        code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(url) from None
        raise StoreError(f"{url}: {code or e}") from None


def _alive_here(lease: Dict) -> bool:
    """False only when the holder ran on this host and its process is gone."""
    if lease.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(lease.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OSError):
        return True
    return True


class LeaseHeld(StoreError):
    pass


class Lease:
    """One writer at a time over a prefix: a lease object created with If-None-Match.

    A lease past its expiry, or held by a process of this host that is gone
    (a writer killed mid-push), is taken over with If-Match on its ETag, so two
    writers that find it stale at once cannot both take it. A writer that finds
    it held gets LeaseHeld at once: it changed nothing.
    """

    def __init__(self, store: Store, seconds: float = LEASE_SECONDS):
        self.store, self.seconds = store, seconds
        self._etag: Optional[str] = None
        self._renewed = time.monotonic()

    def _body(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "expires": time.time() + self.seconds,
                           "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()

    def acquire(self) -> None:
        self._renewed = time.monotonic()
        try:
            self._etag = self.store.put(LEASE_OBJECT, self._body(), if_absent=True)
            return
        except PreconditionFailed:
            pass
        found = self.store.get(LEASE_OBJECT)
        if found is None:  # released meanwhile: try once more from the start
            self._etag = self.store.put(LEASE_OBJECT, self._body(), if_absent=True)
            return
        data, etag = found
        try:
            holder = json.loads(data)
        except ValueError:
            holder = {}
        if float(holder.get("expires", 0)) > time.time() and _alive_here(holder):
            raise LeaseHeld(f"another writer holds {self.store.display(LEASE_OBJECT)} (host "
                            f"{holder.get('host')}, pid {holder.get('pid')}, since {holder.get('since')}); "
                            f"nothing was changed; try again once it has finished")
        try:
            self._etag = self.store.put(LEASE_OBJECT, self._body(), if_match=etag)
        except PreconditionFailed:
            raise LeaseHeld(f"another writer took over the stale {self.store.display(LEASE_OBJECT)} first; "
                            f"nothing was changed; try again once it has finished") from None

    def renew(self) -> None:
        """Pushes the expiry on, if a third of it has passed; LeaseHeld if someone took the lease over
        meanwhile (then this writer must stop: it no longer owns what it is writing)."""
        if self._etag is None or time.monotonic() - self._renewed < self.seconds / 3:
            return
        try:
            self._etag = self.store.put(LEASE_OBJECT, self._body(), if_match=self._etag)
        except PreconditionFailed:
            self._etag = None
            raise LeaseHeld(f"{self.store.display(LEASE_OBJECT)} expired and was taken over by another writer; "
                            f"this one stopped before naming anything in models.config") from None
        self._renewed = time.monotonic()

    def release(self) -> None:
        if self._etag is not None:
            try:
                self.store.delete(LEASE_OBJECT, if_match=self._etag)
            except StoreError:
                pass  # taken over after expiry, or the store is away: it expires on its own
            self._etag = None

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_TF_FILESYSTEM = False


def register_tf_filesystem() -> None:
    """Makes `s3://` a path for tf.io.gfile, hence for TFX's fileio, TFT, TFMA and the Trainer.

    tensorflow-io's S3 filesystem registers itself on import. It reads its own
    variables (S3_ENDPOINT, S3_USE_HTTPS, AWS_REGION), set here from the
    standard AWS ones, so AWS_ENDPOINT_URL alone points TensorFlow, boto3 and
    Beam's S3 filesystem (boto3 too) at the same store. A process that called
    this must end through exit_process: tensorflow-io aborts at interpreter
    exit ("pure virtual method called", exit code 134) after work that succeeded.
    """
    global _TF_FILESYSTEM
    if _TF_FILESYSTEM:
        return
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        os.environ.setdefault("S3_ENDPOINT", endpoint)
        os.environ.setdefault("S3_USE_HTTPS", "0" if endpoint.startswith("http://") else "1")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        os.environ.setdefault("AWS_REGION", region)
    import tensorflow_io  # noqa: F401 - registers s3:// for tf.io.gfile

    _TF_FILESYSTEM = True


def tf_filesystem_registered() -> bool:
    return _TF_FILESYSTEM


def exit_process(code: int) -> None:
    """Ends this process with `code` now: flushed, without the interpreter's teardown, where
    tensorflow-io's S3 filesystem would abort and turn a success into exit code 134."""
    import logging
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)


def walk_files(folder: str) -> Iterator[str]:
    """Paths of every file under `folder`, relative to it, '/'-separated."""
    for root, _, files in os.walk(folder):
        for name in files:
            yield os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")


MIRROR_MANIFEST = ".deepfm-tfx-mirror.json"


def mirror(url: str, folder: str) -> Tuple[int, int]:
    """Makes `folder` a copy of the objects under `url`; returns (downloaded, total).

    Only objects whose ETag changed since the last mirror are downloaded (each
    into a side file, then renamed), so an unchanged file keeps its mtime and
    ExampleGen's input fingerprint; files gone from the store are removed.
    """
    store = Store(url)
    objects = {k: tag for k, (_, tag) in store.list().items() if k and not k.endswith("/")}
    if not objects:
        return 0, 0  # a wrong prefix: leave the folder as it was
    manifest_path = os.path.join(folder, MIRROR_MANIFEST)
    try:
        with open(manifest_path) as f:
            had = json.load(f)
    except (OSError, ValueError):
        had = {}
    downloaded = 0
    for relative, tag in sorted(objects.items()):
        local = os.path.join(folder, *relative.split("/"))
        if had.get(relative) == tag and os.path.isfile(local):
            continue
        side = f"{local}.incoming-{os.getpid()}"
        store.download_file(relative, side)
        os.replace(side, local)
        downloaded += 1
    for relative in set(had) - set(objects):
        try:
            os.remove(os.path.join(folder, *relative.split("/")))
        except FileNotFoundError:
            pass
    os.makedirs(folder, exist_ok=True)
    with open(manifest_path + ".tmp", "w") as f:
        json.dump(objects, f)
    os.replace(manifest_path + ".tmp", manifest_path)
    return downloaded, len(objects)
