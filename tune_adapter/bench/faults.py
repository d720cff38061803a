"""Crash a search at chosen moments, resume it, and check what the Parquet store holds.

Each kill point is a list of counts: the driver runs with `TUNE_ADAPTER_KILL_AFTER` set to
the first, so it SIGKILLs itself and its local Ray (one process group) right after its
N-th recorded result or checkpoint ("N"), or at Tune's experiment snapshot after it ("Ns",
when the snapshot on storage names a checkpoint Tune has just deleted: see record.py);
`--resume` then runs with the next count, and a final `--resume` runs to the end. The moments are deterministic in the driver's own count of
events, whichever trial they belong to. After the final resume every trial must appear
once, none as `error` or still `running`, and no (trial, epoch) twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ray.tune import Callback

from ..records.results import EPOCHS_FILE, TRIALS_FILE, read_epochs, read_trials
from ..search.scheduler import finals_rung
from ..search.study import has_study, mismatches

# Test-only: SIGKILL the driver right after its N-th recorded result or checkpoint ("N"),
# or at Tune's first experiment snapshot after it ("Ns": Tune has then registered the
# checkpoint and deleted the one it replaces, but its snapshot on storage still names that
# one), so that this bench and the tests crash a search at chosen moments.
KILL_AFTER_ENV = "TUNE_ADAPTER_KILL_AFTER"


def kill_point(value: str) -> tuple[int, bool]:
    """(N, at the next snapshot) from the variable's value; (0, False): never."""
    value = value.strip()
    at_snapshot = value.endswith("s")
    return int(value.removesuffix("s") or 0), at_snapshot


def kill_driver() -> None:
    """SIGKILL the driver's process group when it leads one (the fault bench starts it so:
    its local Ray dies with it, as in a machine crash), else the driver alone."""
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


class KillSwitch(Callback):
    """Counts the results and checkpoints the store recorded (it comes after the store's
    callback) and kills the driver at the count `KILL_AFTER_ENV` names; idle without it."""

    def setup(self, **info):
        self.events, self.armed = 0, False
        self.kill_after, self.at_snapshot = kill_point(os.environ.get(KILL_AFTER_ENV, ""))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.count()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        self.count()

    def count(self) -> None:
        self.events += 1
        if self.events == self.kill_after:
            if not self.at_snapshot:
                kill_driver()
            self.armed = True

    def get_state(self):
        # Tune asks for callback state while it writes an experiment snapshot, before the
        # snapshot reaches storage; there is no state to give (None: nothing saved).
        if self.armed:
            kill_driver()
        return None

# Kill points of `tune-adapter bench --faults`: single kills spread over a tiny search's
# ~20 events (results and checkpoints of 6 trials: the baseline and the finalist 3 epochs,
# the others 1), then repeated kills.
BENCH_KILLS = (("1",), ("3",), ("2s",), ("4s",), ("6s",), ("9s",), ("12s",), ("14s",), ("16s",),
               ("18s",), ("8",), ("17",), ("4s", "4s"), ("6s", "3", "5s"), ("2s", "2s", "2s", "2s", "2s"))


@dataclass(frozen=True)
class FaultSearch:
    """The search each kill point crashes: tiny dims, so a run takes seconds."""

    space: Path
    train: Path
    val: Path
    storage: Path
    num_samples: int = 6
    max_epochs: int = 3
    seed: int = 0
    finalists: int = 1  # trials besides the baseline that must train to the end
    timeout_s: float = 300.0
    flags: tuple[str, ...] = ()  # more search flags, the same in every run

    def command(self, name: str, resume: bool) -> list[str]:
        return [sys.executable, "-m", "tune_adapter", "search", "--space", str(self.space),
                "--manifest", str(self.train), "--val-manifest", str(self.val),
                "--num-samples", str(self.num_samples), "--max-epochs", str(self.max_epochs),
                "--grace-period", "1", "--reduction-factor", "2", "--finalists", str(self.finalists),
                "--seed", str(self.seed),
                "--storage", str(self.storage), "--name", name, *self.flags, *(["--resume"] if resume else [])]


@dataclass
class KillOutcome:
    kills: tuple[str, ...]
    killed: int = 0  # runs that died by SIGKILL (a search can end before its kill point)
    exit_code: int | None = None  # of the final run
    trials: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    finalists: int = 0  # trials besides the baseline that trained to the end
    best_at_rung: bool = False  # those finalists are the best trials at the finals rung, by their value there
    duplicate_trials: int = 0
    repeated_epochs: int = 0
    study_mismatches: list[str] = field(default_factory=list)  # the journal against the Parquet store
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tail: str = ""  # the final run's last output lines, when it failed

    def ok(self, search: FaultSearch) -> bool:
        """Every trial once, none lost or twice, and the search's answer as without a crash:
        its finalists trained to the end."""
        return (self.exit_code == 0 and self.trials == search.num_samples and self.duplicate_trials == 0
                and self.repeated_epochs == 0 and set(self.statuses) <= {"completed", "pruned"}
                and not self.study_mismatches and self.finalists == search.finalists and self.best_at_rung)


