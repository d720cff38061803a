"""Without the [extract] extra, `tune-adapter extract` says how to get it (runs without it)."""

import sys

from typer.testing import CliRunner

from tune_adapter.cli import app


def test_missing_extra_is_a_one_line_error(tmp_path, monkeypatch):
    for name in ("tune_adapter.extract", "tune_adapter.audio_io", "tune_adapter.views.extract_view"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "soxr", None)  # as if soxr were not installed
    result = CliRunner().invoke(app, ["extract", "--audio-dir", str(tmp_path), "--wav2vec-dir", str(tmp_path),
                                      "--teacher", str(tmp_path / "t.safetensors"), "--out", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "soxr is missing" in result.stderr and '.[extract]' in result.stderr
    assert not (tmp_path / "d").exists()
