"""Whether an Optuna distribution holds a value, by Optuna's public API only."""

from __future__ import annotations

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


def holds(distribution: BaseDistribution, value) -> bool:
    """Whether the distribution can yield the value: Optuna's own test (its private
    `_contains`), from the distribution's public fields."""
    try:
        inner = distribution.to_internal_repr(value)  # refuses NaN, a choice not there, ...
    except (TypeError, ValueError):
        return False
    if isinstance(distribution, CategoricalDistribution):
        return True  # its internal value is the index of the choice
    if not isinstance(distribution, (IntDistribution, FloatDistribution)):
        raise TypeError(f"unknown distribution {distribution!r}")
    low, high, step = distribution.low, distribution.high, distribution.step
    if not low <= inner <= high:
        return False
    if isinstance(distribution, IntDistribution):
        return (inner - low) % step == 0
    if step is None:
        return True
    k = (inner - low) / step  # on the step grid, up to Optuna's rounding
    return abs(k - round(k)) < 1.0e-8
