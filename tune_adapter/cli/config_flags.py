"""A command's flags built from a dataclass's fields, so a new field is a flag with no CLI change.

A field's `metadata` gives its help (`help`) and can keep it off the command (`flag=False`);
see `config.option`. Defaults, types and flag names come from the field itself.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from dataclasses import MISSING, Field, fields
from typing import Annotated

import typer


def config_flags(cls, param: str = "config"):
    """Decorator: the command's parameter `param` becomes one flag per field of `cls`, in
    field order and in `param`'s place; the command is called with `param=cls(**flags)`."""

    def decorate(fn):
        hints = typing.get_type_hints(cls)
        flags = [_flag(f, hints[f.name]) for f in fields(cls) if f.metadata.get("flag", True)]
        names = [p.name for p in flags]
        signature = inspect.signature(fn, eval_str=True)
        if param not in signature.parameters:
            raise TypeError(f"{fn.__name__} has no parameter {param!r} to take the {cls.__name__} flags")
        params = []
        for p in signature.parameters.values():
            params.extend(flags if p.name == param else [p])

        @functools.wraps(fn)
        def command(**kwargs):
            values = {name: kwargs.pop(name) for name in names}
            return fn(**kwargs, **{param: cls(**values)})

        command.__signature__ = signature.replace(parameters=params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def _flag(f: Field, hint) -> inspect.Parameter:
    if isinstance(hint, types.UnionType):  # int | None -> Optional[int], as Typer expects
        hint = typing.Union[hint.__args__]
    if f.default is not MISSING:
        default = f.default
    elif f.default_factory is not MISSING:
        default = f.default_factory()
    else:
        default = inspect.Parameter.empty  # a required flag
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[hint, typer.Option(help=f.metadata.get("help"))])
