"""The one module that runs subprocesses (and the only importer of ``sh``).

Everything else calls :func:`run`. The environment is built explicitly (it replaces,
it does not add), stdin is empty, the command line is logged at debug level, and a
failure raises :class:`~retrofit.errors.CommandError` with argv, exit code or signal
and the stderr tail.

Works with Debian 12's ``python3-sh`` 1.14 and with sh 2.x from PyPI (2.x returns a
string unless ``_return_cmd=True``).
"""

from __future__ import annotations

import collections
import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import sh

from retrofit.errors import CommandError, RetrofitError
from retrofit.log import log

StrPath = Union[str, "os.PathLike[str]"]

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SH2 = int(str(getattr(sh, "__version__", "1")).split(".")[0]) >= 2


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment a child gets: nothing inherited but what is listed."""
    env = {
        "PATH": BASE_PATH,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        "HOME": os.environ.get("HOME", "/root"),
    }
    for keep in ("TMPDIR", "http_proxy", "https_proxy", "no_proxy"):
        if keep in os.environ:
            env[keep] = os.environ[keep]
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def which(tool: str) -> str | None:
    return shutil.which(tool, path=BASE_PATH)


def require_tool(tool: str, purpose: str, package: str | None = None) -> str:
    path = which(tool)
    if path is None:
        raise RetrofitError(
            f"could not find '{tool}', which is required to {purpose}",
            hint=f"install it: apt-get install --no-install-recommends {package or tool}",
        )
    return path


def run(
    argv: Sequence[StrPath],
    *,
    ok: Sequence[int] = (0,),
    input: bytes | str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: StrPath | None = None,
    stream: bool = False,
    hint: str | None = None,
) -> Result:
    """Run ``argv`` and return its captured output.

    ``stream=True`` copies the child's stdout and stderr to our stderr as it runs
    (for long work such as mmdebstrap or apt) while still keeping the stderr tail
    for the error message.
    """
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("empty argv")
    log.debug("+ %s", shlex.join(args))
    exe = args[0] if "/" in args[0] else which(args[0])
    if exe is None:
        raise RetrofitError(
            f"could not find '{args[0]}'", hint="install the package that provides it"
        )
    data: bytes = input.encode() if isinstance(input, str) else (input or b"")
    kwargs: dict[str, Any] = {
        "_env": base_env(env),
        "_ok_code": list(ok),
        "_in": data,
        "_tty_out": False,
        "_truncate_exc": False,
    }
    if cwd is not None:
        kwargs["_cwd"] = os.fspath(cwd)
    if _SH2:
        kwargs["_return_cmd"] = True
    tail: collections.deque[str] = collections.deque(maxlen=40)
    if stream:

        def _copy(line: Any) -> None:
            text = line.decode(errors="replace") if isinstance(line, bytes) else str(line)
            tail.append(text)
            sys.stderr.write(text)
            sys.stderr.flush()

        kwargs["_out"] = _copy
        kwargs["_err"] = _copy
    try:
        proc = sh.Command(exe)(*args[1:], **kwargs)
    except sh.ErrorReturnCode as exc:
        err = exc.stderr.decode(errors="replace") if exc.stderr else "".join(tail)
        code = int(exc.exit_code)
        if code in ok:  # sh raises for signals even when they are listed in _ok_code
            out = "" if stream else (exc.stdout or b"").decode(errors="replace")
            return Result(args, code, out, err)
        raise CommandError(args, code, err, hint=hint) from None
    out = "" if stream else proc.stdout.decode(errors="replace")
    err = "".join(tail) if stream else proc.stderr.decode(errors="replace")
    return Result(args, int(proc.exit_code), out, err)


def output(argv: Sequence[StrPath], **kwargs: Any) -> str:
    """stdout of ``run(argv)``."""
    return run(argv, **kwargs).stdout
