"""Image references, parsed as docker and podman parse them (the docker/distribution grammar).

    reference   := name [ ":" tag ] [ "@" digest ]
    name        := [ domain "/" ] path-component ( "/" path-component )*
    domain      := host [ ":" port ]            host: DNS labels joined by ".", or [IPv6]
    path-component := [a-z0-9]+ ( separator [a-z0-9]+ )*      separator: "." "_" "__" "-"+
    tag         := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest      := "sha256:" 64 lowercase hex | "sha512:" 128 lowercase hex

The first path element is a registry (domain) when it contains "." or ":", is "localhost", or has
an uppercase letter (repositories are lowercase, host names need not be), exactly docker's rule.
"index.docker.io" is spelled "docker.io". The name (domain + path) is at most 255 characters.

Short names. A reference without a registry ("busybox", "user/app:1.0") is a *short name*. `parse`
qualifies it the way docker does: with `default_registry` (docker.io unless the caller says
otherwise) and, for docker.io only, a "library/" prefix on one-component names when
`normalize_library` is true ("busybox" -> "docker.io/library/busybox:latest"). parse() never
consults registries.conf: podman's short-name resolution (aliases, unqualified-search-registries,
short-name-mode) belongs to the caller (keel.image.registries), which can tell a short name from a
qualified one with `is_short_name()` or `Reference.short`. A name made of 64 hex characters alone
is refused (it would be mistaken for an image id), as docker refuses it.

A reference without tag and digest gets the tag "latest"; one with a digest keeps the tag only if
it was given ("a/b:t@sha256:..." keeps both; the digest is what is pulled).
"""

import re

from keel.image import digest as _digest
from keel.image.errors import ImageError, ReferenceError_

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
NAME_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_HEX64_RE = re.compile(r"[a-f0-9]{64}")


class Reference:
    """A parsed, normalised reference: registry, repository, tag (or None), digest (or None)."""

    __slots__ = ("registry", "repository", "tag", "digest", "short")

    def __init__(self, registry: str, repository: str, tag: str | None = None,
                 digest: str | None = None, short: bool = False):
        self.registry = registry
        self.repository = repository
        self.tag = tag
        self.digest = digest
        self.short = short

    @property
    def name(self) -> str:
        """registry/repository, no tag or digest: "docker.io/library/busybox"."""
        return f"{self.registry}/{self.repository}"

    def _suffixed(self, s: str) -> str:
        """s with ":tag" and "@digest" when the reference has them."""
        if self.tag:
            s += ":" + self.tag
        if self.digest:
            s += "@" + self.digest
        return s

    def __str__(self) -> str:
        return self._suffixed(self.name)

    def __repr__(self) -> str:
        return f"Reference({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Reference) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def familiar(self) -> str:
        """The short spelling docker prints: "busybox:latest", "user/app:1", "quay.io/a/b:t"."""
        if self.registry == DEFAULT_REGISTRY:
            repo = self.repository
            if repo.startswith("library/") and repo.count("/") == 1:
                repo = repo[len("library/"):]
            return self._suffixed(repo)
        return self._suffixed(self.name)

    def with_tag(self, tag: str) -> "Reference":
        if not _TAG_RE.fullmatch(tag or ""):
            raise ReferenceError_(f"invalid tag {tag!r}: must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")
        return Reference(self.registry, self.repository, tag, None, self.short)

    def with_digest(self, d: str) -> "Reference":
        try:
            _digest.parse(d)
        except ImageError as e:
            raise ReferenceError_(str(e)) from None
        return Reference(self.registry, self.repository, self.tag, d, self.short)


def _split_domain(name: str, default_registry: str, normalize_library: bool):
    """(registry, repository, short) for a name without tag and digest."""
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        registry, repository, short = first, rest, False
    else:
        registry, repository, short = default_registry, name, True
    if registry == "index.docker.io":
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and normalize_library and "/" not in repository:
        repository = "library/" + repository
    return registry, repository, short


def parse(s: str, default_registry: str = DEFAULT_REGISTRY, normalize_library: bool = True) -> Reference:
    """Parse and normalise `s`; ReferenceError_ naming `s` and the fault when malformed."""
    if not isinstance(s, str) or not s:
        raise ReferenceError_(f"invalid reference {s!r}: empty")
    if s != s.strip() or any(c.isspace() for c in s):
        raise ReferenceError_(f"invalid reference {s!r}: contains whitespace")

    rest, at, dig = s.partition("@")
    if at:
        if "@" in dig:
            raise ReferenceError_(f"invalid reference {s!r}: more than one '@'")
        try:
            _digest.parse(dig)
        except ImageError as e:
            raise ReferenceError_(f"invalid reference {s!r}: {e}") from None
    else:
        dig = None

    # the tag is after the last ':' that comes after the last '/' (a ':' before it is a port)
    tag = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise ReferenceError_(f"invalid reference {s!r}: invalid tag {tag!r}")
    name = rest
    if not name:
        raise ReferenceError_(f"invalid reference {s!r}: empty name")
    if len(name) > NAME_MAX:
        raise ReferenceError_(f"invalid reference {s!r}: name longer than {NAME_MAX} characters")

    first, slash, remainder = name.partition("/")
    is_domain = slash and ("." in first or ":" in first or first == "localhost" or first.lower() != first)
    if is_domain:
        if not _DOMAIN_RE.fullmatch(first):
            raise ReferenceError_(f"invalid reference {s!r}: invalid registry {first!r}")
        path = remainder
    else:
        path = name
    if not _PATH_RE.fullmatch(path):
        if path.lower() != path and _PATH_RE.fullmatch(path.lower()):
            raise ReferenceError_(f"invalid reference {s!r}: repository name must be lowercase")
        raise ReferenceError_(f"invalid reference {s!r}: invalid repository name {path!r}")
    if not is_domain and _HEX64_RE.fullmatch(name):
        raise ReferenceError_(f"invalid reference {s!r}: a repository name cannot be 64 hex "
                              "characters (that is an image id)")

    registry, repository, short = _split_domain(name, default_registry, normalize_library)
    if tag is None and dig is None:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, dig, short)


def is_short_name(s: str) -> bool:
    """True when `s` names no registry ("busybox", "user/app"): podman's short-name case."""
    name = s.partition("@")[0]
    first, slash, _ = name.partition("/")
    return not (slash and ("." in first or ":" in first or first == "localhost" or first.lower() != first))


def try_parse(s: str, **kw) -> Reference | None:
    try:
        return parse(s, **kw)
    except ReferenceError_:
        return None
