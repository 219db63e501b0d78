"""``retrofit kargs``, ``retrofit initramfs`` and ``retrofit health``: the boot-chain
verbs."""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from retrofit.errors import NothingToDo, UsageError

AddParser = Callable[..., argparse.ArgumentParser]


def _name(arg: str) -> str:
    return arg.split("=", 1)[0]


def edit_kargs(
    current: Sequence[str],
    append: Sequence[str] = (),
    delete: Sequence[str] = (),
    replace: Sequence[str] = (),
) -> list[str]:
    """rpm-ostree's rules: ``append`` adds an argument (an identical one is not added
    twice); ``delete`` removes ``NAME=VALUE`` exactly, or every ``NAME``/``NAME=...``
    when given a bare name; ``replace NAME=VALUE`` replaces every argument called NAME
    (it must exist)."""
    out = list(current)
    for d in delete:
        if "=" in d:
            if d not in out:
                raise UsageError(f"kargs: {d!r} is not set", hint="retrofit kargs lists them")
            out.remove(d)
        else:
            if not any(_name(a) == d for a in out):
                raise UsageError(f"kargs: {d!r} is not set", hint="retrofit kargs lists them")
            out = [a for a in out if _name(a) != d]
    for r in replace:
        if "=" not in r:
            raise UsageError(
                f"kargs: --replace needs NAME=VALUE, not {r!r}", hint="--delete NAME removes it"
            )
        name = _name(r)
        idx = [i for i, a in enumerate(out) if _name(a) == name]
        if not idx:
            raise UsageError(
                f"kargs: {name!r} is not set, nothing to replace", hint=f"--append {r}"
            )
        out[idx[0]] = r
        out = [a for i, a in enumerate(out) if i not in idx[1:]]
    for a in append:
        if a not in out:
            out.append(a)
    return out


def cmd_kargs(args: argparse.Namespace) -> int:
    from dpkg_layer import origin as originmod
    from dpkg_layer import system
    from retrofit.deploy import deploy_with_merge

    verb = "kargs"
    sysm = system.load(Path(args.sysroot), verb)
    src = sysm.booted or sysm.default
    current = shlex.split(src.kargs)
    if not (args.append or args.delete or args.replace):
        if args.json:
            print(json.dumps({"deployment": src.name, "kargs": current}, indent=2))
        else:
            print(" ".join(shlex.quote(a) for a in current))
        return 0
    new = edit_kargs(current, args.append, args.delete, args.replace)
    if new == current:
        raise NothingToDo(f"kargs: {src.name} already has exactly these arguments")
    with system.locked(sysm, verb), system.workdir(sysm) as work:
        origin = work / "origin"
        origin.write_text(originmod.render_keyfile(src.origin))
        result = deploy_with_merge(
            sysm.sysroot, sysm.stateroot, src.checksum, kargs=new, origin_file=origin
        )
    print(f"New deployment {result.deployment.name} with kernel arguments:")
    print("  " + " ".join(shlex.quote(a) for a in new))
    if str(args.sysroot) == "/":
        print("Reboot to use it (its first boot is a trial: see retrofit status).")
    return 0


def initramfs_report(sysm: Any) -> list[dict[str, Any]]:
    """Per kernel of the default deployment: the generator and whether its initramfs
    fits the running /etc."""
    from dpkg_layer import ostreeops
    from grub import initramfs

    repo = sysm.repo()
    commit = sysm.default.checksum
    out = []
    kver = repo.commit_metadata(commit).get("ostree.linux")
    if kver:
        stamp = ostreeops.read_file(repo, commit, f"usr/lib/modules/{kver}/{initramfs.STAMP}")
        try:
            gen = json.loads(stamp or b"{}").get("generator")
        except ValueError:
            gen = None
        out.append(
            {
                "kernel": str(kver),
                "generator": gen,
                "recorded": stamp is not None,
                "stale": initramfs.stale_etc(stamp, sysm.default_root / "etc"),
            }
        )
    return out


