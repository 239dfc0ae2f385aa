"""Errors of keel.image: one tree under ImageError, each message one lowercase line
that names the digest, path, reference or field at fault."""

from keel.errors import KeelError


class ImageError(KeelError):
    """Any keel.image failure."""


class DigestMismatch(ImageError):
    """Content did not hash to (or was not the size of) the digest it was expected under:
    "blob sha256:ab..: digest mismatch: got sha256:cd.."."""


class BlobNotFound(ImageError):
    """A blob the caller asked for is not in the store (or not in an archive)."""


class ImageNotFound(ImageError):
    """No image matches a name, id or manifest digest."""


class ReferenceError_(ImageError):
    """A malformed image reference (the trailing underscore avoids the builtin)."""


class RegistryError(ImageError):
    """A registry answered with an error; .status is the HTTP status, or None."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class UnpackError(ImageError):
    """A hostile or invalid layer (names the entry)."""
