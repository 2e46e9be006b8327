"""The project's user-facing exception."""


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
