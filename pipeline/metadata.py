"""ml-metadata connections: SQLite by default, MySQL for Kubeflow-like setups."""
import os
import urllib.parse
from typing import Optional

from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata


def connection_config(url: Optional[str], pipeline_root: str) -> metadata_store_pb2.ConnectionConfig:
    """`None` -> <pipeline_root>/metadata.sqlite; or mysql://user:pass@host:port/db."""
    if not url:
        path = os.path.join(pipeline_root, "metadata.sqlite")
        os.makedirs(pipeline_root, exist_ok=True)
        return metadata.sqlite_metadata_connection_config(path)
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "sqlite":
        return metadata.sqlite_metadata_connection_config(parsed.path)
    if parsed.scheme != "mysql" or not parsed.hostname or not parsed.path.strip("/"):
        raise ValueError(f"--metadata must look like mysql://user:pass@host:port/db or sqlite:///path, got {url!r}")
    return metadata.mysql_metadata_connection_config(
        host=parsed.hostname, port=parsed.port or 3306, database=parsed.path.strip("/"),
        username=urllib.parse.unquote(parsed.username or ""),
        password=urllib.parse.unquote(parsed.password or ""))
