from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from retrofit.debtree import TreeSpec, cached_tree
from retrofit.reference import LOCAL_STATE, PACKAGES, REFERENCE_TREE

# The reference tree with what the converted system needs already installed, so
# tests that are not about the install-packages phase do not download packages.
READY_TREE = TreeSpec(
    suite=REFERENCE_TREE.suite,
    packages=PACKAGES + ("ostree", "ostree-boot", "bubblewrap"),
    customize=LOCAL_STATE,
)


# Tests convert the same kernel many times: reuse its ostree-capable initramfs.
os.environ.setdefault("RETROFIT_INITRAMFS_CACHE", "/var/cache/retrofit/initramfs")


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.fspath)
        if "/tests/integration/" in path:
            item.add_marker(pytest.mark.integration)
        if "/tests/vm/" in path:
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="session")
def reference_tree() -> Path:
    if os.geteuid() != 0 or not have("mmdebstrap"):
        pytest.skip("needs root and mmdebstrap")
    return cached_tree(REFERENCE_TREE)


@pytest.fixture(scope="session")
def ready_tree() -> Path:
    if os.geteuid() != 0 or not have("mmdebstrap"):
        pytest.skip("needs root and mmdebstrap")
    return cached_tree(READY_TREE)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Deployment roots carry the immutable attribute: clear it in this run's temp
    directory so pytest (and anyone) can remove old runs."""
    import subprocess

    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    try:
        base = factory.getbasetemp()
    except Exception:
        return
    subprocess.run(["chattr", "-R", "-i", str(base)], capture_output=True, check=False)
