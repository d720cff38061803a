"""`pack --out s3://` and `--data s3://` against a real S3 endpoint (moto's server)."""

import pytest
from typer.testing import CliRunner

from tests.data.test_pack_format import dataset  # noqa: F401 (a fixture)
from tests.support.s3 import make_bucket, s3_server
from tune_adapter.cli import app
from tune_adapter.data.staging import STAGED_FILE, release_leases, staged_root

runner = CliRunner()


@pytest.fixture
def s3(monkeypatch):
    with s3_server() as env:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        make_bucket("bucket")
        yield
    release_leases()


def test_pack_out_s3_then_train_stages_it(tmp_path, dataset, s3):
    packed = runner.invoke(app, ["pack", "--manifest", str(dataset[0]), "--val-fraction", "0.34",
                                 "--out", "s3://bucket/ds"])
    assert packed.exit_code == 0, packed.output
    again = runner.invoke(app, ["pack", "--manifest", str(dataset[0]), "--out", "s3://bucket/ds"])
    assert again.exit_code == 2 and "is not empty" in again.output
    trained = runner.invoke(app, ["train", "--data", "s3://bucket/ds", "--output-dir", str(tmp_path / "out"),
                                  "--epochs", "1", "--batch-size", "2", "--intermediate-dim", "8",
                                  "--output-dim", "8", "--context-tokens", "3", "--vae-scale", "4"])
    assert trained.exit_code == 0, trained.output
    copies = list(staged_root().glob(f"*/{STAGED_FILE}"))
    assert len(copies) == 1 and (copies[0].parent / "train/shards/00000.audio").is_file()
    missing = runner.invoke(app, ["train", "--data", "s3://bucket/nothing", "--output-dir", str(tmp_path / "o2")])
    assert missing.exit_code == 2 and "holds no pack" in missing.output
