"""Build a busybox root filesystem offline from Debian's busybox-static."""

import os
import shutil
import subprocess

BUSYBOX = "/bin/busybox"


def applets(busybox=BUSYBOX):
    out = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout
    return [a for a in out.split() if a and a != "busybox"]


def make_rootfs(path, busybox=BUSYBOX):
    """Populate `path` with a minimal busybox userland; returns `path`."""
    if not os.path.exists(busybox):
        raise FileNotFoundError(f"{busybox} not found: install busybox-static")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "var/run", "home"):
        os.makedirs(os.path.join(path, d), exist_ok=True)
    os.chmod(os.path.join(path, "tmp"), 0o1777)
    shutil.copy2(busybox, os.path.join(path, "bin/busybox"))
    for a in applets(busybox):
        link = os.path.join(path, "bin", a)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    with open(os.path.join(path, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n"
                "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
                "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    with open(os.path.join(path, "etc/group"), "w") as f:
        f.write("root:x:0:\ndaemon:x:1:\ntty:x:5:\nnogroup:x:65534:\n")
    for name in ("hostname", "hosts", "resolv.conf"):
        open(os.path.join(path, "etc", name), "a").close()
    return path
