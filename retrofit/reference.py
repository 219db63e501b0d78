"""The reference Debian server tree: what the demo, the integration tests and the
benchmarks convert.

A Debian 12 server with real packages (openssh-server, nginx, a daemon with its own
system user, a kernel and GRUB, Python with byte-compiled modules) and realistic
local state: a local user with a home directory, edits and additions in /etc
(including a 0600 secret), data under /var/lib, /srv, /opt, /usr/local and /root, a
setuid binary, an extended attribute and a file capability (/usr/bin/ping).
"""

from __future__ import annotations

from retrofit.debtree import TreeSpec

PACKAGES = (
    "systemd-sysv",
    "openssh-server",
    "nginx-light",
    "uuid-runtime",
    "iputils-ping",
    "libcap2-bin",
    "linux-image-amd64",
    "initramfs-tools",
    "grub-pc-bin",
    "grub2-common",
    "python3",
    "python3-yaml",
    "sudo",
    "less",
)

# Run by mmdebstrap on the host with the tree as "$1".
LOCAL_STATE = (
    'chroot "$1" useradd -m -s /bin/bash -c "Alice Admin" alice',
    'echo "alice notes" > "$1/home/alice/notes.txt"; chroot "$1" chown alice:alice /home/alice/notes.txt',
    'printf "\\nPermitRootLogin no\\nMaxAuthTries 3\\n" >> "$1/etc/ssh/sshd_config"',
    'mkdir -p "$1/etc/myapp" && echo "listen = 8080" > "$1/etc/myapp/app.conf"',
    'echo "s3cret" > "$1/etc/myapp/secret" && chmod 0600 "$1/etc/myapp/secret"',
    'mkdir -p "$1/var/lib/myapp/db" && head -c 4194304 /dev/urandom > "$1/var/lib/myapp/db/data.bin"',
    'echo "row1" > "$1/var/lib/myapp/db/table.csv" && chroot "$1" chown -R www-data:www-data /var/lib/myapp',
    'setfattr -n user.retrofit -v keep "$1/var/lib/myapp/db/table.csv"',
    'mkdir -p "$1/srv/www" && echo "<h1>hello</h1>" > "$1/srv/www/index.html"',
    'mkdir -p "$1/opt/tool/bin" && printf "#!/bin/sh\\necho tool\\n" > "$1/opt/tool/bin/tool" && chmod 755 "$1/opt/tool/bin/tool"',
    'printf "#!/bin/sh\\necho hello\\n" > "$1/usr/local/bin/hello" && chmod 4755 "$1/usr/local/bin/hello"',
    'echo "alias ll=\\"ls -l\\"" >> "$1/root/.bashrc"',
    'setcap cap_net_raw+ep "$1/usr/bin/ping"',
    'setfattr -n user.retrofit -v usr "$1/usr/share/doc/less/copyright"',
    'printf "/dev/vda1 / ext4 errors=remount-ro 0 1\\n" > "$1/etc/fstab"',
    'echo "GRUB_CMDLINE_LINUX=\\"console=ttyS0\\"" >> "$1/etc/default/grub"',
    'mkdir -p "$1/boot/grub"',
)

REFERENCE_TREE = TreeSpec(suite="bookworm", packages=PACKAGES, customize=LOCAL_STATE)
