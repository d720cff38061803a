"""Search-space files: `def space(trial) -> dict`, Optuna define-by-run.

`--space` takes a shipped space by name (the repository's search_spaces/NAME.py, installed
as tune_adapter.search_spaces) or a path to a file of one's own.

A space file may also set module constants that give defaults to `tune-adapter search`
flags (`NUM_SAMPLES = 32`, `MAX_EPOCHS = 20`, ...; see `FLAG_CONSTANTS`). Before any
trial starts, the space is probed with recording trials and refused when it can sample a
value the trainer cannot use, so a bad space fails in a second instead of mid-search.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from .config import SEARCHABLE, TrainConfig, option_problem
from .errors import ConfigError
from .search.options import SPACE_CONSTANTS
from .distributions import holds

FLAG_CONSTANTS = tuple(name.upper() for name in SPACE_CONSTANTS)  # NUM_SAMPLES, ...
PROBE_RUNS = 64


def _shipped_dir() -> Path:
    """Where the shipped spaces are: the installed package tune_adapter.search_spaces
    (pyproject.toml maps the repository's search_spaces/ to it), else that folder."""
    spec = importlib.util.find_spec("tune_adapter.search_spaces")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    return Path(__file__).resolve().parent.parent / "search_spaces"


SHIPPED_DIR = _shipped_dir()


@dataclass
class SearchSpace:
    path: Path
    module_name: str
    function: Callable
    defaults: dict  # flag name (lower case) -> value, from the module's constants
    baseline: dict | None = None  # BASELINE: the search's first trial, what it must beat

    @property
    def shipped_name(self) -> str | None:
        """`default` for a shipped space, None for a file of one's own."""
        return self.path.stem if self.path.resolve().parent == SHIPPED_DIR else None

    @property
    def recorded_as(self) -> str:
        """What the experiment records: a shipped space by name (it resumes wherever the
        package is installed), any other by its path."""
        return self.shipped_name or str(self.path)


def shipped_spaces() -> list[str]:
    """The names `--space` takes: the files of tune_adapter/search_spaces/."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.py") if not p.stem.startswith("_"))


def is_space_name(value: str) -> bool:
    """A bare word names a shipped space; anything with a folder or `.py` is a path."""
    return not any(sep and sep in value for sep in ("/", os.sep, os.altsep)) and not value.endswith(".py")


def space_path(value: str | Path) -> Path:
    """`--space`'s value as a file: a shipped space's by name, else the path given."""
    if isinstance(value, Path) or not is_space_name(value):
        return Path(value)
    if value not in shipped_spaces():
        raise ConfigError(f"--space {value}: no shipped space of that name: use one of "
                          f"{', '.join(shipped_spaces())}, or a path to a .py file defining space(trial)")
    return SHIPPED_DIR / f"{value}.py"


def module_name_for(path: Path) -> str:
    """A stable importable name: Tune pickles the searcher, and so `space`, by reference.

    A shipped space's name leaves out where the package is installed, so a search resumes
    after a reinstall elsewhere; any other file's name keeps its full path apart.
    """
    path = path.resolve()
    where = "shipped" if path.parent == SHIPPED_DIR else str(path)
    digest = hashlib.sha256(where.encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"tune_adapter_space_{stem}_{digest}"


def recorded_space(value: str) -> str:
    """The space an experiment recorded, as `--space` takes it. Experiments recorded a
    shipped space by its installed path while the spaces lived in tune_adapter/search_spaces/;
    such a path that no longer exists is that space's name."""
    path = Path(value)
    if (not is_space_name(value) and not path.is_file() and path.parent.name == "search_spaces"
            and path.parent.parent.name == "tune_adapter" and path.stem in shipped_spaces()):
        return path.stem
    return value


def load_space(path: str | Path) -> SearchSpace:
    """A space from a file (a str may also name a shipped space)."""
    path = space_path(path)
    if not path.is_file():
        raise ConfigError(f"--space {path} does not exist: give a shipped space's name "
                          f"({', '.join(shipped_spaces())}) or a Python file defining space(trial)")
    if path.suffix != ".py":  # importlib loads only .py files by path
        raise ConfigError(f"--space {path} is not a .py file: give a Python file defining space(trial)")
    name = module_name_for(path)
    module = sys.modules.get(name) or _import(path, name)
    function = getattr(module, "space", None)
    if not callable(function):
        raise ConfigError(f"--space {path} defines no function space(trial): add one returning a dict")
    defaults = {c.lower(): getattr(module, c) for c in FLAG_CONSTANTS if hasattr(module, c)}
    baseline = getattr(module, "BASELINE", None)
    if baseline is not None and not isinstance(baseline, dict):
        raise ConfigError(f"--space {path}: BASELINE is a {type(baseline).__name__}: make it a dict "
                          "of parameter values, e.g. {'lr': 1e-4}")
    return SearchSpace(path, name, function, defaults, baseline)


def _import(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"--space {path} fails to import: {type(exc).__name__}: {exc}") from None
    return module


class RecordingTrial:
    """Stands in for an Optuna trial: records each distribution, answers low/high/random."""

    def __init__(self, pick: str, rng: random.Random):
        self.pick, self.rng = pick, rng
        self.distributions: dict[str, BaseDistribution] = {}
        self.params: dict = {}

    def _answer(self, name, dist, candidates):
        self.distributions[name] = dist
        if self.pick == "low":
            value = candidates[0]
        elif self.pick == "high":
            value = candidates[-1]
        else:
            value = self.rng.choice(candidates)
        self.params[name] = value
        return value

    def suggest_float(self, name, low, high, *, step=None, log=False):
        dist = FloatDistribution(low, high, step=step, log=log)
        return self._answer(name, dist, [low, self.rng.uniform(low, high), high])

    def suggest_int(self, name, low, high, *, step=1, log=False):
        dist = IntDistribution(low, high, step=step, log=log)
        return self._answer(name, dist, list(range(low, high + 1, step)))

    def suggest_categorical(self, name, choices):
        dist = CategoricalDistribution(choices)
        return self._answer(name, dist, list(choices))


@dataclass
class ProbedSpace:
    distributions: dict[str, BaseDistribution]  # every parameter Optuna samples
    returned: dict[str, set]  # every value each returned key can take

    @property
    def params(self) -> list[str]:
        """Columns of a trial's parameters: the sampled names and the returned keys."""
        return sorted(set(self.distributions) | set(self.returned))


def probe_space(space: SearchSpace, seed: int = 0) -> ProbedSpace:
    """Run `space` on recording trials (lowest, highest, then random answers)."""
    rng = random.Random(seed)
    distributions: dict[str, BaseDistribution] = {}
    returned: dict[str, set] = {}
    for run in range(PROBE_RUNS):
        trial = RecordingTrial(("low", "high")[run] if run < 2 else "random", rng)
        try:
            values = space.function(trial)
        except Exception as exc:
            raise ConfigError(f"space(trial) in {space.path} raises {type(exc).__name__}: {exc}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"space(trial) in {space.path} returns {type(values).__name__}, not a dict")
        for name, dist in trial.distributions.items():
            if distributions.setdefault(name, dist) != dist:
                raise ConfigError(f"{space.path}: parameter {name!r} is suggested with two different ranges")
        for key, value in values.items():
            returned.setdefault(key, set()).update(_possible_values(trial, key, value))
    return ProbedSpace(distributions, returned)


def _possible_values(trial: RecordingTrial, key: str, value) -> set:
    """A returned value and, when it is a suggestion of the same name, all it can give.

    A key returned under another name than its suggestion is known only by the values the
    probes saw: the lowest, the highest and 62 random answers.
    """
    return {value} | (_all_values(trial.distributions[key]) if key in trial.params else set())


def _all_values(dist: BaseDistribution) -> set:
    """Every value a distribution can give (ints and categories), or its bounds (floats)."""
    if isinstance(dist, IntDistribution):
        return set(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, CategoricalDistribution):
        return set(dist.choices)
    return {dist.low, dist.high}


def check_space(probed: ProbedSpace, space: SearchSpace, latent_scales: list[int] | None) -> None:
    """Refuse a space that can sample what the trainer cannot use.

    `latent_scales`: the VAE scales per-latent targets fit (None for per-frame targets).
    """
    where = f"--space {space.path}"
    for key in probed.returned:
        if key not in SEARCHABLE:
            raise ConfigError(f"{where}: {key!r} is not a training option; use one of {', '.join(SEARCHABLE)}")
    for key in SEARCHABLE:  # TrainConfig's range rules, on every value the space can give
        bad = sorted((v for v in probed.returned.get(key, ()) if option_problem(key, v)), key=repr)
        if bad:
            raise ConfigError(f"{where} can sample {key}={bad[0]!r}: {option_problem(key, bad[0])}")
    if latent_scales is not None:
        scales = probed.returned.get("vae_scale", {TrainConfig.vae_scale})
        unfit = sorted(s for s in scales if s not in latent_scales)
        if unfit:
            raise ConfigError(
                f"{where} can sample vae_scale={unfit[0]}, but the per-latent targets fit only "
                f"vae-scale {', '.join(map(str, latent_scales))}: fix vae_scale in the space "
                "(as the shipped space does: --space infinitetalk) or use per-frame targets"
            )


def check_baseline(probed: ProbedSpace, space: SearchSpace) -> None:
    """Refuse a BASELINE naming a parameter the space does not sample, or a value outside
    its range: Optuna would otherwise warn and sample that parameter instead."""
    for name, value in (space.baseline or {}).items():
        dist = probed.distributions.get(name)
        if dist is None:
            raise ConfigError(f"--space {space.path}: BASELINE sets {name!r}, which space(trial) does not "
                              f"suggest; use one of {', '.join(sorted(probed.distributions))}")
        if not holds(dist, value):
            raise ConfigError(f"--space {space.path}: BASELINE {name}={value!r} lies outside its "
                              f"distribution {dist}: change the value or the range")
