"""``retrofit etc``: the /etc merge engine and the local-changes view, on the CLI.

``retrofit etc merge BASE LOCAL NEW OUT [--json]`` runs :func:`merge_etc` on four
directories and prints what it did (a table, or the report as JSON). Exit 0 when the
merge is clean, 1 when there are conflicts, 2 on a usage error. With conflicts, the
conflict record is written into OUT so that ``etc diff`` and ``status`` show them.

``retrofit etc diff [--json]`` lists the local changes of /etc against the deployment's
/usr/etc, plus the unresolved conflicts of the last merge. It looks at the booted
deployment, or, for a ``--sysroot`` that is not booted, at the default deployment
under ``<sysroot>/ostree/deploy``; ``--usr-etc DIR --etc DIR`` name the two
directories directly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from retrofit.errors import RetrofitError, UsageError
from retrofit.etc_merge import (
    CONFLICT_RECORD,
    EtcDiff,
    MergeReport,
    etc_diff,
    merge_etc,
    read_conflict_record,
    write_conflict_record,
)
from retrofit.log import log


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``merge`` and ``diff`` sub-commands to the ``etc`` verb's parser."""
    sub = parser.add_subparsers(dest="etc_command", metavar="COMMAND")
    m = sub.add_parser(
        "merge",
        help="three-way merge of /etc into a new directory",
        description="Merge BASE (old /usr/etc), LOCAL (old /etc) and NEW (new /usr/etc) "
        "into OUT (absent or empty). Exit 0 clean, 1 with conflicts.",
    )
    m.add_argument("base", metavar="BASE", help="the old deployment's /usr/etc")
    m.add_argument("local", metavar="LOCAL", help="the old deployment's /etc")
    m.add_argument("new", metavar="NEW", help="the new deployment's /usr/etc")
    m.add_argument("out", metavar="OUT", help="where to write the new /etc (absent or empty)")
    m.add_argument("--json", action="store_true", help="print the report as JSON")
    d = sub.add_parser(
        "diff",
        help="local /etc changes against the deployment's /usr/etc",
        description="List files added, modified and deleted in /etc compared with "
        "the deployment's /usr/etc, and the conflicts of the last merge.",
    )
    d.add_argument("--json", action="store_true", help="print JSON")
    d.add_argument("--usr-etc", dest="usr_etc", metavar="DIR", help="compare this /usr/etc ...")
    d.add_argument("--etc", dest="etc", metavar="DIR", help="... with this /etc")


def main(args: argparse.Namespace) -> int:
    command = getattr(args, "etc_command", None)
    if command == "merge":
        return _merge(args)
    if command == "diff":
        return _diff(args)
    raise UsageError(
        "etc: missing sub-command",
        hint="retrofit etc diff | retrofit etc merge BASE LOCAL NEW OUT",
    )


# ----------------------------------------------------------------------------- merge


def _merge(args: argparse.Namespace) -> int:
    base, local, new, out = (Path(p) for p in (args.base, args.local, args.new, args.out))
    for label, p in (("BASE", base), ("LOCAL", local), ("NEW", new)):
        if not p.is_dir():
            raise UsageError(f"etc merge: {label} {p} is not a directory")
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise UsageError(f"etc merge: OUT {out} exists and is not a directory")
        if any(out.iterdir()):
            raise UsageError(
                f"etc merge: OUT {out} is not empty",
                hint="give a new or empty directory; the merge never overwrites",
            )
    report = merge_etc(base, local, new, out)
    if report.conflicts:
        write_conflict_record(report, out / CONFLICT_RECORD)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(render_report(report), end="")
    n = len(report.conflicts)
    if n:
        log.warning(
            "etc merge: %d conflict%s; the local version was kept, the new one is beside "
            "it as *.retrofit-new",
            n,
            "" if n == 1 else "s",
        )
        return 1
    log.info("etc merge: clean (%d unchanged)", report.unchanged)
    return 0


def _table(rows: list[tuple[str, str, str]]) -> str:
    if not rows:
        return ""
    w0 = max(len(r[0]) for r in rows)
    w1 = min(max(len(r[1]) for r in rows), 48)
    return "".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() + "\n" for a, b, c in rows)


