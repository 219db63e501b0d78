"""The live-conversion scenario on a real VM: the project's main proof, and what
``retrofit rehearse --vm`` runs for operators.

A fresh copy-on-write overlay of a lab image boots → retrofit goes in from its
``.deb`` → data is written to /home, /var/lib and /etc → ``retrofit preflight`` →
``retrofit convert --yes`` on the live ``/`` → reboot (the new deployment boots once on
trial and ``retrofit-health.service`` confirms it) → booted checks (``ostree=`` on
the command line, read-only /usr, the booted deployment in ``ostree admin status``,
nothing failed, data intact) → ``retrofit kargs --append quiet`` → reboot →
``retrofit install htop`` → reboot (htop runs, the karg kept) → ``retrofit rollback``
→ reboot (htop gone, data intact) → ``retrofit upgrade`` against a package repository
served in the guest that carries a newer retrofit (the same package, version bumped)
→ reboot (the new version is in the deployment's /usr and ``/usr/bin/retrofit status``
runs from it) → an initramfs setting changed in /etc, ``retrofit initramfs --rebuild``
→ reboot (the trial boot of the rebuilt image is confirmed). Before that the
"previous system (before retrofit)" menu entry is booted once (the old system, data
visible), and at the end ``retrofit cleanup --old-system`` removes it and the
deployment boots again.

``fallbacks=True`` adds the automatic fallbacks: a trial deployment whose health
script fails, and one whose PID 1 exits (kernel panic, ``panic=`` reboots): each
time the machine comes back on the previous deployment by itself and
``retrofit status`` reports the failed trial.

Every step is timed; the report is rehearse's (``retrofit/rehearse.py``): a table
and JSON.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import re
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrofit.errors import RetrofitError
from retrofit.log import log
from retrofit.rehearse import step
from retrofit.run import Result
from retrofit.vm.image import ImageSpec
from retrofit.vm.machine import Machine

DATA = {
    "/home/vagrant/notes.txt": "written before the conversion\n",
    "/var/lib/dbdemo/table.db": "row1|alpha\nrow2|beta\n",
    "/etc/retrofit-demo.conf": "setting = kept\n",
}
MOTD_LINE = "retrofit demo motd"
PROBE = "cat /proc/sys/kernel/random/boot_id /proc/cmdline; /usr/bin/retrofit status --json"
SETTLE_TIMEOUT = 1200.0


@dataclass
class Settled:
    """A boot whose trial has settled."""

    boot_id: str
    cmdline: str
    trial: dict[str, Any]
    health: dict[str, Any] | None
    status: dict[str, Any]


REPO_DIR = "/var/local/retrofit-rehearse-repo"
REPO_PORT = 8765
REPO_LIST = "/etc/apt/sources.list.d/retrofit-rehearse.list"
BUMP_SUFFIX = "+rehearse1"


def bump_deb(deb: Path, out_dir: Path, suffix: str = BUMP_SUFFIX) -> tuple[Path, str]:
    """The same package with ``suffix`` appended to its version (what an upgrade of
    retrofit itself looks like to apt); returns the new file and version."""
    from retrofit.run import run

    tree = out_dir / "tree"
    run(["dpkg-deb", "-R", str(deb), str(tree)])
    control = tree / "DEBIAN/control"
    text = control.read_text()
    fields = dict(re.findall(r"^(Package|Version|Architecture): (.*)$", text, flags=re.M))
    new = fields["Version"] + suffix
    control.write_text(re.sub(r"^Version: .*$", f"Version: {new}", text, count=1, flags=re.M))
    out = out_dir / f"{fields['Package']}_{new}_{fields['Architecture']}.deb"
    run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)])
    return out, new


def repo_index(debs: list[Path], out_dir: Path) -> list[Path]:
    """A flat apt repository's ``Packages`` and ``Release`` for ``debs`` (which sit
    beside them), the way dpkg-scanpackages and apt-ftparchive write them."""
    from retrofit.run import output

    def sha256(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    stanzas = []
    for deb in debs:
        data = deb.read_bytes()
        control = output(["dpkg-deb", "-f", str(deb)]).rstrip("\n")
        stanzas.append(
            f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\nSHA256: {sha256(data)}\n"
        )
    packages = "\n".join(stanzas).encode()
    (out_dir / "Packages").write_bytes(packages)
    release = (
        "Origin: retrofit-rehearse\nLabel: retrofit-rehearse\nSuite: rehearse\n"
        f"Codename: rehearse\nDate: {email.utils.formatdate(usegmt=True)}\n"
        f"SHA256:\n {sha256(packages)} {len(packages)} Packages\n"
    )
    (out_dir / "Release").write_text(release)
    return [out_dir / "Packages", out_dir / "Release"]


def serve_repo(vm: Machine, files: list[Path]) -> str:
    """Put ``files`` into a repository directory in the guest, serve it over HTTP on
    the guest's loopback (a transient unit) and add it to apt's sources; returns the
    source line. :func:`unserve_repo` takes it away again."""
    vm.cmd(f"sudo mkdir -p {REPO_DIR}")
    for f in files:
        vm.copy_in(f, f"{REPO_DIR}/{f.name}")
    vm.cmd(
        "sudo systemd-run --unit=retrofit-rehearse-repo --property=DynamicUser=yes"
        f" /usr/bin/python3 -m http.server --bind 127.0.0.1 --directory {REPO_DIR}"
        f" {REPO_PORT}"
    )
    url = f"http://127.0.0.1:{REPO_PORT}/"
    vm.settle(
        f"python3 -c 'import urllib.request; urllib.request.urlopen(\"{url}Release\")'",
        lambda r: r.returncode == 0,
        timeout=60,
        what="the rehearsal repository",
    )
    line = f"deb [trusted=yes] {url} ./"
    vm.cmd(f"sudo tee {REPO_LIST} >/dev/null", input=(line + "\n").encode())
    return line


def unserve_repo(vm: Machine) -> None:
    vm.cmd(
        f"sudo rm -f {REPO_LIST}; sudo systemctl stop retrofit-rehearse-repo;"
        f" sudo rm -rf {REPO_DIR}",
        check=False,
    )


def write_data(vm: Machine) -> str:
    for path, text in DATA.items():
        owner = "vagrant" if path.startswith("/home/vagrant") else "root"
        vm.cmd(
            f"sudo mkdir -p $(dirname {path}) && sudo tee {path} >/dev/null"
            f" && sudo chown {owner}: {path}",
            input=text.encode(),
        )
    vm.cmd(f"echo '{MOTD_LINE}' | sudo tee -a /etc/motd >/dev/null; sync")
    return f"{len(DATA) + 1} files in /home, /var/lib and /etc"


def check_data(vm: Machine) -> str:
    for path, text in DATA.items():
        got = vm.cmd(f"sudo cat {path}", check=False).stdout
        assert got == text, f"{path}: {got!r}, expected {text!r}"
    assert MOTD_LINE in vm.cmd("cat /etc/motd").stdout, "the /etc/motd edit is gone"
    return "home, /var/lib and /etc data intact"


def booted_checks(vm: Machine) -> str:
    cmdline = vm.cmd("cat /proc/cmdline").stdout
    assert "ostree=" in cmdline, f"not booted into a deployment: {cmdline}"
    opts = vm.cmd("findmnt -no OPTIONS /usr", check=False).stdout
    ro = "ro" in opts.split(",") or (
        vm.cmd("sudo touch /usr/.retrofit-rw-probe", check=False).returncode != 0
    )
    assert ro, f"/usr is writable: {opts!r}"
    status = vm.cmd("sudo ostree admin status").stdout
    assert any(line.startswith("* ") for line in status.splitlines()), status
    vm.system_state(timeout=300)
    failed = vm.failed_units()
    assert failed == [], f"failed units: {failed}"
    return "ostree= on the cmdline, /usr read-only, booted deployment, no failed units"


def settled(vm: Machine, old_boot: str, want: str = "good", off: str | None = None) -> Settled:
    """Wait, across the reboots the guest makes by itself, for a boot other than
    ``old_boot`` whose trial has settled (not ``pending``); ``off``: a karg that must
    not be on the command line (a failed trial's marker: back on the previous one)."""

    def parse(r: Result) -> Settled | None:
        try:
            boot, cmdline, rest = r.stdout.split("\n", 2)
            st = json.loads(rest)
        except ValueError:
            return None
        t = st.get("trial") or {}
        if boot == old_boot or t.get("state") in (None, "pending"):
            return None
        if off is not None and off in cmdline.split():
            return None
        return Settled(boot, cmdline, t, st.get("health"), st)

    r = vm.settle(
        PROBE, lambda r: parse(r) is not None, timeout=SETTLE_TIMEOUT, what=f"{want} trial"
    )
    got = parse(r)
    assert got is not None
    assert got.trial.get("state") == want, f"trial {got.trial.get('state')}: {got.trial}"
    return got


def reboot_settled(vm: Machine, want: str = "good", off: str | None = None) -> Settled:
    return settled(vm, vm.request_reboot(), want, off)


def _trial_text(g: Settled) -> str:
    t = g.trial
    return f"trial {t['state']} ({t.get('kind')}, {t.get('title')})" + (
        f": {t['reason']}" if t.get("reason") else ""
    )


def run(
    vm: Machine,
    deb: Path,
    report: dict[str, Any],
    *,
    fallbacks: bool = True,
) -> dict[str, Any]:
    """Run the scenario on a freshly booted ``vm``; steps go into ``report`` (the
    first failing step ends the run)."""
    boots: list[float] = []
    report.setdefault("boots", boots)

    def timed(fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a reboot (and its wait) and record how long it took."""
        t = time.monotonic()
        out = fn(*args, **kwargs)
        boots.append(round(time.monotonic() - t, 1))
        return out

    def install() -> str:
        return vm.install_deb(deb)

    def preflight() -> str:
        r = vm.cmd("sudo retrofit preflight --json", timeout=300, check=False)
        data = json.loads(r.stdout)
        assert r.returncode == 0, f"preflight blocks: {r.stdout[-500:]}"
        return f"{len(data.get('checks', []))} checks, none blocking"

    def convert() -> str:
        r = vm.cmd("sudo retrofit convert --yes", timeout=2400)
        tail = [ln for ln in r.stderr.splitlines() if ln.strip()][-1:]
        return tail[0][:120] if tail else "converted"

    def menu() -> str:
        out = vm.cmd(
            r"grep -E '^(menuentry|submenu)' /boot/grub/grub.cfg", sudo=True, check=False
        ).stdout
        assert "(ostree:0)" in out, f"no deployment in the GRUB menu:\n{out}"
        assert "previous system (before retrofit)" in out, f"the old system left the menu:\n{out}"
        return f"{out.count('menuentry')} menu entries, old system kept"

    def trial_convert() -> str:
        g = timed(reboot_settled, vm)
        assert g.trial.get("kind") == "convert", g.trial
        assert g.health and g.health.get("ok"), f"health: {g.health}"
        return _trial_text(g)

    def status() -> str:
        st = vm.status_json()
        assert st.get("booted") == st["deployments"][0]["checksum"], st
        rc = vm.cmd("test -x /usr/bin/retrofit && /usr/bin/retrofit --version", check=False)
        assert rc.returncode == 0, "retrofit is not in the deployment's /usr"
        return f"booted {str(st['booted'])[:12]}, {len(st['deployments'])} deployment(s)"

    def previous_system() -> str:
        menu = vm.cmd("cat /boot/grub/grub.cfg", sudo=True).stdout
        found = re.search(r"^menuentry '(previous system \(before retrofit\)[^']*)'", menu, re.M)
        title = found.group(1) if found else ""
        assert title, "no 'previous system (before retrofit)' entry in the menu"
        vm.cmd(
            "mount -o remount,bind,rw /boot && grub-reboot "
            + shlex.quote(title)
            + "; rc=$?; mount -o remount,bind,ro /boot; exit $rc",
            sudo=True,
        )
        timed(vm.reboot)
        cmdline = vm.cmd("cat /proc/cmdline").stdout
        assert "ostree=" not in cmdline, f"not the old system: {cmdline}"
        check_data(vm)
        timed(vm.reboot)
        back = vm.cmd("cat /proc/cmdline").stdout
        assert "ostree=" in back, f"did not come back to the deployment: {back}"
        return f"{title!r} booted (no ostree=), data visible; back on the deployment"

    def kargs() -> str:
        vm.cmd("sudo retrofit kargs --append quiet", timeout=900)
        g = timed(reboot_settled, vm)
        assert "quiet" in g.cmdline.split(), f"quiet not on the cmdline: {g.cmdline}"
        return "quiet on /proc/cmdline; " + _trial_text(g)

    def layer() -> str:
        vm.cmd("sudo retrofit install htop", timeout=1800)
        g = timed(reboot_settled, vm)
        assert "quiet" in g.cmdline.split(), f"the karg did not survive install: {g.cmdline}"
        ver = vm.cmd("htop --version").stdout.strip().splitlines()[0]
        return f"{ver}; quiet kept; " + _trial_text(g)

    def rollback() -> str:
        vm.cmd("sudo retrofit rollback", timeout=900)
        timed(vm.reboot)
        gone = vm.cmd("command -v htop", check=False).returncode != 0
        assert gone, "htop is still there after the rollback"
        return "htop gone"

    def upgrade() -> str:
        with tempfile.TemporaryDirectory(prefix="retrofit-rehearse-") as tmp:
            newer, version = bump_deb(deb, Path(tmp))
            repo = Path(tmp) / "repo"
            repo.mkdir()
            newer = newer.rename(repo / newer.name)
            serve_repo(vm, [newer, *repo_index([newer], repo)])
        try:
            r = vm.cmd("sudo retrofit upgrade", timeout=2400)
        finally:
            unserve_repo(vm)
        g = timed(reboot_settled, vm)
        assert g.trial.get("kind") == "deploy", g.trial
        got = vm.cmd("dpkg-query -W -f '${Version}' retrofit").stdout.strip()
        assert got == version, f"retrofit {got} in the deployment, expected {version}"
        st = vm.cmd("/usr/bin/retrofit status", sudo=True, check=False)
        assert st.returncode == 0, f"/usr/bin/retrofit status failed: {st.stderr[-300:]}"
        assert "quiet" in g.cmdline.split(), f"the karg did not survive upgrade: {g.cmdline}"
        changed = [ln for ln in r.stdout.splitlines() if "retrofit" in ln][:1]
        return (
            f"retrofit {version} in /usr; /usr/bin/retrofit status runs; "
            + (changed[0].strip() + "; " if changed else "")
            + _trial_text(g)
        )

    def initramfs() -> str:
        # a setting the image is built from, in the generator's own /etc place
        dracut = vm.cmd("test -x /usr/bin/dracut", check=False).returncode == 0
        conf, text = (
            ("/etc/dracut.conf.d/90-rehearse.conf", 'compress="gzip"\n')
            if dracut
            else ("/etc/initramfs-tools/conf.d/90-rehearse.conf", "COMPRESS=gzip\n")
        )
        vm.cmd(f"sudo tee {conf} >/dev/null", input=text.encode())
        rows = json.loads(vm.cmd("sudo retrofit initramfs --json").stdout)["kernels"]
        assert rows and rows[0]["stale"], f"the changed setting went unnoticed: {rows}"
        r = vm.cmd("sudo retrofit initramfs --rebuild", timeout=1800)
        assert "initramfs rebuilt" in r.stderr, r.stderr[-500:]
        g = timed(reboot_settled, vm)
        rows = json.loads(vm.cmd("sudo retrofit initramfs --json").stdout)["kernels"]
        assert not rows[0]["stale"], rows
        booted_checks(vm)
        return f"{rows[0]['generator']}: rebuilt for {conf}; " + _trial_text(g)

    def fail_health() -> str:
        vm.cmd(
            "sudo install -D -m 0755 /dev/stdin /etc/retrofit/health.d/50-rehearse",
            input=b"#!/bin/sh\necho 'rehearse: injected failure' >&2\nexit 1\n",
        )
        vm.cmd("sudo retrofit kargs --append retrofit.rehearse=health", timeout=900)
        g = timed(reboot_settled, vm, want="failed", off="retrofit.rehearse=health")
        vm.cmd("sudo rm /etc/retrofit/health.d/50-rehearse")
        assert "50-rehearse" in g.trial.get("reason", ""), g.trial
        return "back on the previous deployment; " + _trial_text(g)

    def fail_init() -> str:
        vm.cmd("sudo retrofit kargs --append init=/bin/false", timeout=900)
        g = timed(reboot_settled, vm, want="failed", off="init=/bin/false")
        assert "never reported" in g.trial.get("reason", ""), g.trial
        text = vm.cmd("sudo retrofit status").stdout
        assert "Trial boot: failed" in text, text
        return "back on the previous deployment; " + _trial_text(g)

    def cleanup_old() -> str:
        out = vm.cmd("sudo retrofit cleanup --old-system", timeout=900).stdout
        freed = out.strip().splitlines()[-2:] if out.strip() else []
        menu = vm.cmd("grep -E '^(menuentry|submenu)' /boot/grub/grub.cfg", sudo=True).stdout
        assert "previous system" not in menu, f"the old system is still in the menu:\n{menu}"
        assert vm.cmd("test -e /sysroot/usr", check=False).returncode != 0, "old /usr is there"
        timed(vm.reboot)
        booted_checks(vm)
        check_data(vm)
        return "; ".join(freed) + "; booted the deployment again, data intact"

    steps: list[tuple[str, Any]] = [
        ("install retrofit .deb", install),
        ("write data", lambda: write_data(vm)),
        ("preflight", preflight),
        ("convert (live /)", convert),
        ("GRUB menu", menu),
        ("reboot: conversion trial", trial_convert),
        ("booted checks", lambda: booted_checks(vm)),
        ("data intact", lambda: check_data(vm)),
        ("retrofit status", status),
        ("previous system entry boots", previous_system),
        ("kargs --append quiet + reboot", kargs),
        ("install htop + reboot", layer),
        ("rollback + reboot", rollback),
        ("data intact after rollback", lambda: check_data(vm)),
        ("upgrade (newer retrofit) + reboot", upgrade),
        ("initramfs setting + rebuild + reboot", initramfs),
    ]
    if fallbacks:
        steps += [
            ("fallback: failing health script", fail_health),
            ("fallback: broken init", fail_init),
            ("data intact after fallbacks", lambda: check_data(vm)),
        ]
    steps.append(("cleanup --old-system + reboot", cleanup_old))
    for name, fn in steps:
        if not step(report, name, fn):
            log.error("rehearse: %s failed; the steps after it did not run", name)
            break
    return report


def build_deb(src: Path) -> Path:
    """``make deb`` in a source checkout; the newest ``dist/retrofit_*_all.deb``."""
    from retrofit.run import run

    if not (src / "debian/control").exists() or not (src / "Makefile").exists():
        raise RetrofitError(
            f"rehearse: {src} is not a retrofit source checkout: no .deb to install in the VM",
            hint="pass --deb retrofit_VERSION_all.deb (built by 'make deb' in a checkout)",
        )
    run(["make", "-C", str(src), "deb"])
    debs = sorted((src / "dist").glob("retrofit_*_all.deb"), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise RetrofitError("rehearse: 'make deb' produced no .deb", hint=f"see {src}/dist")
    return debs[-1]


def rehearse_vm(
    deb: Path,
    *,
    image: Path | None = None,
    firmware: str = "bios",
    spec: ImageSpec | None = None,
    keep: bool = False,
    fallbacks: bool = True,
) -> dict[str, Any]:
    """Boot a fresh VM (an overlay of ``image``, default the cached lab image of
    ``spec`` or of ``firmware``) and run the scenario; the VM goes unless ``keep``."""
    from retrofit.vm import qemu
    from retrofit.vm.image import build_image

    if spec is not None:
        firmware = spec.firmware

    report: dict[str, Any] = {"apiVersion": 1, "target": "vm", "ok": True, "steps": []}
    total = time.monotonic()
    vm: Machine | None = None
    holder: dict[str, Any] = {}

    def img() -> str:
        holder["image"] = image or build_image(spec or ImageSpec(firmware=firmware))
        return str(holder["image"])

    def boot() -> str:
        holder["vm"] = qemu.boot(image=holder["image"], firmware=firmware, keep_on_failure=keep)
        m: Machine = holder["vm"]
        return f"{m.backend.describe()}, ssh after {m.boot_seconds or 0:.0f}s"

    try:
        if step(report, "lab image", img) and step(report, "boot fresh VM", boot):
            vm = holder["vm"]
            report["box"] = str(holder["image"])
            run(vm, deb, report, fallbacks=fallbacks)
    finally:
        report["seconds"] = round(time.monotonic() - total, 1)
        if vm is not None:
            if not report["ok"]:
                try:
                    report["diagnostics"] = vm.diagnostics(lines=60)
                except RetrofitError as exc:
                    report["diagnostics"] = f"(none: {exc})"
            if keep:
                qemu.release(vm.backend)
                report["kept"] = f"{vm.backend.describe()}, ssh -p {vm.backend.ssh_target().port}"
            else:
                vm.destroy()
    return report
