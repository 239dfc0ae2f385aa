"""The root of keel's exception tree; each layer derives its own errors from it."""


class KeelError(Exception):
    """Any error keel reports to a user. str(err) is one clear line."""
