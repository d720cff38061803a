from pathlib import Path

import os

import pytest

from tune_adapter.synth import SynthSpec, write_synth


# Ray workers import test trainables by module name (tests.support.trainables): they must
# find the repository's root on their path.
_ROOT = str(Path(__file__).resolve().parent.parent)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test gets its own packed-cache folder, so none sees another's packs."""
    monkeypatch.setenv("TUNE_ADAPTER_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def synth_frame(tmp_path_factory) -> dict[str, Path]:
    """The default tiny synthetic dataset, per-frame targets (read-only for tests)."""
    return write_synth(tmp_path_factory.mktemp("synth_frame"), SynthSpec())


@pytest.fixture(scope="session")
def synth_latent(tmp_path_factory) -> dict[str, Path]:
    return write_synth(tmp_path_factory.mktemp("synth_latent"),
                       SynthSpec(layout="latent", train_clips=24, val_clips=8))


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> dict[str, Path]:
    """A few short clips: for tests that train but do not need learning to work."""
    return write_synth(tmp_path_factory.mktemp("synth_small"),
                       SynthSpec(train_clips=12, val_clips=4, min_frames=5, max_frames=30))


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for a test module's in-process searches: a search that finds Ray
    running neither starts nor stops it (driver.ray_session), about 5 s less per search.
    Modules that start Ray their own way (a cluster, fake GPUs) do not use it."""
    import ray

    from tune_adapter.search import SearchOptions
    from tune_adapter.search.driver import start_ray

    started = start_ray(SearchOptions(space=Path("default")))
    yield
    if started:
        ray.shutdown()
