from keel.errors import KeelError


class KernelError(KeelError):
    """A kernel call failed; the message names the call and the path or value."""

    def __init__(self, message, errno=None):
        super().__init__(message)
        self.errno = errno


class CgroupError(KernelError):
    """A cgroup could not be created, configured, joined or removed."""


class SeccompError(KernelError):
    """A seccomp profile is invalid or could not be loaded."""
