"""The Typer app, the one-line handling of user errors, and flags several commands share."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter search for InfiniteTalk's audio adapter (AudioProjModel).",
)


def user_errors(fn):
    """Bad input ends in one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..display import fail, fit_console_to_terminal

        fit_console_to_terminal()
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            fail(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            fail("interrupted")
            raise typer.Exit(130) from None

    return wrapper


CacheDir = Annotated[
    Optional[Path],
    typer.Option(help="Packed-cache folder [default: $TUNE_ADAPTER_CACHE or ~/.cache/tune-adapter/packs]"),
]
ValManifest = Annotated[Optional[Path], typer.Option(help="Validation manifest")]
ValFraction = Annotated[
    Optional[float],
    typer.Option(help="Hold out this fraction of --manifest by path hash [default: 0.1]"),
]
Experiment = Annotated[
    Optional[Path], typer.Option(help="Experiment folder [the latest under results/]")
]
