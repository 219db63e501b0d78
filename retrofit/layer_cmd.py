"""Verbs of package layering: install, uninstall, override, upgrade, rebase,
rollback, cleanup, db. The work is in :mod:`dpkg_layer`; this module parses the
command line and prints (data on stdout, logs on stderr)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from retrofit.errors import NothingToDo, UsageError
from retrofit.log import log

AddParser = Callable[..., argparse.ArgumentParser]  # typing's: evaluated at run time (3.8)


def _print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def _lists_mode(args: argparse.Namespace) -> Any:
    from dpkg_layer.engine import ListsMode

    if getattr(args, "refresh", False) and getattr(args, "cache_only", False):
        raise UsageError("--refresh and --cache-only exclude each other")
    return ListsMode(
        refresh=getattr(args, "refresh", False), cache_only=getattr(args, "cache_only", False)
    )


def _report(args: argparse.Namespace, out: Any, verb: str) -> int:
    for note in out.notes:
        log.info("%s: note: %s", verb, note)
    if getattr(args, "json", False):
        _print_json(out.to_json())
        return 0
    if out.changes:
        print("Changes against the current default deployment:")
        for c in out.changes:
            print(f"  {c.render()}")
    else:
        print("No package changes.")
    if out.dry_run:
        print("Dry run: nothing was deployed.")
    elif out.deployed:
        print(f"Deployed {out.deployed} as the new default deployment.")
        if str(args.sysroot) == "/":
            print("Reboot to use it; 'retrofit rollback' makes the previous one the default again.")
    return 0


def _system(args: argparse.Namespace, verb: str) -> Any:
    from dpkg_layer import system

    return system.load(Path(args.sysroot), verb)


def cmd_install(args: argparse.Namespace) -> int:
    from dpkg_layer import engine, localdeb, origin, system

    verb = "install"
    files = [a for a in args.packages if localdeb.looks_like_file(a)]
    names = [a for a in args.packages if not localdeb.looks_like_file(a)]
    origin.check_names(names, verb)
    # read every file the user gave before changing anything
    debs = [localdeb.inspect(Path(f), verb) for f in files]
    sysm = _system(args, verb)
    req = sysm.requests
    removed = [n for n in names + [d.name for d in debs] if n in req.removed_base_packages]
    if removed:
        raise UsageError(
            f"{verb}: {', '.join(removed)} removed from the base by an override",
            hint=f"restore it instead: retrofit override reset {' '.join(removed)}",
        )
    clash = [d.name for d in debs if d.name in req.packages] + [
        n for n in names if n in req.local_names
    ]
    if clash:
        raise UsageError(
            f"{verb}: {', '.join(clash)} is already requested another way (archive or file)",
            hint=f"retrofit uninstall {' '.join(clash)} first",
        )
    new_names = [n for n in dict.fromkeys(names) if n not in req.packages]
    new_debs = [d for d in debs if d.request not in req.local_packages]
    if not new_names and not new_debs:
        raise NothingToDo(
            f"{verb}: already requested: {', '.join(names + [d.name for d in debs])}",
            hint="retrofit status lists the layered packages",
        )
    req = req.with_packages(new_names).with_local([d.request for d in new_debs])
    with system.locked(sysm, verb):
        out = engine.apply(
            sysm,
            req,
            verb,
            new_local=new_debs,
            explicit=new_names + [d.name for d in new_debs],
            lists=_lists_mode(args),
            dry_run=args.dry_run,
            download_only=args.download_only,
        )
    return _report(args, out, verb)


def cmd_uninstall(args: argparse.Namespace) -> int:
    from dpkg_layer import engine, origin, system

    verb = "uninstall"
    origin.check_names(args.packages, verb)
    sysm = _system(args, verb)
    req = sysm.requests
    layered = set(req.packages) | set(req.local_names)
    missing = [n for n in args.packages if n not in layered]
    if missing:
        base = engine.status_of_commit(sysm.repo(), sysm.base_checksum)
        in_base = [n for n in missing if n in base]
        if in_base:
            raise UsageError(
                f"{verb}: {', '.join(in_base)} is part of the base, not layered",
                hint=f"to remove it from this system: retrofit override remove {' '.join(in_base)}",
            )
        raise UsageError(
            f"{verb}: not a layered package: {', '.join(missing)}",
            hint="retrofit status lists the layered packages",
        )
    with system.locked(sysm, verb):
        out = engine.apply(
            sysm, req.without(args.packages), verb, lists=_lists_mode(args), dry_run=args.dry_run
        )
    return _report(args, out, verb)


def cmd_override(args: argparse.Namespace) -> int:
    from dpkg_layer import engine, origin, system

    action = getattr(args, "override_action", None)
    if action is None:
        raise UsageError("override: give an action: remove PKG... or reset [PKG...]",
                         hint="see 'retrofit override --help'")  # fmt: skip
    verb = f"override {action}"
    origin.check_names(args.packages, verb)
    sysm = _system(args, verb)
    req = sysm.requests
    if action == "remove":
        if not args.packages:
            raise UsageError(f"{verb}: give the base packages to remove")
        base = engine.status_of_commit(sysm.repo(), sysm.base_checksum)
        layered = [n for n in args.packages if n in req.packages or n in req.local_names]
        if layered:
            raise UsageError(
                f"{verb}: {', '.join(layered)} is layered, not part of the base",
                hint=f"retrofit uninstall {' '.join(layered)}",
            )
        absent = [n for n in args.packages if n not in base]
        if absent:
            raise UsageError(
                f"{verb}: not installed in the base: {', '.join(absent)}",
                hint="retrofit db diff shows what the deployments contain",
            )
        new = [n for n in args.packages if n not in req.removed_base_packages]
        if not new:
            raise NothingToDo(f"{verb}: already removed: {', '.join(args.packages)}")
        req = req.with_removals(new)
    else:
        if not req.removed_base_packages:
            raise NothingToDo(f"{verb}: no base package is removed")
        names = args.packages or None
        if names:
            unknown = [n for n in names if n not in req.removed_base_packages]
            if unknown:
                raise UsageError(
                    f"{verb}: not removed by an override: {', '.join(unknown)}",
                    hint="retrofit status lists RemovedBasePackages",
                )
        req = req.reset_removals(names)
    with system.locked(sysm, verb):
        out = engine.apply(sysm, req, verb, lists=_lists_mode(args), dry_run=args.dry_run)
    return _report(args, out, verb)


def cmd_upgrade(args: argparse.Namespace) -> int:
    from dpkg_layer import system, upgrade

    verb = "upgrade"
    if args.check and args.preview:
        raise UsageError(f"{verb}: --check and --preview exclude each other")
    sysm = _system(args, verb)
    with system.locked(sysm, verb):
        out = upgrade.upgrade(sysm, check=args.check, preview=args.preview, lists=_lists_mode(args))
    if args.check and not args.json:
        for note in out.notes:
            log.info("%s: %s", verb, note)
        print("Upgrade available." if out.changes or out.notes else "No upgrade available.")
        for c in out.changes:
            print(f"  {c.render()}")
        return 0
    return _report(args, out, verb)


def cmd_rebase(args: argparse.Namespace) -> int:
    from dpkg_layer import system, upgrade

    verb = "rebase"
    sysm = _system(args, verb)
    with system.locked(sysm, verb):
        out = upgrade.rebase(sysm, args.refspec, lists=_lists_mode(args), dry_run=args.dry_run)
    return _report(args, out, verb)


def cmd_rollback(args: argparse.Namespace) -> int:
    from dpkg_layer import admin, system

    verb = "rollback"
    sysm = _system(args, verb)
    with system.locked(sysm, verb):
        new = admin.rollback(sysm)
    refspec = new.origin_refspec or "?"
    print(f"Default deployment is now {new.name} ({refspec}).")
    if str(args.sysroot) == "/":
        print("Reboot to use it.")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from dpkg_layer import admin, system

    verb = "cleanup"
    if args.old_system:
        return _cleanup_old_system(args)
    sysm = _system(args, verb)
    with system.locked(sysm, verb):
        rep = admin.cleanup(sysm, downloads=args.downloads)
    if args.json:
        _print_json(rep.__dict__)
        return 0
    for name in rep.removed_deployments:
        print(f"removed deployment {name}")
    for name in rep.removed_local_debs:
        print(f"removed unrequested local package {name}")
    if rep.removed_downloads:
        print(f"removed {rep.removed_downloads} downloaded package(s)")
    print(f"repository objects: {rep.objects_before} -> {rep.objects_after}")
    return 0


def _cleanup_old_system(args: argparse.Namespace) -> int:
    from convert import old_system

    sysroot = Path(args.sysroot)
    live = str(args.sysroot) == "/"
    rep = old_system.remove(sysroot, live=live, force=args.force, dry_run=args.dry_run)
    if args.json:
        _print_json(rep.to_dict())
        return 0
    verb = "would remove" if rep.dry_run else "removed"
    for item in rep.items:
        print(f"{verb} {item.kind} {item.path}")
    for k in rep.kept:
        print(f"kept {k}")
    print(f"{'would free' if rep.dry_run else 'freed'} about {rep.freed_bytes // 2**20} MiB")
    if not rep.dry_run and live:
        print("The previous system (before retrofit) is no longer in the boot menu.")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from dpkg_layer import dbdiff

    if getattr(args, "db_action", None) != "diff":
        raise UsageError("db: give an action: diff [FROM TO]", hint="see 'retrofit db --help'")
    if len(args.revs) not in (0, 2):
        raise UsageError(
            "db diff: give both FROM and TO, or neither",
            hint="retrofit db diff 1 0 compares the rollback with the default",
        )
    sysm = _system(args, "db diff")
    frm, to = (args.revs[0], args.revs[1]) if args.revs else (None, None)
    a, b, changes = dbdiff.diff(sysm, frm, to)
    if args.json:
        _print_json(
            {
                "from": {"spec": a.spec, "checksum": a.checksum},
                "to": {"spec": b.spec, "checksum": b.checksum},
                "changes": [{"name": c.name, "old": c.old, "new": c.new} for c in changes],
            }
        )
    else:
        print(dbdiff.render(a, b, changes))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    """--sysroot/--debug on nested action parsers too (after 'override remove')."""
    p.add_argument("--sysroot", default=argparse.SUPPRESS, metavar="DIR",
                   help="physical root to operate on (default: /)")  # fmt: skip
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="log commands; tracebacks on errors")  # fmt: skip


def _lists_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refresh", action="store_true",
                   help="update the package lists first even if they are recent")  # fmt: skip
    p.add_argument("-C", "--cache-only", action="store_true",
                   help="do not update the package lists or download anything new")  # fmt: skip


def register(sub: Any, add_parser: AddParser) -> None:
    sp = add_parser(
        "install",
        help="layer packages (names or ./file.deb) onto the base",
        description="Add packages to the layered requests and deploy base + requests as a "
        "new default deployment (the previous one stays as the rollback). Packages are "
        "resolved with apt against the deployment's sources and dpkg database, installed "
        "by dpkg in a sandbox on a checkout of the base, and committed.",
    )
    sp.add_argument("packages", nargs="+", metavar="PKG|FILE.deb")
    sp.add_argument("--dry-run", action="store_true", help="resolve and print, change nothing")
    sp.add_argument("--download-only", action="store_true",
                    help="resolve and download into the cache, deploy nothing")  # fmt: skip
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    _lists_opts(sp)
    sp.set_defaults(func=cmd_install)

    sp = add_parser(
        "uninstall",
        help="remove layered packages",
        description="Drop packages from the layered requests and deploy the result.",
    )
    sp.add_argument("packages", nargs="+", metavar="PKG")
    sp.add_argument("--dry-run", action="store_true", help="resolve and print, change nothing")
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    _lists_opts(sp)
    sp.set_defaults(func=cmd_uninstall)

    sp = add_parser(
        "override",
        help="remove base packages from the layered tree, or undo that",
        description="'override remove PKG...' purges base packages in the layered tree; "
        "'override reset [PKG...]' restores them (all when none is named).",
    )
    ov = sp.add_subparsers(dest="override_action", metavar="ACTION")
    for action, helptext in (
        ("remove", "remove base packages from the layered tree"),
        ("reset", "restore removed base packages (all if none is named)"),
    ):
        a = ov.add_parser(action, help=helptext, description=helptext)
        a.add_argument("packages", nargs="+" if action == "remove" else "*", metavar="PKG")
        a.add_argument("--dry-run", action="store_true", help="resolve and print, change nothing")
        a.add_argument("--json", action="store_true", help="print the result as JSON")
        _lists_opts(a)
        _common(a)
    sp.set_defaults(func=cmd_override, packages=[], dry_run=False, json=False)

    sp = add_parser(
        "upgrade",
        help="upgrade the base and re-apply the layered packages",
        description="A remote base (REMOTE:REF) is pulled; a local base is upgraded here "
        "with apt-get dist-upgrade in a sandbox and committed as the new base. The "
        "layered requests are then applied on top and the result deployed.",
    )
    sp.add_argument("--check", action="store_true",
                    help="only say whether an upgrade is available (exit 77 if not)")  # fmt: skip
    sp.add_argument("--preview", action="store_true",
                    help="list the package changes, deploy nothing")  # fmt: skip
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    _lists_opts(sp)
    sp.set_defaults(func=cmd_upgrade)

    sp = add_parser(
        "rebase",
        help="switch to another base (REMOTE:REF), keeping the layered packages",
        description="Pull REMOTE:REF from an OSTree remote (or use a local REF), apply the "
        "layered requests on top of it and deploy.",
    )
    sp.add_argument("refspec", metavar="REMOTE:REF")
    sp.add_argument("--dry-run", action="store_true", help="resolve and print, change nothing")
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    _lists_opts(sp)
    sp.set_defaults(func=cmd_rebase)

    sp = add_parser(
        "rollback",
        help="make the previous deployment the default again",
        description="With a pending deployment, go back to the booted one; otherwise make "
        "the rollback deployment the default.",
    )
    sp.set_defaults(func=cmd_rollback)

    sp = add_parser(
        "cleanup",
        help="remove old deployments and unreferenced objects",
        description="Keep the default, booted and rollback deployments; remove the others, "
        "prune the repository, remove leftovers of interrupted runs and local .deb files "
        "no deployment requests.",
    )
    sp.add_argument("--downloads", action="store_true", help="also empty the download cache")
    sp.add_argument(
        "--old-system",
        action="store_true",
        help="instead: remove the pre-conversion system (its /usr, /etc, kernels and GRUB "
        "entries) once the converted system has passed a trial boot; the old /usr and /etc "
        "are renamed aside first, then deleted; convert --revert is impossible afterwards",
    )
    sp.add_argument("--dry-run", action="store_true", help="with --old-system: list what would go")
    sp.add_argument(
        "--force",
        action="store_true",
        help="with --old-system: do not require a confirmed trial boot (offline trees)",
    )
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.set_defaults(func=cmd_cleanup)

    sp = add_parser(
        "db",
        help="package databases of deployments: diff",
        description="'db diff [FROM TO]': packages added, removed and changed between two "
        "deployments (index, default/booted/rollback), refs or commits. Without arguments: "
        "booted -> pending, or rollback -> default.",
    )
    dbsub = sp.add_subparsers(dest="db_action", metavar="ACTION")
    d = dbsub.add_parser("diff", help="package changes between two deployments")
    d.add_argument("revs", nargs="*", metavar="FROM TO")
    d.add_argument("--json", action="store_true", help="print the diff as JSON")
    _common(d)
    sp.set_defaults(func=cmd_db, revs=[], json=False)
