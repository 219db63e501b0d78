"""The ``retrofit`` command line. stdout carries data; logs and progress go to stderr.

Exit codes: 0 success, 1 operational failure (one line and a hint), 2 usage error,
77 nothing to do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from retrofit import __version__
from retrofit import log as logmod
from retrofit.errors import RetrofitError, UsageError

DESCRIPTION = """\
Convert a Debian or Ubuntu server, in place, into an image-based system managed by
OSTree (read-only /usr, /etc carried forward by a three-way merge, persistent /var,
atomic upgrades with rollback), and manage it afterwards.

Run 'retrofit preflight' first: it lists every check the conversion needs. Then
'retrofit convert --dry-run' prints the plan, and 'retrofit convert --yes' runs it.
--sysroot DIR works on a tree or mounted image instead of the running system."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with one line and a hint
        raise UsageError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")


def _print_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def cmd_preflight(args: argparse.Namespace) -> int:
    from convert import preflight
    from retrofit import hostfacts

    root = Path(args.root or args.sysroot)
    if not root.is_dir():
        raise RetrofitError(
            f"preflight: {root} is not a directory",
            hint="--root names the installed system to check",
        )
    facts = hostfacts.gather(root)
    checks = preflight.run_checks(facts)
    if args.json:
        out = preflight.to_json(checks)
        out["facts"] = facts.to_dict()
        _print_json(out)
    else:
        print(preflight.render(checks))
        failed = preflight.blocking(checks)
        print(
            f"\n{len(failed)} blocking failure(s)"
            if failed
            else "\nready to convert: retrofit convert --dry-run shows the plan"
        )
    return 1 if preflight.blocking(checks) else 0


def _convert_root(args: argparse.Namespace) -> Path:
    root = Path(args.root) if args.root else Path(args.sysroot)
    if (
        args.root
        and args.sysroot != "/"
        and Path(args.root).resolve() != Path(args.sysroot).resolve()
    ):
        raise UsageError(
            "convert: --root and --sysroot name different directories",
            hint="the installed system is converted where it is: give one of them",
        )
    if not root.is_dir():
        raise RetrofitError(
            f"convert: {root} is not a directory",
            hint="--root/--sysroot names the installed system to convert",
        )
    return root


def cmd_convert(args: argparse.Namespace) -> int:
    from convert import engine

    root = _convert_root(args)
    if args.revert:
        result = engine.revert(root)
    else:
        result = engine.convert(
            root, yes=args.yes, dry_run=args.dry_run, usr_mode="adopt" if args.adopt_usr else "copy"
        )
    if args.json:
        _print_json(result)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from retrofit import status

    st = status.collect(Path(args.sysroot))
    if args.json:
        _print_json(st)
    else:
        print(status.render(st))
    return 0


def cmd_rehearse(args: argparse.Namespace) -> int:
    from retrofit import rehearse

    if args.box or args.vm:
        report = _rehearse_vm(args)
    else:
        report = rehearse.rehearse_tree(
            workdir=Path(args.workdir) if args.workdir else None, keep=args.keep
        )
    if args.json:
        _print_json(report)
    else:
        print(rehearse.render(report))
    return 0 if report["ok"] else 1


# The built-in boxes: lab images built from Debian's mirror and cached.
BOXES: dict[str, dict[str, Any]] = {
    "bios": {},
    "uefi": {"firmware": "uefi"},
    "bios-boot": {"separate_boot": True},
    "uefi-boot": {"firmware": "uefi", "separate_boot": True},
    "bios-dracut": {"initramfs": "dracut"},
}


