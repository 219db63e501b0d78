"""Build small real .deb packages for tests (dpkg-deb --build)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from retrofit.run import run


def build_deb(
    workdir: Path,
    name: str,
    *,
    version: str = "1.0",
    files: Mapping[str, str] | None = None,
    postinst: str | None = None,
    depends: str | None = None,
    conflicts: str | None = None,
) -> Path:
    root = workdir / f"{name}-pkg"
    (root / "DEBIAN").mkdir(parents=True)
    control = [
        f"Package: {name}",
        f"Version: {version}",
        "Architecture: all",
        "Maintainer: retrofit tests <tests@example.invalid>",
        f"Description: retrofit test package {name}",
    ]
    if depends:
        control.append(f"Depends: {depends}")
    if conflicts:
        control.append(f"Conflicts: {conflicts}")
    (root / "DEBIAN/control").write_text("\n".join(control) + "\n")
    if postinst is not None:
        p = root / "DEBIAN/postinst"
        p.write_text(postinst)
        p.chmod(0o755)
    for path, text in (files or {}).items():
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    out = workdir / f"{name}_{version}_all.deb"
    run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)])
    os.sync()
    return out
