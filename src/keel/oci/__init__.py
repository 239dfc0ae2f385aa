"""The OCI specs as data: runtime config and state, with validation that names the field.

Imported on keel-runtime's start-up path: standard library only, nothing heavy.
"""

from keel.oci.errors import ConfigError

__all__ = ["ConfigError"]
