"""keel agent protocol, version 1: typed frames between keel-vm (host) and the guest agent.

The channel is a byte stream (the virtio-serial port "keel.ctl"). Each frame is

    u32 length (big-endian, of what follows) | u8 message type | fields...

and each field is

    u8 key | u8 kind | value

with four kinds: 'i' an int64 (8 bytes, big-endian, two's complement), 'b' bytes
(u32 length + data), 'l' a list of byte strings (u32 count, then u32 length + data
each), 'n' a list of int64 (u32 count, then 8 bytes each). Keys are one namespace
shared by every message (FIELDS below). A reader ignores keys it does not know, so a
newer host can add fields; a change of meaning bumps VERSION, which the agent sends
in HELLO and the host checks. Frames are at most MAX_FRAME bytes; a longer one is a
protocol error. agent/agent.c implements the guest side and must match these numbers.

Host -> guest: CREATE (make the container process, stopped before exec), START, EXEC
(a further process in the container's namespaces, started at once), STDIN,
CLOSE_STDIN, SIGNAL, RESIZE (terminal size), SHUTDOWN.
Guest -> host: HELLO (once, at boot), READY (created, waiting for START), STARTED,
OUTPUT (stdout stream 1, stderr stream 2), EXIT (raw wait status), ERROR (one line,
with the id of the request that failed).
"""

import struct

VERSION = 1
MAX_FRAME = 16 << 20

CREATE, START, EXEC, STDIN, CLOSE_STDIN, SIGNAL, RESIZE, SHUTDOWN, UPDATE, PS = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
HELLO, READY, STARTED, OUTPUT, EXIT, ERROR, DONE = 64, 65, 66, 67, 68, 69, 70
NAMES = {CREATE: "CREATE", START: "START", EXEC: "EXEC", STDIN: "STDIN", CLOSE_STDIN: "CLOSE_STDIN",
         SIGNAL: "SIGNAL", RESIZE: "RESIZE", SHUTDOWN: "SHUTDOWN", UPDATE: "UPDATE", PS: "PS", HELLO: "HELLO",
         READY: "READY", STARTED: "STARTED", OUTPUT: "OUTPUT", EXIT: "EXIT", ERROR: "ERROR", DONE: "DONE"}

INT, BYTES, LIST, INTS = b"i"[0], b"b"[0], b"l"[0], b"n"[0]

# name -> (key, kind)
FIELDS = {
    "id": (1, INT), "args": (2, LIST), "env": (3, LIST), "cwd": (4, BYTES), "uid": (5, INT),
    "gid": (6, INT), "groups": (7, INTS), "rootfs": (8, BYTES), "readonly": (9, INT),
    "hostname": (10, BYTES), "nsflags": (11, INT), "mnt_type": (12, LIST), "mnt_src": (13, LIST),
    "mnt_dst": (14, LIST), "mnt_flags": (15, INTS), "mnt_data": (16, LIST), "rl_type": (17, INTS),
    "rl_soft": (18, INTS), "rl_hard": (19, INTS), "cap_bnd": (20, INT), "cap_eff": (21, INT),
    "cap_prm": (22, INT), "cap_inh": (23, INT), "cap_amb": (24, INT), "nnp": (25, INT),
    "terminal": (26, INT), "masked": (27, LIST), "ro_paths": (28, LIST), "sysctl_key": (29, LIST),
    "sysctl_val": (30, LIST), "data": (31, BYTES), "stream": (32, INT), "signal": (33, INT),
    "all": (34, INT), "rows": (35, INT), "cols": (36, INT), "pid": (37, INT), "status": (38, INT),
    "message": (39, BYTES), "version": (40, INT), "kernel": (41, BYTES), "dev_path": (42, LIST),
    "dev_spec": (43, INTS), "mnt_prop": (44, INTS), "umask": (45, INT), "cg_key": (46, LIST),
    "cg_val": (47, LIST), "net_addr": (48, BYTES), "net_gw": (49, BYTES), "net_mtu": (50, INT),
    "ps_pid": (51, INTS), "ps_args": (52, LIST),
}
_BY_KEY = {key: (name, kind) for name, (key, kind) in FIELDS.items()}
_I64 = struct.Struct(">q")
_U32 = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame of this protocol version."""


def _to_bytes(v):
    return v.encode() if isinstance(v, str) else bytes(v)


def encode(mtype, **fields):
    """One frame, ready to write."""
    out = [bytes((mtype,))]
    for name, value in fields.items():
        key, kind = FIELDS[name]
        out.append(bytes((key, kind)))
        if kind == INT:
            out.append(_I64.pack(int(value)))
        elif kind == BYTES:
            b = _to_bytes(value)
            out += (_U32.pack(len(b)), b)
        elif kind == LIST:
            items = [_to_bytes(v) for v in value]
            out.append(_U32.pack(len(items)))
            for b in items:
                out += (_U32.pack(len(b)), b)
        else:
            values = list(value)
            out.append(_U32.pack(len(values)))
            out += [_I64.pack(int(v)) for v in values]
    body = b"".join(out)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"{NAMES.get(mtype, mtype)} frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _U32.pack(len(body)) + body


def decode(body):
    """(type, {name: value}) of one frame's body; bytes stay bytes, unknown keys are skipped."""
    if not body:
        raise ProtocolError("empty frame")
    mtype, pos, end, fields = body[0], 1, len(body), {}

    def take(n):
        nonlocal pos
        if end - pos < n:
            raise ProtocolError(f"{NAMES.get(mtype, mtype)} frame truncated")
        chunk = body[pos:pos + n]
        pos += n
        return chunk

    while pos < end:
        key, kind = take(2)
        if kind == INT:
            value = _I64.unpack(take(8))[0]
        elif kind == BYTES:
            value = bytes(take(_U32.unpack(take(4))[0]))
        elif kind == LIST:
            value = [bytes(take(_U32.unpack(take(4))[0])) for _ in range(_U32.unpack(take(4))[0])]
        elif kind == INTS:
            value = [_I64.unpack(take(8))[0] for _ in range(_U32.unpack(take(4))[0])]
        else:
            raise ProtocolError(f"field {key}: unknown kind {kind}")
        known = _BY_KEY.get(key)
        if known:
            fields[known[0]] = value
    return mtype, fields


class Reader:
    """Splits a byte stream into decoded frames."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        frames = []
        while len(self.buf) >= 4:
            n = _U32.unpack_from(self.buf)[0]
            if n > MAX_FRAME:
                raise ProtocolError(f"frame of {n} bytes exceeds {MAX_FRAME}")
            if len(self.buf) < 4 + n:
                break
            frames.append(decode(bytes(self.buf[4:4 + n])))
            del self.buf[:4 + n]
        return frames
