from keel.errors import KeelError


class RuntimeError_(KeelError):
    """A runtime command cannot do what was asked (bad id, wrong state, failed step).

    Named with a trailing underscore so it never shadows the builtin RuntimeError.
    """
