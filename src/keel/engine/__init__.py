"""keel.engine: containers on any OCI runtime binary (runc's command line), each watched by
conmon, metadata in SQLite. `Engine(root, runroot)` is the whole public API of this slice."""

__all__ = ["Engine", "EngineError", "ContainerNotFound", "NameInUse", "InvalidState",
           "NotSupported", "MonitorFailed", "RuntimeFailed"]


def __getattr__(name):
    if name == "Engine":
        from keel.engine.engine import Engine

        return Engine
    if name in __all__:
        from keel.engine import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'keel.engine' has no attribute {name!r}")
