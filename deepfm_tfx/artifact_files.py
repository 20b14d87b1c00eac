"""Files under the pipeline root and in artifacts, which may be in an object store.

A local path goes through `os` (and a write through a side file renamed into
place); an `s3://` or `gs://` one through TFX's fileio, i.e. tf.io.gfile with
the S3 filesystem that object_store.register_tf_filesystem() registered, where
a write is one PUT (a reader sees the old object or the new one). TFX is
imported only for a URL.
"""
from __future__ import annotations

import glob as _glob
import io
import os
from typing import List, Optional

from deepfm_tfx.object_store import is_url


def _fileio():
    from tfx.dsl.io import fileio
    return fileio


def join(*parts: str) -> str:
    return "/".join([parts[0].rstrip("/")] + [p.strip("/") for p in parts[1:]]) if is_url(parts[0]) else \
        os.path.join(*parts)


def exists(path: str) -> bool:
    return _fileio().exists(path) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _fileio().isdir(path) if is_url(path) else os.path.isdir(path)


def glob(pattern: str) -> List[str]:
    return sorted(_fileio().glob(pattern) if is_url(pattern) else _glob.glob(pattern))


def makedirs(path: str) -> None:
    if is_url(path):
        _fileio().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def _s3(path: str):
    """(Store of the bucket, key) for an s3:// path: our own files go through boto3, so a process
    uses tensorflow-io's S3 client only inside TensorFlow (a process forked after using that client
    hangs in it: Airflow's task processes are forks of the one that parsed the DAG)."""
    from deepfm_tfx import object_store
    scheme, bucket, key = object_store.split_url(path)
    return object_store.Store(f"{scheme}://{bucket}"), key


def read_bytes(path: str) -> bytes:
    if path.startswith("s3://"):
        store, key = _s3(path)
        data = store.read(key)
        if data is None:
            raise FileNotFoundError(path)
        return data
    if is_url(path):
        try:
            with _fileio().open(path, "rb") as f:
                return f.read()
        except Exception as e:  # noqa: BLE001 - tf.errors.NotFoundError is not an OSError
            raise FileNotFoundError(f"{path}: {e}") from None
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """The whole file at once: readers see the old contents or the new ones."""
    if path.startswith("s3://"):
        store, key = _s3(path)
        store.put(key, data)
        return
    if is_url(path):
        with _fileio().open(path, "wb") as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def load_npz(path: str) -> Optional[dict]:
    """{name: array} of a .npz file, or None if it is not there."""
    import numpy as np

    try:
        data = read_bytes(path)
    except OSError:
        return None
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        return {k: stored[k] for k in stored.files}


def save_npz(path: str, compressed: bool = False, **arrays) -> None:
    import numpy as np

    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def copy_tree(source: str, target: str) -> None:
    """Copies the folder `source` (local or in a store) into the local folder `target`."""
    fileio = _fileio()
    for folder, _, files in fileio.walk(source):
        relative = folder[len(source.rstrip("/")):].strip("/")
        local = os.path.join(target, *[p for p in relative.split("/") if p])
        os.makedirs(local, exist_ok=True)
        for name in files:
            fileio.copy(join(folder, name), os.path.join(local, name), overwrite=True)
