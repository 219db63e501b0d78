#!/usr/bin/env python3
"""Benchmark the /etc merge on a real Debian /etc, and libostree's deploy beside it.

    sudo .venv/bin/python bench/etc_merge.py [--runs 5] [--no-ostree] [--keep]

BASE is a copy (``cp -a``) of this machine's /etc, padded past 1,000 regular files
with real text from /usr/share/doc. LOCAL gets 50 local changes (edits, chmods,
additions, deletions, a new user); NEW gets upstream changes (edits, some on the same
files as LOCAL, a few overlapping, additions, removals, a new system user). The merge
is timed over several runs into a fresh OUT each time.

With ``ostree`` installed and root, the same trees are also deployed by libostree:
commit BASE as usr/etc, deploy, replace the deployment's /etc with LOCAL, commit NEW,
and time the second ``ostree admin deploy`` (checkout, /etc merge, boot entries and
fsyncs: an upper bound of libostree's merge, not the merge alone).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrofit.etc_merge import etc_diff, is_binary, merge_etc  # noqa: E402
from retrofit.run import run, which  # noqa: E402

ACCOUNTS = {"passwd", "group", "shadow", "gshadow", "subuid", "subgid"}


def cp_a(src: Path, dst: Path) -> None:
    run(["cp", "-a", "--", str(src), str(dst)])


def regular_files(root: Path) -> list[Path]:
    out = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                out.append(p)
    return sorted(out)


def pad(base: Path, target: int) -> int:
    """Copy real text files from /usr/share/doc until base has ``target`` files."""
    have = len(regular_files(base))
    dest = base / "bench-doc"
    dest.mkdir(exist_ok=True)
    for src in sorted(Path("/usr/share/doc").glob("*/copyright")):
        if have >= target:
            break
        shutil.copy2(src, dest / f"{src.parent.name}.copyright")
        have += 1
    return have


def text_files(root: Path) -> list[Path]:
    out = []
    for p in regular_files(root):
        rel = p.relative_to(root)
        if rel.parts[0] in ACCOUNTS or p.stat().st_size > 65536:
            continue
        data = p.read_bytes()
        if data.count(b"\n") >= 4 and not is_binary(data):
            out.append(rel)
    return out


def add_line(p: Path, line: str, at_end: bool) -> None:
    data = p.read_bytes()
    p.write_bytes(data + line.encode() if at_end else line.encode() + data)


def make_changes(base: Path, local: Path, new: Path) -> dict[str, int]:
    rng = random.Random(42)
    texts = text_files(base)
    pick = rng.sample(texts, 95)
    n = {"local": 0, "upstream": 0}

    def bump(side: str) -> None:
        n[side] += 1

    # local: 30 edits at the end, 6 chmod, 6 additions, 6 deletions, 1 user = 49 + 1 below
    for i, rel in enumerate(pick[:30]):
        add_line(local / rel, f"# local tweak {i}\n", at_end=True)
        bump("local")
    for rel in pick[30:36]:
        os.chmod(local / rel, 0o600)
        bump("local")
    for i in range(6):
        (local / f"local-{i}.conf").write_text(f"added locally {i}\n")
        bump("local")
    for rel in pick[36:42]:
        (local / rel).unlink()
        bump("local")
    (local / "bench-local.d").mkdir()
    (local / "bench-local.d/x.conf").write_text("x\n")
    bump("local")
    with open(local / "passwd", "a") as f:
        f.write("benchuser:x:4000:4000::/home/benchuser:/bin/bash\n")
    with open(local / "group", "a") as f:
        f.write("benchuser:x:4000:\n")
    bump("local")

    # upstream: 20 edits at the start of locally edited files (clean merges), 3 at the
    # end of locally edited files (conflicts), 25 edits elsewhere, 10 additions,
    # 5 removals, 1 system user
    for i, rel in enumerate(pick[:20]):
        add_line(new / rel, f"# upstream change {i}\n", at_end=False)
        bump("upstream")
    for i, rel in enumerate(pick[20:23]):
        add_line(new / rel, f"# upstream change at the end {i}\n", at_end=True)
        bump("upstream")
    for i, rel in enumerate(pick[45:70]):
        add_line(new / rel, f"# upstream change {i}\n", at_end=False)
        bump("upstream")
    for i in range(10):
        (new / f"upstream-{i}.conf").write_text(f"shipped {i}\n")
        bump("upstream")
    for rel in pick[70:75]:
        (new / rel).unlink()
        bump("upstream")
    with open(new / "passwd", "a") as f:
        f.write("_benchd:x:990:990::/nonexistent:/usr/sbin/nologin\n")
    with open(new / "group", "a") as f:
        f.write("_benchd:x:990:\n")
    bump("upstream")
    return n


def time_ours(
    base: Path, local: Path, new: Path, work: Path, runs: int
) -> tuple[list[float], list[float]]:
    times, cpu = [], []
    for i in range(runs):
        out = work / f"out-{i}"
        t0, c0 = time.perf_counter(), time.process_time()
        report = merge_etc(base, local, new, out)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if i == 0:
            counts = report.to_dict()["counts"]
            shown = {k: v for k, v in counts.items() if v}
            print(f"report: {shown}")
        shutil.rmtree(out)
    return times, cpu


def time_ostree(base: Path, local: Path, new: Path, work: Path) -> tuple[float, Path]:
    """Seconds of the second deploy, and the /etc libostree merged."""
    sysroot, repo = work / "sysroot", work / "sysroot/ostree/repo"
    sysroot.mkdir()
    run(["ostree", "admin", "init-fs", str(sysroot)])
    run(["ostree", "admin", "os-init", f"--sysroot={sysroot}", "debian"])
    tree = work / "tree"
    (tree / "usr/lib/modules/6.1.0").mkdir(parents=True)
    (tree / "usr/lib/modules/6.1.0/vmlinuz").write_bytes(b"kernel")
    (tree / "usr/lib/modules/6.1.0/initramfs.img").write_bytes(b"initramfs")
    shutil.copy2("/usr/lib/os-release", tree / "usr/lib/os-release")
    deploy = ["ostree", "admin", "deploy", f"--sysroot={sysroot}", "--os=debian", "bench"]

    def commit(etc: Path) -> None:
        shutil.rmtree(tree / "usr/etc", ignore_errors=True)
        cp_a(etc, tree / "usr/etc")
        run(["ostree", f"--repo={repo}", "commit", "-b", "bench", f"--tree=dir={tree}"])

    commit(base)
    run(deploy)
    (dep,) = (sysroot / "ostree/deploy/debian/deploy").glob("*.0")
    for child in (dep / "etc").iterdir():  # the deployment root is immutable: keep etc/
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    run(["cp", "-a", "--", f"{local}/.", str(dep / "etc")])
    commit(new)
    t0 = time.perf_counter()
    run(deploy)
    elapsed = time.perf_counter() - t0
    (merged,) = set((sysroot / "ostree/deploy/debian/deploy").glob("*.0")) - {dep}
    return elapsed, merged / "etc"


def compare(ostree_etc: Path, base: Path, local: Path, new: Path, work: Path) -> None:
    """Where our /etc differs from libostree's: only where we merged or conflicted."""
    report = merge_etc(base, local, new, work / "ours")
    d = etc_diff(ostree_etc, work / "ours")
    ours = {i.path for i in report.merged + report.conflict}
    copies = {i.new_copy for i in report.conflicts}
    other = sorted((set(d.modified) - ours) | (set(d.added) - copies) | set(d.deleted))
    print(
        f"vs libostree's /etc: {len(d.modified)} files differ in content "
        f"({len(set(d.modified) & ours)} are our merges), {len(d.added)} conflict copies, "
        f"{len(d.metadata)} metadata-only; unexplained: {other or 'none'}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-ostree", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--workdir", default="/var/tmp", help="where to build the trees")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (the trees keep owners and modes)", file=sys.stderr)
        return 2
    logging.getLogger("retrofit").setLevel(logging.ERROR)  # no per-conflict warnings
    work = Path(tempfile.mkdtemp(prefix="retrofit-bench-", dir=args.workdir))
    try:
        base, local, new = work / "base", work / "local", work / "new"
        cp_a(Path("/etc"), base)
        files = pad(base, 1050)
        cp_a(base, local)
        cp_a(base, new)
        changes = make_changes(base, local, new)
        entries = sum(len(d) + len(f) for _, d, f in os.walk(base))
        print(f"trees: {entries} entries, {files} regular files in BASE")
        print(f"changes: {changes['local']} local, {changes['upstream']} upstream")
        times, cpu = time_ours(base, local, new, work, args.runs)
        print(
            f"retrofit merge_etc in {args.workdir}: wall median {statistics.median(times):.3f} s "
            f"(min {min(times):.3f}, max {max(times):.3f}), CPU median "
            f"{statistics.median(cpu):.3f} s, over {len(times)} runs"
        )
        if not args.no_ostree and which("ostree"):
            t, ostree_etc = time_ostree(base, local, new, work)
            print(f"libostree 'ostree admin deploy' (checkout + merge + boot entries): {t:.3f} s")
            compare(ostree_etc, base, local, new, work)
        if args.keep:
            print(f"work directory kept: {work}")
    finally:
        if not args.keep:
            for dep in work.glob("sysroot/ostree/deploy/*/deploy/*.0"):
                run(["chattr", "-i", str(dep)])  # ostree makes deployments immutable
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