def run_driver(search: FaultSearch, name: str, resume: bool, kill_after: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != KILL_AFTER_ENV}
    if kill_after is not None:
        env[KILL_AFTER_ENV] = kill_after
    # Its own session: the driver's SIGKILL takes its whole process group (its Ray) along,
    # and so does ours when it hangs.
    command = search.command(name, resume)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as driver:
        try:
            out, err = driver.communicate(timeout=search.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(driver.pid, signal.SIGKILL)
            out, err = driver.communicate()
            err += f"\nno end after {search.timeout_s:.0f} s: killed"
            return subprocess.CompletedProcess(command, 124, out, err)
    return subprocess.CompletedProcess(command, driver.returncode, out, err)


def run_kill_point(search: FaultSearch, kills: tuple[str, ...]) -> KillOutcome:
    """A fresh search killed at each count of `kills` in turn, then resumed to its end."""
    name = "kill-" + "-".join(kills)
    outcome = KillOutcome(kills)
    start = time.monotonic()
    resume = False
    for kill_after in (*kills, None):
        done = run_driver(search, name, resume, kill_after)
        resume = True
        if done.returncode == -9:
            outcome.killed += 1
            continue
        outcome.exit_code = done.returncode
        if done.returncode != 0:
            outcome.tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        break  # the search ended (before its kill point, or the final resume)
    outcome.seconds = time.monotonic() - start
    check_store(search.storage / name, outcome, finals_rung(1, 2, search.max_epochs) if search.finalists else None)
    return outcome


def check_store(folder: Path, outcome: KillOutcome, rung: int | None = None) -> None:
    if not (folder / TRIALS_FILE).is_file() or not (folder / EPOCHS_FILE).is_file():
        return
    trials, epochs = read_trials(folder), read_epochs(folder)
    outcome.trials = int(trials["trial_id"].nunique())
    outcome.duplicate_trials = int(trials["trial_id"].duplicated().sum())
    outcome.statuses = {str(k): int(v) for k, v in trials["status"].value_counts().items()}
    finalists = trials.loc[(trials["status"] == "completed") & ~trials["baseline"], "trial_id"]
    outcome.finalists = len(finalists)
    outcome.best_at_rung = rung is None or set(finalists) == best_at(trials, epochs, rung, len(finalists))
    outcome.repeated_epochs = int(epochs.duplicated(["trial_id", "epoch"]).sum())
    outcome.errors = [str(e) for e in trials["error"].dropna()]
    outcome.study_mismatches = mismatches(folder, folder.name) if has_study(folder) else ["no optuna.journal"]


def best_at(trials, epochs, rung: int, count: int) -> set[str]:
    """The `count` best screened trials by their val_l1 at the rung (ties by trial id)."""
    screened = trials.loc[~trials["baseline"], "trial_id"]
    at_rung = epochs[(epochs["epoch"] == rung) & epochs["trial_id"].isin(screened)].dropna(subset=["val_l1"])
    return set(at_rung.sort_values(["val_l1", "trial_id"])["trial_id"].head(count))


def bench_faults(work_dir: Path, space: Path, kill_points=BENCH_KILLS, num_samples: int = 6,
                 progress=None) -> tuple[FaultSearch, list[KillOutcome]]:
    """Every kill point of `kill_points` on the same tiny dataset, one after another."""
    from ..synth import SynthSpec, write_synth

    work_dir = Path(work_dir).resolve()
    data = work_dir / "data"
    if not (data / "train.json").is_file():
        write_synth(data, SynthSpec(train_clips=12, val_clips=4, min_frames=5, max_frames=30))
    storage = work_dir / f"runs-{time.strftime('%Y%m%d-%H%M%S')}"
    search = FaultSearch(space=Path(space).resolve(), train=data / "train.json", val=data / "val.json",
                         storage=storage, num_samples=num_samples)
    outcomes = []
    for kills in kill_points:
        outcomes.append(run_kill_point(search, tuple(map(str, kills))))
        if progress is not None:
            progress(outcomes[-1])
    return search, outcomes


def outcomes_table(search: FaultSearch, outcomes: list[KillOutcome]):
    """One row per kill point: how often it died, how the final run ended, what the store holds."""
    from rich.table import Table

    table = Table(title=f"tune-adapter bench --faults: {search.num_samples} trials x up to "
                        f"{search.max_epochs} epochs, killed then resumed", title_justify="left")
    table.add_column("kill after", no_wrap=True)
    for column in ("kills", "exit", "trials", "completed", "pruned", "error", "other", "finalists", "best",
                   "epochs twice", "study ≠", "s"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    for o in outcomes:
        other = sum(n for status, n in o.statuses.items() if status not in ("completed", "pruned", "error"))
        verdict = "[green]ok" if o.ok(search) else "[red]FAILED"
        table.add_row(" > ".join(o.kills), str(o.killed), str(o.exit_code), str(o.trials),
                      *(str(o.statuses.get(k, 0)) for k in ("completed", "pruned", "error")), str(other),
                      str(o.finalists), "yes" if o.best_at_rung else "no", str(o.repeated_epochs), str(len(o.study_mismatches)), f"{o.seconds:.0f}", verdict)
    return table


def failure_lines(search: FaultSearch, outcomes: list[KillOutcome]) -> list[str]:
    """What went wrong at each failed kill point: the trials' errors, or the final run's output."""
    lines = []
    for o in outcomes:
        if not o.ok(search):
            detail = "; ".join(o.errors + o.study_mismatches) or o.tail or (
                f"{o.finalists} of {search.finalists} finalists trained to the end"
                if o.finalists != search.finalists else "a finalist is not among the best at the finals rung"
                if not o.best_at_rung else "no error recorded")
            lines.append(f"kill after {' > '.join(o.kills)}: {detail}")
    return lines
