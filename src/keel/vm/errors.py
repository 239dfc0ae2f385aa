from keel.errors import KeelError


class VMError(KeelError):
    """keel-vm cannot do what was asked (bad id, wrong state, a VM that failed to boot)."""
