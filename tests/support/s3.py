"""A real S3 endpoint on 127.0.0.1 (the `moto[server]` package's server), for tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server(seconds: float = 60) -> Iterator[dict[str, str]]:
    """Start moto's server; yields the environment that points S3 clients (pyarrow's
    included, through AWS_ENDPOINT_URL) at it. Skips where it cannot start."""
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    if server is None:
        pytest.skip("no S3 endpoint: the moto[server] package is not installed (pip install -e '.[test]')")
    port = free_port()
    process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + seconds
        while not listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"no S3 endpoint: moto_server did not listen on 127.0.0.1:{port} "
                            f"(exit code {process.poll()})")
            time.sleep(0.1)
        yield {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    finally:
        process.terminate()
        process.wait()


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def make_bucket(name: str) -> None:
    import pyarrow.fs as pafs

    # pyarrow reads AWS_ENDPOINT_URL in FileSystem.from_uri (as tune-adapter and Ray open
    # URIs), not in S3FileSystem(): say it here.
    endpoint = os.environ["AWS_ENDPOINT_URL"].removeprefix("http://")
    pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir(name)
