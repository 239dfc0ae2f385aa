"""A container's state on disk (state.json in <root>/<id>/) and its live status.

The status is computed, as runc does: "created" while the init waits on the exec
fifo, "running" while the init lives, "stopped" once it is gone. The init's start
time is kept beside its pid so a recycled pid is never mistaken for the init.
"""

import os

from keel.oci import fastjson
from keel.runtime.errors import RuntimeError_

OCI_VERSION = "1.1.0"
STATE_FILE = "state.json"
FIFO = "exec.fifo"


def valid_id(cid):
    if not cid or cid in (".", "..") or len(cid) > 1024:
        return False
    return all(c.isalnum() or c in "_+-." for c in cid) and cid.isascii()


def check_id(cid):
    if not valid_id(cid):
        raise RuntimeError_(f"invalid container id {cid!r}: use letters, digits, '_', '+', '-' and '.'")


def proc_start_time(pid):
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), and the process state letter."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None, None
    rest = data[data.rindex(b")") + 2:].split()
    return int(rest[19]), rest[0].decode()


class Container:
    """One container's directory under the runtime root."""

    __slots__ = ("root", "id", "dir", "data")

    def __init__(self, root, cid, data=None):
        self.root = root
        self.id = cid
        self.dir = os.path.join(root, cid)
        self.data = data

    @classmethod
    def load(cls, root, cid):
        check_id(cid)
        c = cls(root, cid)
        try:
            with open(os.path.join(c.dir, STATE_FILE), "rb") as f:
                c.data = fastjson.loads(f.read())
        except FileNotFoundError:
            raise RuntimeError_(f"container {cid!r} does not exist") from None
        except ValueError as e:
            raise RuntimeError_(f"container {cid!r}: corrupt {STATE_FILE}: {e}") from None
        return c

    @property
    def fifo(self):
        return os.path.join(self.dir, FIFO)

    @property
    def pid(self):
        return self.data.get("pid", 0)

    def alive(self):
        """True while the init process (same pid, same start time, same boot) exists."""
        pid = self.pid
        if pid <= 0:
            return False
        start, st = proc_start_time(pid)
        if start is None or start != self.data.get("initStartTime") or st in ("Z", "X"):
            return False
        # Imported only for a live pid: `list` of stopped containers does not load it.
        from keel.kernel.boot import boot_id

        return self.data.get("bootId") == boot_id()

    def status(self):
        if self.data.get("status") == "creating":
            from keel.kernel.boot import boot_id

            # A create that died half-way leaves a stopped container behind, not a live one.
            start, st = proc_start_time(self.data.get("creator", 0))
            if (start is not None and start == self.data.get("creatorStartTime")
                    and st not in ("Z", "X") and self.data.get("bootId") == boot_id()):
                return "creating"
            return "stopped"
        if not self.alive():
            return "stopped"
        if os.path.exists(self.fifo):
            return "created"
        if self.data.get("cgroup"):
            from keel.kernel.cgroups import Cgroup

            try:
                if Cgroup.from_dict(self.data["cgroup"]).state() == "paused":
                    return "paused"
            except Exception:
                pass
        return "running"

    def save(self):
        tmp = os.path.join(self.dir, STATE_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, fastjson.dumps(self.data).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.dir, STATE_FILE))

    def oci_state(self, status=None):
        """The state per the runtime spec, as given to hooks and printed by `state`."""
        status = status or self.status()
        return {
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "status": status,
            "pid": self.pid if status != "stopped" else 0,
            "bundle": self.data.get("bundle", ""),
            "annotations": self.data.get("annotations") or {},
        }

    def runc_state(self):
        """`state` output: the spec's fields plus runc's extras that engines read."""
        st = self.oci_state()
        return {
            "ociVersion": st["ociVersion"],
            "id": st["id"],
            "pid": st["pid"],
            "status": st["status"],
            "bundle": st["bundle"],
            "rootfs": self.data.get("rootfs", ""),
            "created": self.data.get("created", ""),
            "owner": self.data.get("owner", ""),
            "annotations": st["annotations"],
        }


def list_ids(root):
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if os.path.isfile(os.path.join(root, n, STATE_FILE)))
