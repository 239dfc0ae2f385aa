"""The typed channel between keel-runtime and the container init it forks.

One SOCK_SEQPACKET socketpair; each message is one packet: a JSON object whose
"type" is one of the kinds below, optionally carrying file descriptors.

    parent                      stage-1 child (namespaces)     init (pid 1)
      | <--- IDMAP_REQUEST ------- |  (new user ns: write maps)
      | ---- IDMAP_DONE ---------> |
      | <--- INIT_PID ------------ |  forks init, exits
      | <--- HOOKS_REQUEST ----------------------------------- |  mounts done, before pivot_root
      | ---- HOOKS_DONE ---------------------------------------> |
      | <--- CONSOLE (pty master fd) --------------------------- |
      | <--- READY --------------------------------------------- |  waits on exec.fifo
      | <--- ERROR {message} ----------------------------------- |  any step failed
"""

import _socket

from keel.oci import fastjson

IDMAP_REQUEST = "idmap-request"
IDMAP_DONE = "idmap-done"
INIT_PID = "init-pid"
HOOKS_REQUEST = "hooks-request"
HOOKS_DONE = "hooks-done"
CONSOLE = "console"
READY = "ready"
ERROR = "error"

_MAX = 65536


def pair():
    return _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)


def send(sock, kind, fds=(), **fields):
    fields["type"] = kind
    data = fastjson.dumps(fields).encode()
    if fds:
        sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _pack_fds(fds))])
    else:
        sock.send(data)


def _pack_fds(fds):
    # struct, not array: `import array` pulls in collections.abc, which the init cannot import
    # once it is inside the container (after pivot_root); struct is preloaded (init.preload).
    import struct

    return struct.pack(f"{len(fds)}i", *fds)


def recv(sock):
    """Returns (kind, fields, fds); kind is None when the peer closed the channel."""
    data, ancdata, _flags, _addr = sock.recvmsg(_MAX, _socket.CMSG_SPACE(4 * 8))
    if not data:
        return None, {}, []
    fds = []
    for level, ctype, cdata in ancdata:
        if level == _socket.SOL_SOCKET and ctype == _socket.SCM_RIGHTS:
            import struct

            n = len(cdata) // 4
            fds.extend(struct.unpack(f"{n}i", cdata[: 4 * n]))
    msg = fastjson.loads(data)
    return msg.pop("type"), msg, fds


def send_fd_to_console_socket(path, fd):
    """The console-socket protocol of runc: connect, send the pty master with SCM_RIGHTS."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.connect(path)
        s.sendmsg([b"/dev/ptmx"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _pack_fds([fd]))])
    finally:
        s.close()
