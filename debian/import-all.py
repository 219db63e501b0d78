"""Build-time check: every module of the distribution imports, and the entry point exists.

Run by pybuild's test step from the build directory (see debian/rules).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

PACKAGES = ("retrofit", "convert", "dpkg_layer", "grub")

failed = []
count = 0
for name in PACKAGES:
    pkg = importlib.import_module(name)
    count += 1
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{name}."):
        if info.name.endswith(".__main__"):  # runs the CLI when imported
            continue
        try:
            importlib.import_module(info.name)
            count += 1
        except Exception as exc:  # report them all, then fail
            failed.append(f"{info.name}: {type(exc).__name__}: {exc}")

cli = importlib.import_module("retrofit.cli")
if not callable(getattr(cli, "main", None)):
    failed.append("retrofit.cli: no callable main() (the console script's entry point)")

for line in failed:
    print(f"import-all: {line}", file=sys.stderr)
print(f"import-all: {count} modules imported, {len(failed)} failures", file=sys.stderr)
sys.exit(1 if failed else 0)
