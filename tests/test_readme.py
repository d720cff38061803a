"""The README's commands run as written, in order, in a folder laid out as the repository's
root: a newcomer who follows it never meets a command that fails."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tune_adapter.cli import app
from tune_adapter.cli.app import with_optional_values

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# Commands the tour does not run here, and why; every `tune-adapter` one is still parsed.
EXEMPT = {
    "python3 -m venv": "set-up: the suite runs in that environment",
    ". .venv/bin/activate": "set-up",
    "pip install": "set-up (the extras are checked against pyproject.toml)",
    "python -m pytest": "this suite",
    "hf download": "downloads weights from the Hugging Face hub",
    "tune-adapter extract": "needs wav2vec2 and InfiniteTalk weights (tests/test_extract.py fakes them)",
    "python generate_infinitetalk.py": "InfiniteTalk's own script, in its checkout",
}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[str]:
    """A block's commands: continuation lines joined, comments dropped, `&&` split."""
    joined = re.sub(r"\\\n\s*", " ", block)
    parts = [part for line in joined.splitlines() for part in line.split(" && ")]
    return [shlex.join(words) for part in parts if (words := shlex.split(part, comments=True))]


def exempt(command: str) -> str | None:
    return next((why for prefix, why in EXEMPT.items() if command.startswith(prefix)), None)


def readme_commands() -> list[str]:
    return [c for block in bash_blocks(README) for c in commands(block)]


def inline_commands() -> list[str]:
    """`tune-adapter ...` in the prose, when written whole (no `...` standing for more)."""
    spans = re.findall(r"`(tune-adapter [^`]+)`", README.replace("\n", " "))
    return [re.sub(r"\s+", " ", s) for s in spans if " --" in s and "..." not in s and "[" not in s]


def parse(command: str) -> None:
    """Parse a `tune-adapter` command as the CLI does, without running it: an unknown flag,
    a missing value or a value of the wrong type raises click's usage error."""
    name, *args = with_optional_values(shlex.split(command)[1:])
    group = typer.main.get_command(app)
    parent = group.context_class(group, info_name="tune-adapter")
    try:
        group.get_command(parent, name).make_context(name, args, parent=parent).close()
    except typer.Exit as done:  # --help
        assert done.exit_code == 0


def test_the_readme_shows_commands_and_the_parse_check_catches_a_bad_flag():
    found = readme_commands()
    assert "tune-adapter search" in found and "tune-adapter best --export" in found
    with pytest.raises(Exception, match="no-such-flag|No such option"):
        parse("tune-adapter search --no-such-flag")


@pytest.mark.parametrize("command", sorted({c for c in readme_commands() + inline_commands()
                                            if c.startswith("tune-adapter ")}))
def test_every_tune_adapter_command_in_the_readme_parses(command):
    parse(command)


def test_every_extra_the_readme_installs_exists():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = {e for spec in re.findall(r'pip install -e "\.\[([^\]]+)\]"', README) for e in spec.split(",")}
    assert named >= {"test", "extract", "dashboard", "tensorboard"} and named <= set(extras)
    assert any(r.startswith("tensorboard") for r in extras["tensorboard"])  # `tensorboard --logdir`
    assert any(r.startswith("optuna-dashboard") for r in extras["dashboard"])


def test_the_readme_uses_hf_not_the_retired_huggingface_cli():
    assert "huggingface-cli" not in README and "hf download" in README


def test_the_folders_the_readme_writes_are_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "data/x", "out/x", "outputs/x",
                              "results/x", "my_space.py"], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == ["data/x", "out/x", "outputs/x", "results/x", "my_space.py"]


@pytest.mark.slow
def test_the_tour_runs_as_written(tmp_path, monkeypatch, local_ray):
    """Every command of the README's code blocks, in order, in a folder laid out as the
    repository's root (its search_spaces/), in-process for `tune-adapter`, by bash else."""
    shutil.copytree(ROOT / "search_spaces", tmp_path / "search_spaces")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    ran = []
    for command in readme_commands():
        if exempt(command):
            continue
        if command.startswith("tune-adapter "):
            result = runner.invoke(app, shlex.split(command)[1:], env={"COLUMNS": "120"})
            code, output = result.exit_code, result.output + repr(result.exception or "")
        else:
            done = subprocess.run(command, shell=True, capture_output=True, text=True)
            code, output = done.returncode, done.stdout + done.stderr
        assert code == 0, f"README command failed: {command}\n{output}"
        ran.append(command)
    assert ran[0] == "tune-adapter search" and len(ran) >= 15
    assert (tmp_path / "results" / "synth" / "train.json").is_file()  # the quickstart's data, made once
    assert (tmp_path / "results" / "default" / "report.html").is_file()
    assert list(tmp_path.glob("results/*/export/audio_proj.safetensors"))  # best --export, the latest


@pytest.mark.skipif(shutil.which("hf") is None, reason="hf comes with the [extract] extra's huggingface-hub")
def test_every_hf_download_flag_the_readme_gives_exists():
    usage = subprocess.run(["hf", "download", "--help"], capture_output=True, text=True).stdout
    for command in (c for c in readme_commands() if c.startswith("hf download")):
        assert all(flag in usage for flag in re.findall(r"--[\w-]+", command)), command