def render_report(report: MergeReport) -> str:
    """The merge report as a table: ACTION PATH DETAIL, then the warnings."""
    rows = [("ACTION", "PATH", "DETAIL")]
    rows += [(i.action, i.path, i.detail) for i in report.actions()]
    rows += [(i.action, i.path, i.detail) for i in report.warnings]
    text = _table(rows) if len(rows) > 1 else ""
    c = len(report.conflicts)
    text += f"{report.unchanged} unchanged, {len(report.actions())} changed, {c} conflict"
    return text + ("" if c == 1 else "s") + "\n"


# ------------------------------------------------------------------------------ diff


def find_deployment(sysroot: Path) -> Path:
    """The deployment whose /etc a verb should look at: ``/`` when ``sysroot`` is the
    booted root, else the default deployment under ``sysroot`` (the boot entry with
    the highest version, else the newest ``ostree/deploy/*/deploy/*.0``).

    Small stand-in until the shared ostree adapter offers this.
    """
    if os.path.realpath(sysroot) == "/" and os.path.exists("/run/ostree-booted"):
        return Path("/")
    best: tuple[int, Path] | None = None
    for entry in sorted((sysroot / "boot/loader/entries").glob("*.conf")):
        try:
            text = entry.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        version = re.search(r"^version\s+(\d+)", text, re.M)
        karg = re.search(r"^options\s.*?\bostree=(\S+)", text, re.M)
        if not karg:
            continue
        target = Path(os.path.realpath(sysroot / karg.group(1).lstrip("/")))
        if not target.is_dir():
            continue
        rank = int(version.group(1)) if version else 0
        if best is None or rank > best[0]:
            best = (rank, target)
    if best is not None:
        return best[1]
    found = [p for p in sysroot.glob("ostree/deploy/*/deploy/*.0") if p.is_dir()]
    if found:
        return max(found, key=lambda p: p.stat().st_mtime)
    raise RetrofitError(
        f"etc diff: no OSTree deployment found under {sysroot}",
        hint="pass --sysroot DIR for a converted system that is not booted, or "
        "--usr-etc DIR --etc DIR",
    )


def _diff(args: argparse.Namespace) -> int:
    usr_etc_arg = getattr(args, "usr_etc", None)
    etc_arg = getattr(args, "etc", None)
    if (usr_etc_arg is None) != (etc_arg is None):
        raise UsageError("etc diff: --usr-etc and --etc go together")
    if usr_etc_arg is not None and etc_arg is not None:
        usr_etc, etc = Path(usr_etc_arg), Path(etc_arg)
        for opt, p in (("--usr-etc", usr_etc), ("--etc", etc)):
            if not p.is_dir():
                raise UsageError(f"etc diff: {opt} {p} is not a directory")
    else:
        deployment = find_deployment(Path(getattr(args, "sysroot", None) or "/"))
        usr_etc, etc = deployment / "usr/etc", deployment / "etc"
    diff = etc_diff(usr_etc, etc)
    diff.conflicts = read_conflict_record(etc / CONFLICT_RECORD)
    if args.json:
        print(json.dumps(diff.to_dict(), indent=2, sort_keys=True))
    else:
        print(render_diff(diff), end="")
    return 0


def render_diff(diff: EtcDiff) -> str:
    """One line per path, ``ostree admin config-diff`` style: A added, M content
    changed, m metadata only, D deleted, S special file; then the conflicts."""
    rows: list[tuple[str, str]] = []
    rows += [("A", p) for p in diff.added]
    rows += [("M", p) for p in diff.modified]
    rows += [("m", p) for p in diff.metadata]
    rows += [("D", p) for p in diff.deleted]
    rows += [("S", p) for p in diff.special]
    rows.sort(key=lambda r: (r[1], r[0]))
    text = "".join(f"{k}    {p}\n" for k, p in rows)
    if diff.conflicts:
        text += "\nUnresolved conflicts of the last merge:\n"
        text += _table([("C", i.path, i.detail) for i in diff.conflicts])
    return text


if __name__ == "__main__":  # pragma: no cover - manual use: python -m retrofit.etc_cmd
    parser = argparse.ArgumentParser(prog="retrofit etc")
    parser.add_argument("--sysroot", default="/")
    add_arguments(parser)
    try:
        sys.exit(main(parser.parse_args()))
    except RetrofitError as e:
        print(f"retrofit: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        sys.exit(e.exit_code)
