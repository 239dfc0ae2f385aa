"""A keel-vm container's state.json, on keel-runtime's Container (same file, same identity rules).

The pid in the state is the container's shim: a host process that lives exactly as long as the
container process in the guest and exits with its status, so conmon and containerd's shim can
wait on it as they wait on runc's init. The shim is the only writer of the file once it runs.
"""

import os
import socket

from keel.oci import fastjson
from keel.kernel.boot import boot_id  # noqa: F401
from keel.runtime.state import Container, check_id, list_ids, proc_start_time  # noqa: F401
from keel.vm.errors import VMError

DEFAULT_ROOT = "/run/keel/vm"
ROOT_ENV = "KEEL_VM_ROOT"
CMD_SOCKET = "shim.sock"


def default_root():
    if os.geteuid() == 0:
        return DEFAULT_ROOT
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(xdg, "keel-vm") if xdg else f"/tmp/keel-vm-{os.geteuid()}"


class VMContainer(Container):
    __slots__ = ()

    @classmethod
    def load(cls, root, cid):
        from keel.runtime.errors import RuntimeError_

        try:
            return super().load(root, cid)
        except RuntimeError_ as e:
            raise VMError(str(e)) from None

    def save(self):
        """Atomic (temp file + rename) without fsync: run state is void after a reboot anyway
        (bootId), and the shim saves on the start and exit paths where an fsync costs most."""
        tmp = os.path.join(self.dir, "state.json.tmp")
        with open(tmp, "wb") as f:
            f.write(fastjson.dumps(self.data).encode())
        os.rename(tmp, os.path.join(self.dir, "state.json"))

    def status(self):
        st = self.data.get("status")
        if st == "creating":
            return super().status()
        if not self.alive():
            return "stopped"
        return st if st in ("created", "running", "paused", "stopped") else "running"

    def request(self, req, fds=(), timeout=None):
        """Send one request to the shim; returns (socket, its reader, first reply). The caller
        closes the socket; further replies (exec's exit) come with read_reply(reader)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dfd = os.open(self.dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            s.settimeout(timeout)
            s.connect(f"/proc/self/fd/{dfd}/{CMD_SOCKET}")
        except OSError as e:
            s.close()
            raise VMError(f"container {self.id!r}: its shim does not answer ({(e.strerror or str(e)).lower()})") from None
        finally:
            os.close(dfd)
        data = (fastjson.dumps(req) + "\n").encode()
        if fds:
            socket.send_fds(s, [data], list(fds))
        else:
            s.sendall(data)
        reader = s.makefile("rb")
        return s, reader, read_reply(reader, self.id)


def read_reply(reader, cid):
    try:
        line = reader.readline()
    except OSError as e:
        raise VMError(f"container {cid!r}: shim: {(e.strerror or str(e)).lower()}") from None
    if not line.endswith(b"\n"):
        raise VMError(f"container {cid!r}: the shim exited before it answered")
    reply = fastjson.loads(line.decode())
    if reply.get("error"):
        raise VMError(reply["error"])
    return reply
