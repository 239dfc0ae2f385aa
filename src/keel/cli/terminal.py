"""The caller's terminal while `keel` is attached to a container or an exec session: raw mode
(restored on every way out), window size and its changes (SIGWINCH -> conmon's ctl fifo), and
the detach keys (podman's default ctrl-p,ctrl-q; `--detach-keys ""` turns detaching off). As in
docker and podman, detach keys apply only when the container has a terminal: without -t, stdin
is data and passes untouched.

`attach_streams` is the one place the CLI joins them to keel.engine.attach's I/O loop:
`keel run`, `start -a`, `attach` and `exec` all go through it.
"""

import contextlib
import fcntl
import os
import signal
import struct
import sys
import termios

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
_CTRL_CHARS = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(spec: str) -> bytes:
    """podman's/docker's detach-key syntax: comma-separated keys, each one character or
    ctrl-<a..z, @, [, \\, ], ^, _>. "" means no detach keys."""
    from keel.engine.errors import EngineError

    if spec == "":
        return b""
    out = bytearray()
    for key in spec.split(","):
        k = key.strip()
        low = k.lower()
        if len(k) == 1 and k.isascii() and k.isprintable():
            out.append(ord(k))
        elif low.startswith("ctrl-") and len(k) == 6:
            c = low[5]
            if "a" <= c <= "z":
                out.append(ord(c) - ord("a") + 1)
            elif c in _CTRL_CHARS:
                out.append(_CTRL_CHARS[c])
            else:
                raise EngineError(f"--detach-keys {spec!r}: unknown key {k!r}")
        else:
            raise EngineError(f"--detach-keys {spec!r}: unknown key {k!r} "
                              "(one character or ctrl-<a-z, @, [, \\, ], ^, _>)")
    return bytes(out)


class DetachKeys:
    """Watches the bytes typed for the detach sequence. A partial match is held back until it
    either completes (detach) or breaks (the held bytes go to the container after all)."""

    def __init__(self, seq: bytes):
        self.seq = seq
        self.held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to send on, detach requested)."""
        if not self.seq:
            return data, False
        out = bytearray()
        for b in data:
            self.held += bytes((b,))
            # a broken prefix goes on, but its tail may still start the sequence
            while self.held and not self.seq.startswith(self.held):
                out.append(self.held[0])
                self.held = self.held[1:]
            if self.held == self.seq:
                self.held = b""
                return bytes(out), True
        return bytes(out), False


def window_size(fd: int) -> tuple[int, int] | None:
    """(rows, cols) of the terminal on `fd`, None if it is not a terminal (or reports 0x0)."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None


def caller_window_size() -> tuple[int, int] | None:
    """The size of the terminal keel runs in: stdin's, else stdout's."""
    for fd in (0, 1):
        if os.isatty(fd):
            size = window_size(fd)
            if size:
                return size
    return None


@contextlib.contextmanager
def raw_mode(fd: int):
    """Put the terminal on `fd` in raw mode (cfmakeraw: no echo, no line editing, no signals
    from keys, no output processing), restoring the saved settings on the way out."""
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield False
        return
    mode = list(saved)
    mode[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
                 | termios.IGNCR | termios.ICRNL | termios.IXON)
    mode[1] &= ~termios.OPOST
    mode[2] &= ~(termios.CSIZE | termios.PARENB)
    mode[2] |= termios.CS8
    mode[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    mode[6] = list(mode[6])
    mode[6][termios.VMIN] = 1
    mode[6][termios.VTIME] = 0
    # SIGTTOU would stop a background keel that changes its terminal: be told instead
    old_ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        termios.tcsetattr(fd, termios.TCSANOW, mode)   # keep what was typed ahead
        yield True
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGTTOU, old_ttou)


FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)


def attach_streams(sock, *, stdin: bool, tty: bool, detach_keys: str = DEFAULT_DETACH_KEYS,
                   resize=None, forward_signal=None) -> str:
    """Copy between keel's stdio and a connected attach socket (keel.engine.attach.connect)
    until the container side ends ("exited") or the detach keys are typed ("detached"). The
    socket is closed on return.

    stdin: forward keel's stdin (EOF closes the container's stdin). tty: the other side is a
    terminal: keel's terminal goes raw while attached and its size follows through `resize`
    (rows, cols). forward_signal(signum): the signals a user sends keel go to the container."""
    from keel.engine import attach

    try:
        keys = DetachKeys(parse_detach_keys(detach_keys))
    except BaseException:
        sock.close()
        raise
    if tty and stdin and not os.isatty(0):
        sys.stderr.write("Warning: the input device is not a TTY: --tty and --interactive "
                         "might not work properly\n")
    old = {}
    try:
        if forward_signal is not None:
            for s in FORWARDED_SIGNALS:
                old[s] = signal.signal(s, lambda signum, frame: forward_signal(signum))
        if tty and resize is not None:
            def winch(signum=None, frame=None):
                size = caller_window_size()
                if size:
                    resize(*size)
            old[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, winch)
            winch()
        with raw_mode(0) if (tty and stdin and os.isatty(0)) else contextlib.nullcontext():
            # as in docker and podman, detach keys only on a terminal: piped input is data,
            # and a ctrl-p,ctrl-q in a binary stream must reach the container
            return attach.stream(sock, stdin_fd=0 if stdin else None, stdout_fd=1, stderr_fd=2,
                                 input_filter=keys.feed if tty else None)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
