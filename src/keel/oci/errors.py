from keel.errors import KeelError


class ConfigError(KeelError):
    """A config.json (or process.json) field is missing, mistyped or not supported."""
