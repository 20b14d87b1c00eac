"""moto's S3 server on 127.0.0.1, as its own process: the tests' object store.

Nothing is mocked inside the test process: boto3 talks HTTP to the server,
found through the standard AWS variables, exactly as against S3 or MinIO.
"""
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

BUCKET = "deepfm-tfx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, process: subprocess.Popen, endpoint: str):
        self.process, self.endpoint = process, endpoint
        self.env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}

    def url(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}"

    @contextlib.contextmanager
    def away(self):
        """The store stops answering (its process is paused: connections hang, as on a network outage)."""
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)

    def client(self):
        if getattr(self, "_client", None) is None:  # made once: a client takes a while on a busy machine
            import boto3
            self._client = boto3.session.Session().client("s3", endpoint_url=self.endpoint)
        return self._client

    def upload_folder(self, folder: str, prefix: str) -> None:
        """Every file under `folder` into s3://BUCKET/prefix/, at the same relative path."""
        for root, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(root, name)
                self.client().upload_file(path, BUCKET, f"{prefix}/" + os.path.relpath(path, folder))

    def keys(self, prefix: str):
        """Every key under s3://BUCKET/prefix, relative to it."""
        paginator = self.client().get_paginator("list_objects_v2")
        return sorted(o["Key"][len(prefix) + 1:] for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix + "/")
                      for o in page.get("Contents", []))


@contextlib.contextmanager
def running():
    """Starts the server, makes the bucket, points this process's AWS variables at it; undoes all of it."""
    port = free_port()
    moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
    process = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start")
                time.sleep(0.2)
        server = S3Server(process, endpoint)
        os.environ.update(server.env)
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
