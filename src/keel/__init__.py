"""keel: the container stack below Kubernetes, in Python.

This module stays light on purpose: `keel-runtime` imports `keel.oci` and
`keel.kernel` on its start-up path, and importing `keel` must not pull in
anything else. Public names of upper layers are loaded lazily.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "KeelError", "Client", "from_env", "APIError", "NotFound",
           "ImageNotFound", "ContainerError", "InvalidArgument"]

_CLIENT_NAMES = ("Client", "from_env", "APIError", "NotFound", "ImageNotFound", "ContainerError",
                 "InvalidArgument")


def __getattr__(name):
    if name == "KeelError":
        from keel.errors import KeelError

        return KeelError
    if name in _CLIENT_NAMES:
        from keel import client

        return getattr(client, name)
    raise AttributeError(f"module 'keel' has no attribute {name!r}")
