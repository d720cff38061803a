"""A real S3 endpoint on 127.0.0.1 for tests (bench/s3_endpoint.py), skipped where it cannot start."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import pytest

from tune_adapter.bench.s3_endpoint import NoEndpoint, make_bucket  # noqa: F401 (re-exported)
from tune_adapter.bench import s3_endpoint


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """Skipped where moto's server cannot start, except under CI (CI=true), which installs
    the test extra: there a missing endpoint is a failure, not a silent skip."""
    try:
        server = s3_endpoint.s3_server()
        env = server.__enter__()
    except NoEndpoint as exc:
        if os.environ.get("CI"):
            pytest.fail(f"no S3 endpoint under CI, which installs moto[server] with the test extra: {exc}")
        pytest.skip(f"no S3 endpoint: {exc}")
    try:
        yield env
    finally:
        server.__exit__(None, None, None)