def cmd_initramfs(args: argparse.Namespace) -> int:
    from dpkg_layer import engine, system

    verb = "initramfs"
    if args.force and not args.rebuild:
        raise UsageError(
            f"{verb}: --force goes with --rebuild", hint="retrofit initramfs --rebuild --force"
        )
    sysm = system.load(Path(args.sysroot), verb)
    if not args.rebuild:
        rows = initramfs_report(sysm)
        if args.json:
            print(json.dumps({"deployment": sysm.default.name, "kernels": rows}, indent=2))
            return 0
        for r in rows:
            state = (
                f"out of date: {r['stale']}"
                if r["stale"]
                else "up to date with /etc"
                if r["recorded"]
                else "no build record (older conversion): --rebuild --force makes one"
            )
            print(f"{r['kernel']}: {r['generator'] or '?'}, {state}")
        return 0
    with system.locked(sysm, verb):
        out = engine.rebuild_initramfs(sysm, verb, force=args.force)
    from retrofit.layer_cmd import _report

    return _report(args, out, verb)


def cmd_health(args: argparse.Namespace) -> int:
    from retrofit import health

    sysroot = root = Path(args.sysroot)
    cfg = health.Config.load(root)
    if args.timeout is not None:
        cfg.timeout = args.timeout
    if args.boot:
        out = health.at_boot(sysroot, root, cfg)
        checks, trial = out.checks, out.trial
    else:
        checks, trial = health.check(root, cfg), None
        health.record(sysroot, checks, health.booted_deployment(sysroot))
    ok = all(c.ok for c in checks)
    if args.json:
        doc: dict[str, Any] = {"ok": ok, "checks": [c.__dict__ for c in checks], "trial": trial}
        print(json.dumps(doc, indent=2))
    else:
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
        if trial is not None:
            print(f"trial boot: {trial.get('state')} {trial.get('reason') or ''}".rstrip())
    if args.boot and out.reboot:
        health.reboot()
    return 0 if ok else 1


def register(sub: Any, add_parser: AddParser) -> None:
    sp = add_parser(
        "kargs",
        help="show or change the kernel arguments (as a new deployment)",
        description="Without options, print the kernel arguments of the booted (else the "
        "default) deployment. With options, deploy the same commit again with the changed "
        "arguments; later deployments (install, upgrade, ...) carry them forward. The new "
        "deployment's first boot is a trial (see retrofit health).",
    )
    sp.add_argument("--append", action="append", default=[], metavar="NAME[=VALUE]",
                    help="add an argument (repeatable)")  # fmt: skip
    sp.add_argument("--delete", action="append", default=[], metavar="NAME[=VALUE]",
                    help="remove NAME=VALUE, or every NAME when no value is given")  # fmt: skip
    sp.add_argument("--replace", action="append", default=[], metavar="NAME=VALUE",
                    help="replace the value of an existing argument")  # fmt: skip
    sp.add_argument("--json", action="store_true", help="print the arguments as JSON")
    sp.set_defaults(func=cmd_kargs)

    sp = add_parser(
        "initramfs",
        help="show or rebuild the deployment's initramfs",
        description="Without options, say for each kernel of the default deployment "
        "which generator built its initramfs and whether that still fits the "
        "configuration in /etc (/etc/initramfs-tools, or /etc/dracut.conf.d, and "
        "/etc/modprobe.d). --rebuild makes a new deployment of the same tree with the "
        "initramfs rebuilt by the tree's own generator (initramfs-tools or dracut, "
        "with OSTree support), when it is out of date (--force: always). install, "
        "upgrade and the other layering verbs rebuild it by themselves when its "
        "configuration, the generator or its hooks changed. The new deployment's "
        "first boot is a trial (see retrofit health).",
    )
    sp.add_argument("--rebuild", action="store_true",
                    help="rebuild it when out of date, as a new deployment")  # fmt: skip
    sp.add_argument("--force", action="store_true", help="with --rebuild: even when up to date")
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    sp.set_defaults(func=cmd_initramfs)

    sp = add_parser(
        "health",
        help="check this boot's health; at boot, confirm or fail a trial boot",
        description="Healthy: systemd reached 'running' or 'degraded' within the timeout, "
        "no unit of the required list failed (/etc/retrofit/health.conf, default "
        "ssh.service) and every executable in /etc/retrofit/health.d/ exits 0. With "
        "--boot (retrofit-health.service), a pending trial boot is confirmed (the new "
        "deployment becomes the default) or failed (the previous one becomes the default "
        "again and the machine reboots into it). Exit 0 healthy, 1 not.",
    )
    sp.add_argument("--boot", action="store_true",
                    help="the boot-time run: settle a pending trial boot")  # fmt: skip
    sp.add_argument("--timeout", type=float, metavar="SEC",
                    help="how long to wait for start-up to finish (default 900)")  # fmt: skip
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    sp.set_defaults(func=cmd_health)
