"""The conversion plan: a pure function of the host facts.

It is stored in the journal when the conversion starts, so a resumed or reverted
conversion works from the same plan even though the tree has changed since.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from retrofit import layout
from retrofit.hostfacts import HostFacts
from retrofit.log import human_size

PHASES = (
    "install-packages",
    "prepare-repo",
    "commit",
    "move-data",
    "deploy",
    "bootloader",
    "finalize",
)


@dataclass(frozen=True)
class Move:
    source: str  # relative to the root
    target: str  # relative to the root
    link: str  # symlink left at source ("" for none)
    size: int = 0


@dataclass(frozen=True)
class Plan:
    root: str
    live: bool
    os_id: str
    version_id: str
    codename: str
    arch: str
    stateroot: str
    ref: str
    kargs: tuple[str, ...]
    kernels: tuple[dict[str, Any], ...]
    missing_packages: tuple[str, ...]
    data_moves: tuple[Move, ...]
    state_moves: tuple[Move, ...]
    commit_bytes: int
    needed_bytes: int
    free_bytes: int
    update_grub: bool
    usr_mode: str = "copy"  # "copy" | "adopt" (hardlink /usr files into the repository)
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        d = dict(d)
        d["kargs"] = tuple(d["kargs"])
        d["kernels"] = tuple(d["kernels"])
        d["missing_packages"] = tuple(d["missing_packages"])
        d["data_moves"] = tuple(Move(**m) for m in d["data_moves"])
        d["state_moves"] = tuple(Move(**m) for m in d["state_moves"])
        return cls(**d)

    def render(self) -> str:
        what = "the running system" if self.live else "offline tree"
        need = self.needed_bytes if self.usr_mode == "copy" else self.needed_bytes // 20
        sr = f"ostree/deploy/{self.stateroot}"
        lines = [
            f"Conversion plan for {self.root} ({what})",
            f"  system:     {self.os_id} {self.version_id} ({self.codename}), {self.arch}",
            f"  base ref:   {self.ref}",
            f"  stateroot:  {self.stateroot}",
            f"  kernel:     {', '.join(k['version'] for k in self.kernels)}",
            f"  kargs:      {' '.join(self.kargs) or '(none)'}",
            f"  space:      needs {human_size(need)}, {human_size(self.free_bytes)} free",
            "",
            "Phases:",
        ]
        descr = {
            "install-packages": (
                f"install {', '.join(self.missing_packages)} with apt"
                + (" (sandboxed in the tree)" if not self.live else "")
                if self.missing_packages
                else "nothing to install (already present)"
            ),
            "prepare-repo": f"create the bare repository /ostree/repo and stateroot {sr}",
            "commit": f"commit /usr, /etc as /usr/etc, package state and kernel(s) "
            f"({human_size(self.commit_bytes)}) as {self.ref}"
            + (" — /usr adopted by hardlink, no copy" if self.usr_mode == "adopt" else ""),
            "move-data": "move by rename (no copy) and leave symlinks for the old system",
            "deploy": "deploy the commit; its /etc is the current /etc, its /var the moved /var",
            "bootloader": "regenerate the GRUB menu (ostree-boot's 15_ostree); the old "
            "system stays in the menu"
            if self.update_grub
            else "skipped (offline tree: boot entries are written as BLS files in /boot/loader)",
            "finalize": "record the conversion; clean up the staging area",
        }
        for i, name in enumerate(PHASES, 1):
            lines.append(f"  {i}. {name:<17} {descr[name]}")
            if name == "move-data":
                for m in self.data_moves + self.state_moves:
                    link = f"   (symlink {m.link})" if m.link else ""
                    size = f" {human_size(m.size)}" if m.size else ""
                    lines.append(f"       /{m.source} -> /{m.target}{size}{link}")
        return "\n".join(lines)


def make_plan(f: HostFacts, usr_mode: str = "copy") -> Plan:
    assert f.arch is not None
    stateroot = f.os_id
    sr_var = f"ostree/deploy/{stateroot}/var"
    moves = [Move("var", sr_var, f"ostree/deploy/{stateroot}/var", 0)]
    sizes = {d.path: d.size for d in f.data_dirs}
    exists = {d.path: d.exists and not d.is_symlink for d in f.data_dirs}
    for mv in layout.DATA_MOVES:
        if exists.get(mv.source):
            moves.append(Move(mv.source, f"{sr_var}/{mv.target}", mv.link, sizes[mv.source]))
    state = [
        Move(f"{sr_var}/{m.var_path}", m.usr_path, f"/{m.usr_path}")
        for m in layout.STATE_MOVES
        if m.var_path in f.package_state_dirs
    ]
    missing = tuple(p for p in layout.REQUIRED_PACKAGES if p not in f.installed)
    return Plan(
        root=f.root,
        live=f.live,
        os_id=f.os_id,
        version_id=f.version_id,
        codename=f.codename,
        arch=f.arch,
        stateroot=stateroot,
        ref=layout.base_ref(f.os_id, f.codename, f.arch),
        kargs=f.kargs,
        kernels=tuple(k.__dict__ for k in f.kernels),
        missing_packages=missing,
        data_moves=tuple(moves),
        state_moves=tuple(state),
        commit_bytes=f.usr_bytes + f.etc_bytes + f.kernel_bytes,
        needed_bytes=f.needed_bytes,
        free_bytes=f.free_bytes,
        update_grub=f.live,
        usr_mode=usr_mode,
    )
