"""Make ``apt install``, ``apt upgrade`` and ``dpkg -i`` on a converted system fail
with a message naming the retrofit verb, instead of writing into a read-only /usr
(or, worse, into the running deployment's tree).

Three files go into the conversion commit (the converter adds them): an apt.conf.d
snippet (``DPkg::Pre-Invoke``), a dpkg.cfg.d snippet (``pre-invoke=``), and the
script both call. They act only on a booted OSTree system (``/run/ostree-booted``)
and only when ``RETROFIT_LAYERING`` is unset: retrofit's own sandboxes set it, and
an admin who really means it can too.
"""

from __future__ import annotations

from dpkg_layer.bwrap import LAYERING_ENV
from retrofit.ostree import ExtraFile

SCRIPT = "usr/libexec/retrofit/package-guard"
APT_CONF = "usr/etc/apt/apt.conf.d/99retrofit-guard"
DPKG_CFG = "usr/etc/dpkg/dpkg.cfg.d/retrofit-guard"

_ACTIVE = f'[ ! -e /run/ostree-booted ] || [ -n "${LAYERING_ENV}" ]'

GUARD_SCRIPT = f"""#!/bin/sh
# Installed by retrofit. On a converted (OSTree) system packages change by new
# deployments, not in place: refuse, and say which retrofit verb does it.
[ -e /run/ostree-booted ] || exit 0
[ -z "${LAYERING_ENV}" ] || exit 0
tool="${{1:-dpkg}}"
case "${{DPKG_HOOK_ACTION:-}}" in
    remove|purge)
        how="'retrofit uninstall PKG' (a layered package) or"
        how="$how 'retrofit override remove PKG' (a base package)" ;;
    *)
        case "$tool" in
            apt) how="'retrofit install PKG', 'retrofit uninstall PKG' or 'retrofit upgrade'" ;;
            *) how="'retrofit install ./FILE.deb' (or 'retrofit install PKG')" ;;
        esac ;;
esac
echo "retrofit: this is an image-based system (OSTree): /usr is read-only," \
    "$tool cannot change packages here" >&2
echo "hint: use $how; the change becomes a new deployment, active after a reboot" >&2
exit 1
"""

_ACTIVE_QUOTED = _ACTIVE.replace('"', '\\"')
APT_SNIPPET = f"""// Installed by retrofit: packages change by retrofit install/uninstall/upgrade.
DPkg::Pre-Invoke {{ "{_ACTIVE_QUOTED} || /{SCRIPT} apt"; }};
"""

DPKG_SNIPPET = f"""# Installed by retrofit: packages change by retrofit install/uninstall/upgrade.
pre-invoke={_ACTIVE} || /{SCRIPT} dpkg
"""


def guard_files() -> list[ExtraFile]:
    """The guard, as files for the conversion commit."""
    return [
        ExtraFile(SCRIPT, data=GUARD_SCRIPT.encode(), mode=0o755),
        ExtraFile(APT_CONF, data=APT_SNIPPET.encode()),
        ExtraFile(DPKG_CFG, data=DPKG_SNIPPET.encode()),
    ]
