"""How a command is declared: its name, one line of help, its arguments and its function, in one place.

``rules.py`` and ``tools.py`` each keep a ``Commands`` list; ``@COMMANDS.command(name, help, *arguments)``
above a function registers it with its arguments, so a reader sees both together. Defaults that
mirror a config key come from the schema (``schema_default``), never from a literal here.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dmflow.core.schema import defaults


@dataclass(frozen=True)
class Argument:
    """The positional and keyword arguments of one ``ArgumentParser.add_argument`` call."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Argument:
    """One argument of a command, as ``add_argument(*flags, **options)`` takes it."""
    return Argument(flags, options)


@dataclass(frozen=True)
class Command:
    """A subcommand: ``dmflow NAME ARGUMENTS`` calls ``run(args)``."""

    name: str
    help: str
    arguments: tuple[Argument, ...]
    run: Callable[[argparse.Namespace], Any]


class Commands(list):
    """The commands of one module, in the order ``dmflow --help`` lists them."""

    def command(self, name: str, help: str, *arguments: Argument) -> Callable:
        """Register the decorated function as command ``name`` with these arguments."""

        def register(run: Callable[[argparse.Namespace], Any]) -> Callable[[argparse.Namespace], Any]:
            self.append(Command(name, help, arguments, run))
            return run

        return register

    def add_to(self, sub: argparse._SubParsersAction, *, group: str) -> None:
        """Add every command as a subparser of ``sub``; ``group`` heads each command's description."""
        for c in self:
            p = sub.add_parser(c.name, help=c.help, description=f"{c.help[0].upper()}{c.help[1:]}. {group}")
            for a in c.arguments:
                p.add_argument(*a.flags, **a.options)
            p.set_defaults(func=c.run)


def json_section(text: str) -> dict:
    """A config section given on the command line as one JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg} at character {exc.pos}): {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object {{...}} is needed, not {text[:80]!r}")
    return value


def schema_default(section: str, key: str | None = None) -> Any:
    """The schema's default of config key ``section.key`` (or of a top-level key ``section``)."""
    return defaults()[section] if key is None else defaults(section)[key]
