"""The Typer app, the one-line handling of user errors, and flags several commands share."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from ..errors import UserError

# Options whose value may be left out, by command: `best --export` alone exports to the
# experiment's own folder. Typer has no such option (click's flag_value), so the group
# gives a bare one the value DEFAULT_VALUE before parsing.
OPTIONAL_VALUES = {"best": ("--export",)}
DEFAULT_VALUE = ""


class OptionalValueGroup(TyperGroup):
    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, with_optional_values(list(args)))


def with_optional_values(args: list[str]) -> list[str]:
    """`best --export` (last, or before another option) as `best --export ""`."""
    optional = OPTIONAL_VALUES.get(args[0], ()) if args else ()
    filled = []
    for i, arg in enumerate(args):
        filled.append(arg)
        if arg in optional and (i + 1 == len(args) or args[i + 1].startswith("-")):
            filled.append(DEFAULT_VALUE)
    return filled


app = typer.Typer(
    cls=OptionalValueGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Hyperparameter search for InfiniteTalk's audio adapter (AudioProjModel).",
)


def user_errors(fn):
    """Bad input ends in one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..views.display import fail, fit_console_to_terminal

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
DataDir = Annotated[
    Optional[str],
    typer.Option("--data", metavar="DIR|URI", help="A dataset packed by tune-adapter pack (instead of --manifest): "
                 "a folder, or a URI (s3://, gs://, file://) that each node stages into its own cache"),
]
PackDtype = Annotated[
    str,
    typer.Option(help="How a manifest's clips are packed: half (audio bf16, targets fp16) or float32 (exact)"),
]
ValFraction = Annotated[
    Optional[float],
    typer.Option(help="Hold out this fraction of --manifest by path hash [default: 0.1]"),
]
Experiment = Annotated[
    Optional[str], typer.Option(metavar="DIR|URI", help="Experiment folder, or URI/NAME of a search with --storage URI [the latest under results/]")
]
