"""`run`: create + start, then (unless --detach) wait, forward signals, delete, exit with its code."""

import os

from keel.runtime import attach, create, delete, start
from keel.runtime.errors import RuntimeError_


def run(root, cid, bundle, console_socket=None, pid_file=None, no_pivot=False, preserve_fds=0,
        detach=False, keep=False, no_new_keyring=False):
    keep_console = not detach and not console_socket
    created = create.create(root, cid, bundle, console_socket=console_socket, pid_file=pid_file,
                            no_pivot=no_pivot, preserve_fds=preserve_fds, keep_console=keep_console,
                            no_new_keyring=no_new_keyring)
    c = created.container
    forwarder = None if detach else attach.Forwarder(c.pid, created.console_fd)
    try:
        start.start(c)
    except BaseException:
        if forwarder is not None:
            forwarder.restore()
        if created.console_fd is not None:
            os.close(created.console_fd)
        delete.delete(c, force=True)
        raise
    if detach:
        if created.console_fd is not None:
            os.close(created.console_fd)
            raise RuntimeError_("run --detach with a terminal needs --console-socket")
        return 0
    try:
        code = attach.wait(c.pid, created.console_fd, forwarder)
    finally:
        if created.console_fd is not None:
            os.close(created.console_fd)
    if not keep:
        delete.delete(c, force=True)
    return code
