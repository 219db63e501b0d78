"""Errors a person can act on.

Every failure that reaches the user is a :class:`RetrofitError`: one line saying what
failed (prefixed by the phase or verb), and a hint saying what to do next. The CLI
prints ``retrofit: <message>`` and ``hint: <hint>`` and exits with ``exit_code``;
tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

from collections.abc import Sequence


class RetrofitError(Exception):
    """An operational failure: exit 1, one line, and a hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def prefixed(self, prefix: str) -> RetrofitError:
        """The same error with ``prefix: `` in front (e.g. the phase name)."""
        err = type(self).__new__(type(self))
        err.__dict__.update(self.__dict__)
        Exception.__init__(err, f"{prefix}: {self.message}")
        err.message = f"{prefix}: {self.message}"
        return err

    def __str__(self) -> str:
        return self.message


class UsageError(RetrofitError):
    """The command line is wrong: exit 2."""

    exit_code = 2


class NothingToDo(RetrofitError):
    """The request is already satisfied: exit 77 (as rpm-ostree)."""

    exit_code = 77


class CommandError(RetrofitError):
    """A subprocess failed. Carries argv, exit code or signal, and the stderr tail."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int,
        stderr: str,
        hint: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr_tail(stderr)
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exit {returncode}"
        msg = f"{self.argv[0]} failed ({how})"
        if tail:
            msg += f": {tail}"
        super().__init__(msg, hint)


def stderr_tail(stderr: str, lines: int = 3) -> str:
    """The last few non-empty lines of a command's stderr, joined with ' | '."""
    kept = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


def die(message: str, hint: str | None = None) -> RetrofitError:
    """Build an error to raise: ``raise die("...", hint="...")``."""
    return RetrofitError(message, hint)
