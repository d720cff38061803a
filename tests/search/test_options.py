"""SearchOptions: each out-of-range flag is refused in one line giving its own range."""

from pathlib import Path

import pytest

from tune_adapter.errors import ConfigError
from tune_adapter.search import SearchOptions


@pytest.mark.parametrize("flags, message", [
    ({"num_samples": 0}, "--num-samples 0 is out of range: it must be at least 1"),
    ({"max_epochs": 0, "grace_period": 1}, "--max-epochs 0 is out of range: it must be at least 1"),
    ({"reduction_factor": 1}, "--reduction-factor 1 is out of range: it must be at least 2"),
    ({"max_epochs": 3, "grace_period": 5}, "--grace-period 5 is out of range: it must be 1..3, the max epochs"),
    ({"finalists": -1}, "--finalists -1 is out of range: it must be at least 0"),
    ({"cpus_per_trial": 0}, "--cpus-per-trial 0 is out of range: it must be above 0"),
    ({"checkpoint_every": 0}, "--checkpoint-every 0 is out of range: it must be at least 1"),
])
def test_each_out_of_range_option_names_its_own_range(flags, message):
    with pytest.raises(ConfigError) as refused:
        SearchOptions(space=Path("tiny.py"), **flags)
    assert str(refused.value).startswith(message)
    assert "grace period" not in str(refused.value)  # each flag's own reason, not one for all
