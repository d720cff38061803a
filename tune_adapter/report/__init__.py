"""A one-file HTML report of an experiment, built from its Parquet files alone."""

from .build import write_report

__all__ = ["write_report"]
