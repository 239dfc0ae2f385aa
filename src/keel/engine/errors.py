"""The engine's errors: one tree under KeelError, each message one lowercase line."""

from keel.errors import KeelError


class EngineError(KeelError):
    """Root of the engine's errors."""


class ContainerNotFound(EngineError):
    """No container has that name or id (prefix)."""


class NameInUse(EngineError):
    """Another container already has that name."""


class InvalidState(EngineError):
    """The container's state does not allow the operation (e.g. rm of a running one)."""


class RuntimeFailed(EngineError):
    """The OCI runtime binary reported an error."""


class MonitorFailed(EngineError):
    """conmon could not start the container, or died."""


class NotSupported(EngineError):
    """An option this slice of the engine does not implement yet."""