def _rehearse_vm(args: argparse.Namespace) -> dict[str, Any]:
    from retrofit.vm import scenario
    from retrofit.vm.image import ImageSpec

    box = args.box or "bios"
    image, spec = None, None
    if box in BOXES:
        spec = ImageSpec(**BOXES[box])
    else:
        image = Path(box)
        if not image.is_file():
            raise UsageError(
                f"rehearse: --box {box}: neither a built-in box nor an image file",
                hint=f"use one of {', '.join(BOXES)} or the path of a qcow2 disk image",
            )
    deb = Path(args.deb) if args.deb else scenario.build_deb(Path(__file__).resolve().parents[1])
    return scenario.rehearse_vm(
        deb,
        image=image,
        firmware=args.firmware,
        spec=spec,
        keep=args.keep,
        fallbacks=not args.no_fallbacks,
    )


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="retrofit",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"retrofit {__version__}")
    p.add_argument(
        "--sysroot",
        default="/",
        metavar="DIR",
        help="physical root to operate on (default: /, the running system)",
    )
    p.add_argument("--debug", action="store_true", help="log commands; tracebacks on errors")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    # --sysroot and --debug are accepted before or after the verb.
    common = Parser(add_help=False)
    common.add_argument(
        "--sysroot",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="physical root to operate on (default: /)",
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log commands; tracebacks on errors",
    )
    real_add = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return real_add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign,assignment]

    sp = sub.add_parser(
        "preflight",
        help="check whether this system can be converted",
        description="Run every check the conversion needs and list each "
        "with pass/fail/warn and a reason. Exit 1 if any check blocks.",
    )
    sp.add_argument(
        "--root", metavar="DIR", help="installed system to check (default: the sysroot)"
    )
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_preflight)

    sp = sub.add_parser(
        "convert",
        help="convert this system into an OSTree deployment",
        description="Convert the installed system in place: commit /usr and /etc into "
        "/ostree/repo, move /var and user data into the stateroot by rename, deploy. "
        "Phases are journaled in /ostree/retrofit/journal.json: run convert again to "
        "resume after an interruption, or --revert to undo. Failpoints: "
        "RETROFIT_FAILPOINTS=<phase>[:before].",
    )
    sp.add_argument(
        "--root", metavar="DIR", help="installed system to convert (default: the sysroot)"
    )
    sp.add_argument("--config", metavar="FILE", help="YAML plan overrides (reserved)")
    sp.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    sp.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    sp.add_argument(
        "--adopt-usr",
        action="store_true",
        help="hardlink /usr files into the repository instead of copying them "
        "(no extra disk; the old system must not modify /usr files in place "
        "afterwards: see docs/convert.md)",
    )
    sp.add_argument(
        "--revert", action="store_true", help="undo a finished or interrupted conversion"
    )
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    sp.set_defaults(func=cmd_convert)

    sp = sub.add_parser(
        "status",
        help="show deployments and the conversion state",
        description="Deployments (booted, pending, rollback) with their "
        "base and layered packages, and the conversion journal.",
    )
    sp.add_argument("--json", action="store_true", help="versioned JSON (apiVersion 1)")
    sp.set_defaults(func=cmd_status)

    try:
        from retrofit import etc_cmd
    except ImportError:  # pragma: no cover - the module lands separately
        etc_cmd = None  # type: ignore[assignment]
    if etc_cmd is not None:
        sp = sub.add_parser(
            "etc",
            help="the /etc three-way merge: diff and merge",
            description="Inspect local /etc changes and run the merge engine on directories.",
        )
        etc_cmd.add_arguments(sp)
        sp.set_defaults(func=etc_cmd.main)

    from retrofit import layer_cmd

    layer_cmd.register(sub, add_parser)

    from retrofit import boot_cmd

    boot_cmd.register(sub, add_parser)

    sp = sub.add_parser(
        "rehearse",
        help="rehearse the conversion on a throwaway Debian system or VM",
        description="Without --vm/--box: build (or reuse) a reference Debian 12 server "
        "tree with mmdebstrap, convert it with --sysroot, verify the result and print a "
        "report (a minute or two). With --vm or --box: boot a throwaway Debian 12 VM under "
        "QEMU (KVM when usable, TCG otherwise), install retrofit's .deb in it, write data, "
        "convert the live system, reboot into the deployment (a trial boot the health "
        "check confirms), then kargs, install htop, rollback, an upgrade to a newer "
        "retrofit package, an initramfs rebuild after an /etc change, and the automatic "
        "fallbacks "
        "from a failing health check and a broken init, each across real reboots "
        "(about 20 minutes under TCG). The report lists each step with its result and "
        "time, as a table or --json.",
    )
    sp.add_argument("--workdir", metavar="DIR", help="where to put the throwaway tree")
    sp.add_argument(
        "--keep", action="store_true", help="keep the converted tree, or leave the VM running"
    )
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.add_argument("--vm", action="store_true", help="rehearse on a VM (the default box)")
    sp.add_argument(
        "--box",
        metavar="B",
        help=f"rehearse on a VM booted from box B: {', '.join(BOXES)} (built and cached "
        "from Debian's mirror; -boot: /boot on its own partition; -dracut: a dracut "
        "initramfs; default bios) or the path of a qcow2 disk image",
    )
    sp.add_argument(
        "--firmware",
        choices=("bios", "uefi"),
        default="bios",
        help="firmware for a --box image file (default bios)",
    )
    sp.add_argument(
        "--deb",
        metavar="FILE",
        help="the retrofit .deb to install in the VM (default: 'make deb' in this checkout)",
    )
    sp.add_argument(
        "--no-fallbacks",
        action="store_true",
        help="skip the two automatic-fallback trials (saves four boots)",
    )
    sp.set_defaults(func=cmd_rehearse)
    return p


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    logmod.setup(debug=debug)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        logmod.setup(debug=args.debug, quiet=args.quiet)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args))
    except RetrofitError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"retrofit: {exc.message}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("retrofit: interrupted\n")
        return 130
    except BrokenPipeError:  # e.g. `retrofit status --json | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
