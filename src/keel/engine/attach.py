"""Attaching to a container or an exec session through its conmon, as podman does.

conmon (started with --full-attach) listens on `<dir>/attach`, a SOCK_SEQPACKET unix socket
in the container's bundle dir (or the exec session's dir). Every record conmon sends starts
with one byte naming the stream (2 stdout, 3 stderr; a terminal's output is all stdout) and
carries at most 8192 bytes of output; every record a client sends is raw input for the
container's stdin (conmon reads records of at most 8192 bytes, so input is sent in pieces of
that size). A client that shuts down its writing side makes conmon close the container's
stdin (unless conmon has --leave-stdin-open); conmon closes all clients when the container's
output is drained after it exited, so EOF on the socket means "exited, all output seen".

Window size: `<dir>/ctl` is conmon's control fifo; the line "1 ROWS COLS\\n" (message type 1,
a resize) makes conmon set the size of the container's pty (it passes it on through its
`winsz` fifo to the loop that owns the pty master).

The socket path can be longer than a unix socket address allows (108 bytes): like conmon, the
client connects through /proc/self/fd/N/attach with N an O_PATH fd of the directory.
"""

import errno
import os
import select
import socket

from keel.engine.errors import EngineError

STDOUT, STDERR = 2, 3
RECORD = 8192          # conmon's STDIO_BUF_SIZE: largest payload in one record either way
WIN_RESIZE = 1         # conmon's ctl message type for a window resize


def connect(directory: str, what: str) -> socket.socket:
    """A connection to conmon's attach socket in `directory`; `what` names the container or
    session in errors."""
    try:
        dfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise EngineError(f"{what}: no attach socket: it is not running under conmon") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{dfd}/attach")
    except OSError as e:
        sock.close()
        if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise EngineError(f"{what}: no attach socket: it is not running under conmon") from None
        raise EngineError(f"{what}: attach socket: {(e.strerror or str(e)).lower()}") from None
    finally:
        os.close(dfd)
    return sock


def resize(directory: str, rows: int, cols: int) -> bool:
    """Ask conmon to set the pty size; False when conmon is not there to read it (the fifo
    is opened non-blocking: a fifo without a reader would block an open for writing)."""
    rows, cols = max(0, min(int(rows), 1000)), max(0, min(int(cols), 1000))  # conmon's bounds
    try:
        fd = os.open(os.path.join(directory, "ctl"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.write(fd, f"{WIN_RESIZE} {rows} {cols}\n".encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> bool:
    """Write everything to a (blocking) fd; False once the reader is gone."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.EIO, errno.EBADF):
                return False
            raise
        view = view[n:]
    return True


def stream(sock: socket.socket, *, stdin_fd: int | None, stdout_fd: int, stderr_fd: int,
           input_filter=None) -> str:
    """Copy the container's output to stdout_fd/stderr_fd and stdin_fd (if given) to the
    container until conmon closes the socket ("exited") or input_filter(data) -> (data,
    detach) asks to detach ("detached"). The socket is closed on return.

    Input is sent without blocking: while conmon cannot take more input (the container does
    not read), output keeps flowing, so neither side waits on the other forever."""
    sock.setblocking(False)
    pending = b""
    in_fd = stdin_fd
    out_ok = {STDOUT: True, STDERR: True}
    try:
        while True:
            poller = select.poll()
            poller.register(sock, select.POLLIN | (select.POLLOUT if pending else 0))
            read_input = in_fd is not None and not pending
            if read_input:
                poller.register(in_fd, select.POLLIN)
            ready = dict(poller.poll())
            sev = ready.get(sock.fileno(), 0)
            if sev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    rec = sock.recv(RECORD + 1 + 4096)
                except BlockingIOError:
                    rec = None
                except ConnectionResetError:
                    rec = b""
                if rec == b"":
                    return "exited"
                if rec and out_ok.get(rec[0]):
                    out_ok[rec[0]] = _write_all(stdout_fd if rec[0] == STDOUT else stderr_fd, rec[1:])
            if pending and sev & (select.POLLOUT | select.POLLERR):
                pending = _send_some(sock, pending)
                if pending is None:   # conmon no longer takes input
                    pending, in_fd = b"", None
            if read_input and in_fd in ready:
                try:
                    data = os.read(in_fd, RECORD)
                except BlockingIOError:
                    continue
                except OSError as e:
                    if e.errno != errno.EIO:   # EIO: our terminal hung up, an EOF
                        raise
                    data = b""
                if not data:
                    in_fd = None
                    _shutdown_write(sock)
                    continue
                detach = False
                if input_filter is not None:
                    data, detach = input_filter(data)
                if data:
                    pending = _send_some(sock, data)
                    if pending is None:
                        pending, in_fd = b"", None
                if detach:
                    return "detached"
    finally:
        sock.close()


def _send_some(sock: socket.socket, data: bytes) -> bytes | None:
    """Send records of at most RECORD bytes until the socket would block; what is left, or
    None when conmon shut its reading side."""
    while data:
        try:
            sock.send(data[:RECORD])
        except BlockingIOError:
            return data
        except (BrokenPipeError, ConnectionResetError):
            return None
        data = data[RECORD:]
    return b""


def _shutdown_write(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
