"""Command-line options generated from the config dataclasses, and the help formatter every command uses."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

__all__ = ["HelpFormatter", "add_config_options", "config_values"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option shows its default exactly once: not when the help text already says it, and not for
    defaults that say nothing (``None``, ``False``, suppressed)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def add_config_options(p: argparse.ArgumentParser, cls: type, also: type | None = None,
                       also_tag: str = "") -> None:
    """One ``--flag`` per field of the config dataclass ``cls``, with the help text and choices declared beside
    the field (:func:`resnet_tune.engine.config.option`). Flags not given stay absent from the namespace
    (``default=SUPPRESS``), so a YAML file and the dataclass's own defaults fill them.

    ``also``: a second config class the same command can build (e.g. multi-label for ``train``): its own fields
    get flags too, their help starting with ``also_tag``, and a shared field accepts either class's choices (the
    chosen class checks its own when the config is made)."""
    from ..engine.config import option_help, option_nargs

    names = {f.name for f in dataclasses.fields(cls)}
    fields = [(cls, f) for f in dataclasses.fields(cls)]
    if also is not None:
        fields += [(also, f) for f in dataclasses.fields(also) if f.name not in names]
    for owner, f in fields:
        hints = typing.get_type_hints(owner)
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        args = typing.get_args(kind)
        base = next((a for a in args if a is not type(None)), kind) if args else kind
        if base is Any:
            base = str
        text, allowed = option_help(owner, f.name)
        if owner is also:
            text = also_tag + text
        elif also is not None and f.name in {g.name for g in dataclasses.fields(also)}:
            other_text, other = option_help(also, f.name)
            if allowed and other and set(other) - set(allowed):
                allowed = tuple(dict.fromkeys(allowed + other))
                text += f"; {also_tag}{other_text}"
        text = text.replace("%", "%%")  # argparse formats help with %-style placeholders
        if f.default is not None and "default" not in text:
            shown = f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
            text += f" (default: {shown})"
        if base is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            allowed = tuple(a for a in allowed if a is not None) if allowed else None
            p.add_argument(flag, type=base, default=argparse.SUPPRESS, choices=allowed, help=text,
                           metavar=f.name.upper() if allowed is None else None, nargs=option_nargs(owner, f.name))


def config_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options of ``cls`` given on the command line, over those of ``--config FILE`` (flags win)."""
    from ..engine.config import load_yaml

    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
    return values
