"""A real S3 endpoint on 127.0.0.1: the `moto[server]` package's server (a test extra), for
`bench --staging` and the tests of s3:// packs and storage."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}


class NoEndpoint(RuntimeError):
    """moto's server is not installed, or did not start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def s3_server(seconds: float = 60) -> Iterator[dict[str, str]]:
    """Start moto's server; yields the environment that points S3 clients at it (pyarrow's
    `FileSystem.from_uri`, and so Ray's, read AWS_ENDPOINT_URL)."""
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    if server is None:
        raise NoEndpoint("the moto[server] package is not installed (pip install -e '.[test]')")
    port = free_port()
    process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + seconds
        while not listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise NoEndpoint(f"moto_server did not listen on 127.0.0.1:{port} (exit code {process.poll()})")
            time.sleep(0.1)
        yield {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    finally:
        process.terminate()
        process.wait()


def make_bucket(name: str) -> None:
    """A bucket at the endpoint of AWS_ENDPOINT_URL (S3FileSystem() itself does not read it)."""
    import pyarrow.fs as pafs

    endpoint = os.environ["AWS_ENDPOINT_URL"].removeprefix("http://")
    pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir(name)
