"""The project's user-facing exception, and the checks that raise it for bad options."""
from __future__ import annotations

import re

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
    """The one way configs are validated: every stage's config dataclass calls this in ``__post_init__``
    for each rule, and a broken rule is a usage error (NowcastError, exit code 2) with ``message``."""
    if not ok:
        raise NowcastError(message, exit_code=2)


def check_name(value: str | None, option: str) -> None:
    """Usage error (see :func:`check`) unless ``value`` is None or matches :data:`NAME_PATTERN`."""
    check(value is None or (isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None),
          f"{option} {value!r} is not a safe name: use letters, digits, '_', '.' and '-' (at most 100, "
          "not starting with '.' or '-')")
