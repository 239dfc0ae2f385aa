"""The host side of a container terminal: a pty whose master goes to --console-socket.

The guest's pty does the line discipline; the host pty only carries bytes, so its slave is in
raw mode. Whoever holds the slave as controlling terminal gets SIGWINCH when the engine
resizes the master, and passes the new size on (RESIZE).
"""

import fcntl
import os
import socket
import struct
import termios
import tty

from keel.vm.errors import VMError


def make(path, size=None):
    """A raw pty whose master is sent to the console socket at `path`; returns the slave fd."""
    master, slave = os.openpty()
    tty.setraw(slave)
    if size:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        socket.send_fds(s, [os.ttyname(slave).encode()], [master])
    except (OSError, TypeError) as e:
        os.close(slave)
        raise VMError(f"--console-socket {path}: {(getattr(e, 'strerror', None) or str(e)).lower()}") from None
    finally:
        s.close()
        os.close(master)
    return slave


def own(slave):
    """Make `slave` our controlling terminal (a new session), so its SIGWINCH reaches us."""
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)


def size(fd):
    """(rows, cols) of the terminal `fd`, or None."""
    try:
        rows, cols = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
    except OSError:
        return None
    return rows, cols
