"""The project's user-facing exception, and the checks that raise it for bad options."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Iterator

#: Names that become folder names or MLflow names (``--run-name``, ``--register-as``): letters, digits,
#: ``_ . -``, starting with a letter, digit or ``_``, at most 100 characters (no ``/``, no ``..`` alone,
#: no quotes).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


class NowcastError(Exception):
    """An error the user caused and can fix: the message says what is wrong and what to do.

    The CLI prints it as one line and exits non-zero (``exit_code``, default 1;
    2 means bad usage).
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def check(ok: bool, message: str) -> None:
    """A usage error (NowcastError, exit code 2) with ``message`` unless ``ok``."""
    if not ok:
        raise NowcastError(message, exit_code=2)


#: The largest whole number a config field takes (2**53: every int up to it is exact as a float too).
MAX_INT = 2**53


class Validated:
    """The one way configs are validated: every config dataclass derives from this.

    On construction, every field is coerced or refused by its annotation (:func:`check_types`), then
    each ``(ok, message)`` of :meth:`rules` is checked in turn (:func:`check`: the first broken rule is
    a usage error). ``rules`` is a generator, so a rule may rely on the ones before it.
    """

    def __post_init__(self) -> None:
        check_types(self)
        for ok, message in self.rules():
            check(ok, message)

    def rules(self) -> Iterator[tuple[bool, str]]:
        """``(ok, message)`` per rule, in order (none by default)."""
        return iter(())


def name_rule(value: str | None, option: str) -> tuple[bool, str]:
    """The rule (for :meth:`Validated.rules`) that ``value`` is None or matches :data:`NAME_PATTERN`."""
    return (
        value is None or (isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None),
        f"{option} {value!r} is not a safe name: use letters, digits, '_', '.' and '-' (at most 100, "
        "not starting with '.' or '-')",
    )


def check_name(value: str | None, option: str) -> None:
    """Usage error (see :func:`check`) unless ``value`` is None or matches :data:`NAME_PATTERN`."""
    check(*name_rule(value, option))


def check_types(config) -> None:
    """Coerce or refuse every field of the dataclass ``config`` by its annotation, in place (usage errors
    as in :func:`check`): ``int`` takes whole numbers up to :data:`MAX_INT` (``3``, ``3.0``, ``"3"``;
    not ``2.5``, ``True`` or ``1e100``),
    ``float`` any finite number or numeric text (YAML reads ``1e-3`` as text), ``bool`` only booleans,
    ``str`` text (a path becomes text); ``None`` only where the annotation allows it. A value that already
    has one of the types of a union (``str | int``, ``str | Path``) is kept. Other annotations are left
    alone."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        kinds = [k for k in typing.get_args(hint) if k is not type(None)] if union else [hint]
        if value is None:
            check(union and type(None) in typing.get_args(hint), f"{f.name} must be set, got None")
            continue
        if len(kinds) > 1 and any(_is_a(value, kind) for kind in kinds):
            continue
        for kind in (int, float, bool, str):
            if kind in kinds:
                object.__setattr__(config, f.name, _coerce(f.name, value, kind))  # frozen ones too
                break


def _is_a(value, kind) -> bool:
    """``isinstance`` for plain classes, where a bool is not an int (other annotations: False)."""
    if not isinstance(kind, type):
        return False
    return isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)


def _coerce(name: str, value, kind: type):
    if kind is bool:
        check(isinstance(value, bool), f"{name} must be true or false, got {value!r}")
        return value
    if kind is str:
        check(isinstance(value, (str, os.PathLike)), f"{name} must be text, got {value!r}")
        return os.fspath(value)
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    check(math.isfinite(number), f"{name} must be a number, got {value!r}")
    if kind is float:
        return number
    check(number.is_integer(), f"{name} must be a whole number, got {value!r}")
    check(abs(number) <= MAX_INT, f"{name} must be a whole number of at most {MAX_INT}, got {value!r}")
    return int(number)
