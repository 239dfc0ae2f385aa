"""Foreground `run` and `exec`: forward signals to the process, proxy its pty, return its exit code."""

import os
import select
import signal

FORWARDED = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT, signal.SIGALRM)


def exit_code(status):
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 255


class Forwarder:
    """Signal forwarding, installed before the process starts: signals that arrive before it
    runs its own code are held and delivered once `release` is called (just after start)."""

    def __init__(self, pid, console_fd=None):
        self.pid = pid
        self.console_fd = console_fd
        self.held = []
        self.released = False
        self.old = {s: signal.signal(s, self._on_signal) for s in FORWARDED}

    def _on_signal(self, sig, _frame):
        if sig == signal.SIGWINCH and self.console_fd is not None:
            _copy_winsize(self.console_fd)
            return
        if not self.released:
            self.held.append(sig)
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def release(self):
        self.released = True
        for sig in self.held:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        self.held = []

    def restore(self):
        for s, h in self.old.items():
            signal.signal(s, h)


def wait(pid, console_fd=None, forwarder=None):
    """Wait for `pid` (our child, or reparented to us as subreaper); returns its exit code."""
    if forwarder is None:
        forwarder = Forwarder(pid, console_fd)
    forwarder.release()
    try:
        if console_fd is not None:
            return _proxy(pid, console_fd)
        while True:
            try:
                wpid, status = os.waitpid(pid, 0)
            except ChildProcessError:
                return 255
            if wpid == pid:
                return exit_code(status)
    finally:
        forwarder.restore()
        _reap_others()


def _reap_others():
    # Processes of the container reparented to us (we are a subreaper) must not stay zombies.
    while True:
        try:
            wpid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if wpid == 0:
            return


def _copy_winsize(console_fd):
    import fcntl
    import termios

    try:
        size = fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(console_fd, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def _proxy(pid, master):
    import termios
    import tty

    stdin_tty = os.isatty(0)
    saved = None
    if stdin_tty:
        saved = termios.tcgetattr(0)
        tty.setraw(0)
        _copy_winsize(master)
    pidfd = os.pidfd_open(pid)
    stdin_open = True
    try:
        while True:
            rlist = [master, pidfd] + ([0] if stdin_open else [])
            try:
                ready, _, _ = select.select(rlist, [], [])
            except InterruptedError:
                continue
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    _write_all(master, data)
                else:
                    stdin_open = False
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave fd is closed
                    data = b""
                if data:
                    _write_all(1, data)
                    continue
                break
            if pidfd in ready:
                _drain(master)
                break
        _, status = os.waitpid(pid, 0)
        return exit_code(status)
    finally:
        os.close(pidfd)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _drain(master):
    while True:
        r, _, _ = select.select([master], [], [], 0.05)
        if not r:
            return
        try:
            data = os.read(master, 65536)
        except OSError:
            return
        if not data:
            return
        _write_all(1, data)


def _write_all(fd, data):
    while data:
        n = os.write(fd, data)
        data = data[n:]
