"""Run the conversion: preflight, plan, then the phases under the journal.

- Nothing changes until preflight passed and the plan was printed (and confirmed).
- Each phase: ``<name>:before`` failpoint, journal "started", apply, ``<name>``
  failpoint, journal "done".
- Re-running after an interruption resumes: a phase that had started is undone and
  applied again (its undo is safe after a partial apply); a phase whose result is
  already there is recorded as done without running.
- ``--revert`` undoes every started phase in reverse order, then drops the journal.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from convert import preflight
from convert.journal import Journal
from convert.phases import PHASE_CLASSES
from convert.plan import PHASES, Plan, make_plan
from retrofit import failpoints, hostfacts, layout
from retrofit.errors import NothingToDo, RetrofitError, UsageError
from retrofit.log import log


@contextmanager
def locked(root: Path) -> Iterator[None]:
    state = root / layout.STATE_DIR
    try:
        state.mkdir(parents=True, exist_ok=True)
        f = open(state / ".lock", "w")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise RetrofitError(
            f"convert: cannot write {state}: {exc.strerror}",
            hint="the root must be writable (is it mounted read-only?)",
        ) from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrofitError(
                f"another retrofit convert is running on {root}",
                hint="wait for it to finish",
            ) from None
        yield


def refuse(checks: list[preflight.Check]) -> RetrofitError:
    first = preflight.blocking(checks)[0]
    more = len(preflight.blocking(checks)) - 1
    msg = f"preflight: {first.reason}"
    if more:
        msg += f" (and {more} more blocking check{'s' if more > 1 else ''}: retrofit preflight)"
    return RetrofitError(msg, first.hint)


def confirm(plan: Plan, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(
            "convert: refusing to change the system without confirmation",
            hint="review the plan with --dry-run, then run again with --yes",
        )
    sys.stderr.write("Proceed with the conversion? [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise RetrofitError("convert: cancelled, nothing was changed")


def convert(root: Path, *, yes: bool, dry_run: bool, usr_mode: str = "copy") -> dict[str, object]:
    root = root.resolve()
    journal = Journal.load(root)
    if journal is not None and journal.state == "complete":
        raise RetrofitError(
            f"convert: {root} is already converted (journal {layout.JOURNAL} is complete)",
            hint="use the day-two verbs instead: retrofit status, install, upgrade, rollback",
        )
    if journal is None:
        facts = hostfacts.gather(root)
        checks = preflight.run_checks(facts, usr_mode)
        if preflight.blocking(checks):
            raise refuse(checks)
        for ch in checks:
            if ch.status == preflight.WARN:
                log.warning("preflight: %s: %s", ch.name, ch.reason)
        plan = make_plan(facts, usr_mode)
        print(plan.render(), file=sys.stderr if not dry_run else sys.stdout)
        if dry_run:
            return {"dry_run": True, "plan": plan.to_dict()}
        confirm(plan, yes)
        created = not (root / "ostree").exists()
        with locked(root):
            journal = Journal.create(root, plan, created)
            return _run_phases(journal)
    # resume
    if os.geteuid() != 0:
        raise RetrofitError(
            f"convert: running as uid {os.geteuid()}, not root",
            hint="run it as root: sudo retrofit ...",
        )
    plan = journal.plan
    if dry_run:
        print(plan.render())
        print("\n(an interrupted conversion: convert resumes it, convert --revert undoes it)")
        return {"dry_run": True, "plan": plan.to_dict()}
    log.info("convert: resuming the interrupted conversion of %s", root)
    with locked(root):
        return _run_phases(journal)


def _run_phases(journal: Journal) -> dict[str, object]:
    plan = journal.plan
    timings: dict[str, float] = {}
    total = time.monotonic()
    for name in PHASES:
        phase = PHASE_CLASSES[name](plan, journal)
        status = journal.status(name)
        if status == "done":
            continue
        if status == "started":
            log.info("%s: interrupted last time; undoing the partial work first", name)
            try:
                phase.undo()
            except RetrofitError as exc:
                raise RetrofitError(f"convert: {name}: {exc.message}", exc.hint) from None
        elif phase.done():
            # nothing to do, but the boundary is still a failpoint
            failpoints.hit(f"{name}:before")
            log.info("%s: already done", name)
            failpoints.hit(name)
            journal.finish(name, 0.0)
            continue
        failpoints.hit(f"{name}:before")
        log.info("%s: starting", name)
        start = time.monotonic()
        journal.start(name)
        try:
            phase.apply()
        except RetrofitError as exc:
            raise RetrofitError(
                f"convert: {name}: {exc.message}",
                exc.hint
                or "fix the cause and run convert again to resume, or convert --revert to undo",
            ) from None
        except OSError as exc:
            raise RetrofitError(
                f"convert: {name}: {exc}",
                hint="fix the cause and run convert again to resume, or convert --revert to undo",
            ) from None
        failpoints.hit(name)
        timings[name] = time.monotonic() - start
        journal.finish(name, timings[name])
        log.info("%s: done in %.1fs", name, timings[name])
    journal.set_state("complete")
    elapsed = time.monotonic() - total
    log.info(
        "convert: complete in %.1fs; deployment of %s in stateroot %s",
        elapsed,
        plan.ref,
        plan.stateroot,
    )
    return {
        "converted": True,
        "seconds": round(elapsed, 3),
        "phases": timings,
        "commit": journal.recorded("commit", "checksum"),
        "ref": plan.ref,
    }


def revert(root: Path) -> dict[str, object]:
    root = root.resolve()
    journal = Journal.load(root)
    if journal is None:
        raise NothingToDo(
            f"convert --revert: no conversion journal in {root}", hint="nothing to revert"
        )
    from convert import old_system

    if old_system.removed(root):
        raise RetrofitError(
            "convert --revert: the old system was removed by 'retrofit cleanup --old-system'",
            hint="there is nothing left to revert to; retrofit rollback picks another deployment",
        )
    if os.path.exists("/run/ostree-booted") and root == Path("/"):
        raise RetrofitError(
            "convert --revert: the running system is booted from the converted deployment",
            hint="boot the previous system (before retrofit) first, then revert from it",
        )
    plan = journal.plan
    with locked(root):
        journal.set_state("reverting")
        for name in reversed(PHASES):
            if journal.status(name) == "pending":
                continue
            log.info("%s: undo", name)
            try:
                PHASE_CLASSES[name](plan, journal).undo()
            except RetrofitError as exc:
                raise RetrofitError(
                    f"convert --revert: {name}: {exc.message}",
                    exc.hint or "run convert --revert again",
                ) from None
            journal.undone(name)
        created = bool(journal.data.get("created_ostree_dir"))
        journal.remove()
    state = root / layout.STATE_DIR
    for leftover in (state / ".lock",):
        if leftover.exists():
            leftover.unlink()
    if state.exists() and not any(state.iterdir()):
        state.rmdir()
    if created and (root / "ostree").exists() and not any((root / "ostree").iterdir()):
        (root / "ostree").rmdir()
    log.info("convert --revert: %s is back to its state before the conversion", root)
    return {"reverted": True}
