"""Content digests ("sha256:<64 hex>", "sha512:<128 hex>"), as the OCI image spec defines them.

Only the two registered algorithms are accepted, with lowercase hex of exactly the algorithm's
length; anything else is an ImageError naming the string.
"""

import hashlib

from keel.image.errors import DigestMismatch, ImageError

ALGORITHMS = ("sha256", "sha512")
HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX = frozenset("0123456789abcdef")


def parse(d: str) -> tuple[str, str]:
    """("sha256", hex) from "sha256:hex"; ImageError naming `d` if malformed."""
    if not isinstance(d, str):
        raise ImageError(f"invalid digest {d!r}: not a string")
    algorithm, sep, hexpart = d.partition(":")
    if not sep:
        raise ImageError(f"invalid digest {d!r}: expected algorithm:hex")
    if algorithm not in HEX_LENGTHS:
        raise ImageError(f"invalid digest {d!r}: unsupported algorithm {algorithm!r} "
                         f"(supported: {', '.join(ALGORITHMS)})")
    if len(hexpart) != HEX_LENGTHS[algorithm] or not _HEX.issuperset(hexpart):
        raise ImageError(f"invalid digest {d!r}: {algorithm} needs {HEX_LENGTHS[algorithm]} "
                         f"lowercase hex characters")
    return algorithm, hexpart


def is_valid(d: str) -> bool:
    try:
        parse(d)
    except ImageError:
        return False
    return True


def hasher(algorithm: str = "sha256"):
    if algorithm not in HEX_LENGTHS:
        raise ImageError(f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def of_bytes(data: bytes, algorithm: str = "sha256") -> str:
    h = hasher(algorithm)
    h.update(data)
    return f"{algorithm}:{h.hexdigest()}"


def of_file(fileobj, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> tuple[str, int]:
    """(digest, size) of everything read from a binary file object."""
    h = hasher(algorithm)
    size = 0
    while True:
        chunk = fileobj.read(chunk_size)
        if not chunk:
            break
        h.update(chunk)
        size += len(chunk)
    return f"{algorithm}:{h.hexdigest()}", size


def of_path(path: str, algorithm: str = "sha256") -> tuple[str, int]:
    with open(path, "rb") as f:
        return of_file(f, algorithm)


class Verifier:
    """Hashes a stream and tells whether it matched `expected` (and `size`, when given).

    v = Verifier("sha256:..", size=123); v.update(chunk)...; v.ok() or v.check("blob ...")
    """

    def __init__(self, expected: str, size: int | None = None):
        self.expected = expected
        self.algorithm, _ = parse(expected)
        self.size = size
        self.count = 0
        self._hash = hashlib.new(self.algorithm)

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.count += len(chunk)

    @property
    def digest(self) -> str:
        """The digest of what was hashed so far."""
        return f"{self.algorithm}:{self._hash.hexdigest()}"

    def ok(self) -> bool:
        if self.size is not None and self.count != self.size:
            return False
        return self.digest == self.expected

    def check(self, what: str | None = None) -> None:
        """DigestMismatch ("blob sha256:..: size mismatch..." / "...: digest mismatch: got ...")
        unless ok(). `what` names the content (default "blob <expected>")."""
        what = what or f"blob {self.expected}"
        if self.size is not None and self.count != self.size:
            raise DigestMismatch(f"{what}: size mismatch: expected {self.size} bytes, "
                                 f"got {self.count}")
        if self.digest != self.expected:
            raise DigestMismatch(f"{what}: digest mismatch: got {self.digest}")
