"""ml-metadata connections: SQLite by default, MySQL for Kubeflow-like setups."""
import os
import urllib.parse
from typing import Optional

from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from deepfm_tfx import object_store
from deepfm_tfx.errors import ConfigError


def connection_config(url: Optional[str], pipeline_root: str) -> metadata_store_pb2.ConnectionConfig:
    """`None` -> <pipeline_root>/metadata.sqlite (for a root in an object store, where SQLite cannot
    live: sqlite_beside_store(pipeline_root)); or mysql://user:pass@host:port/db."""
    if not url:
        folder = sqlite_beside_store(pipeline_root) if object_store.is_url(pipeline_root) else pipeline_root
        os.makedirs(folder, exist_ok=True)
        return metadata.sqlite_metadata_connection_config(os.path.join(folder, "metadata.sqlite"))
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "sqlite" and parsed.path:
        return metadata.sqlite_metadata_connection_config(parsed.path)
    try:
        port = parsed.port
    except ValueError:
        port = -1
    # What is wrong, in words: the URL itself is not shown, a malformed one may show its password anywhere.
    problem = (f"its scheme {parsed.scheme!r} is neither mysql nor sqlite" if parsed.scheme != "mysql" else
               "it names no host" if not parsed.hostname else
               "its port is not a number" if port == -1 else
               "it names no database (the path after the host)" if not parsed.path.strip("/") else None)
    if problem:
        raise ConfigError(f"--metadata: {problem}; it must look like mysql://user:pass@host:port/db or "
                          f"sqlite:///path")
    return metadata.mysql_metadata_connection_config(
        host=parsed.hostname, port=port or 3306, database=parsed.path.strip("/"),
        username=urllib.parse.unquote(parsed.username or ""),
        password=urllib.parse.unquote(parsed.password or ""))


def sqlite_beside_store(pipeline_root: str) -> str:
    """This machine's folder for the SQLite ml-metadata of a pipeline root in a bucket:
    $XDG_CACHE_HOME/deepfm-tfx/<scheme>/<bucket>/<prefix> (default ~/.cache)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    scheme, bucket, prefix = object_store.split_url(pipeline_root)
    return os.path.join(cache, "deepfm-tfx", scheme, bucket, *[p for p in prefix.split("/") if p])


def redacted(url: str) -> str:
    """The URL with everything that may be a password replaced by ***."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    if "//" not in head:
        return "***@" + tail
    start = head.index("//") + 2
    user = head[start:].split(":", 1)[0]
    return f"{head[:start]}{user}:***@{tail}"


def check_connection(url: Optional[str], pipeline_root: str) -> None:
    """Connects once, so a wrong host or password fails before the pipeline starts; never shows the password."""
    if not url:
        return
    from ml_metadata import metadata_store
    config = connection_config(url, pipeline_root)
    try:
        metadata_store.MetadataStore(config)
    except Exception as e:  # noqa: BLE001 - ml-metadata raises RuntimeError or its own errors
        password = config.mysql.password if config.HasField("mysql") else ""
        reason = str(e).replace(password, "***") if password else str(e)
        raise ConfigError(f"--metadata {redacted(url)}: cannot connect to ml-metadata ({reason.strip() or type(e).__name__}); "
                          f"check the server is up and the user, password and database are right") from None
