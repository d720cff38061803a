"""Commands that only read an experiment start without Ray: `best` and `results`."""

import subprocess
import sys

from tests.support.fake_experiment import write_fake_experiment

PROGRAM = """
import sys
from typer.testing import CliRunner
from tune_adapter.cli import app
for command in (["best"], ["results"]):
    result = CliRunner().invoke(app, [*command, "--experiment", sys.argv[1]])
    assert result.exit_code == 0, result.output
print(sorted({name.split(".")[0] for name in sys.modules} & {"ray", "torch"}))
"""


def test_best_and_results_import_no_ray(tmp_path):
    write_fake_experiment(tmp_path, trials=4)
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path)], capture_output=True, text=True,
                          check=True)
    assert "ray" not in done.stdout.strip().splitlines()[-1], done.stdout
