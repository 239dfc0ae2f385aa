"""Registry settings read from a containers-registries.conf(5) file.

keel reads its own /etc/keel/registries.conf when it exists, otherwise
/etc/containers/registries.conf (the file podman, skopeo and buildah share), plus
the drop-ins of the chosen file's `<file>.d/*.conf` directory in lexical order,
a drop-in's fields replacing the ones set before it (as containers/image does).
Both the v2 TOML format and the old v1 tables ([registries.search] ...) are read.

What the settings mean here:
  unqualified-search-registries  the registries a short name ("busybox") is tried
                                 at, in order; when none is configured keel uses
                                 docker.io, as docker does
  [aliases]                      short name -> fully qualified name, used first
  short-name-mode                keel never prompts, so "enforcing" with more than
                                 one candidate is an error unless the name is an
                                 alias (podman without a terminal does the same);
                                 "permissive" (keel's default when unset) and
                                 "disabled" try each candidate in turn
  [[registry]] prefix/location   rewrites the matching prefix of a reference
  insecure                       plain http (or TLS without verification) allowed
  blocked                        pulls and pushes refused
  [[registry.mirror]]            tried in order before the location; with
                                 pull-from-mirror = "digest-only"/"tag-only"
                                 (or the registry's mirror-by-digest-only) a
                                 mirror serves only the matching references

TLS trust: certificates under `certs.d/<host[:port]>/` (`*.crt` CA files,
`*.cert` + `*.key` client pairs) in /etc/keel/certs.d, /etc/containers/certs.d
and /etc/docker/certs.d; see certs_dir_for().
"""

from __future__ import annotations

import glob
import os

from keel.image.errors import ImageError, ReferenceError_, RegistryError

KEEL_REGISTRIES_CONF = "/etc/keel/registries.conf"
SYSTEM_REGISTRIES_CONF = "/etc/containers/registries.conf"
DEFAULT_PATHS = (KEEL_REGISTRIES_CONF, SYSTEM_REGISTRIES_CONF)
CERTS_DIRS = ("/etc/keel/certs.d", "/etc/containers/certs.d", "/etc/docker/certs.d")
DEFAULT_SEARCH_REGISTRY = "docker.io"
SHORT_NAME_MODES = ("enforcing", "permissive", "disabled")
PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")


class RegistriesConfError(ImageError):
    """A registries.conf that cannot be read (names the file and the field)."""


class _Record:
    """Plain records compared by their fields (dataclasses would cost ~5 ms of imports on
    every `keel pull`)."""
    _fields: tuple = ()
    __hash__ = None

    def __eq__(self, other):
        return type(other) is type(self) and all(getattr(self, f) == getattr(other, f)
                                                 for f in self._fields)

    def __repr__(self):
        return f"{type(self).__name__}(" + ", ".join(f"{f}={getattr(self, f)!r}"
                                                     for f in self._fields) + ")"


class Mirror(_Record):
    _fields = ("location", "insecure", "pull_from_mirror")

    def __init__(self, location: str, insecure: bool = False, pull_from_mirror: str = "all"):
        self.location, self.insecure, self.pull_from_mirror = location, insecure, pull_from_mirror


class RegistryEntry(_Record):
    _fields = ("prefix", "location", "insecure", "blocked", "mirror_by_digest_only", "mirrors")

    def __init__(self, prefix: str, location: str, insecure: bool = False, blocked: bool = False,
                 mirror_by_digest_only: bool = False, mirrors: list[Mirror] | None = None):
        self.prefix, self.location, self.insecure, self.blocked = prefix, location, insecure, blocked
        self.mirror_by_digest_only = mirror_by_digest_only
        self.mirrors = list(mirrors or [])

    def matches(self, name: str) -> bool:
        """Whether `name` ("host[:port]/repo[:tag|@digest]") falls under this prefix."""
        return _prefix_len(self.prefix, name) >= 0


class Source(_Record):
    """One place to pull a reference from: the location or one of its mirrors."""
    _fields = ("registry", "repository", "insecure", "mirror")

    def __init__(self, registry: str, repository: str, insecure: bool, mirror: bool = False):
        self.registry, self.repository, self.insecure, self.mirror = registry, repository, insecure, mirror


class RegistriesConf(_Record):
    _fields = ("unqualified_search_registries", "registries", "aliases", "short_name_mode", "paths")

    def __init__(self, unqualified_search_registries=None, registries=None, aliases=None,
                 short_name_mode: str = "permissive", paths=None):
        self.unqualified_search_registries: list[str] = list(unqualified_search_registries or [])
        self.registries: list[RegistryEntry] = list(registries or [])
        self.aliases: dict[str, str] = dict(aliases or {})
        self.short_name_mode = short_name_mode      # when the files do not say
        self.paths: list[str] = list(paths or [])   # the files read

    # -- lookups ---------------------------------------------------------------
    def find(self, name: str) -> RegistryEntry | None:
        """The [[registry]] entry with the longest prefix matching `name`."""
        best, best_len = None, -1
        for entry in self.registries:
            n = _prefix_len(entry.prefix, name)
            if n > best_len:
                best, best_len = entry, n
        return best

    def is_insecure(self, host: str) -> bool:
        entry = self.find(host)
        if entry is not None and _prefix_len(entry.prefix, host) >= 0 and entry.insecure:
            return True
        # a mirror marked insecure is insecure wherever it is used
        return any(m.insecure and m.location.split("/")[0] == host
                   for e in self.registries for m in e.mirrors)

    def is_blocked(self, ref) -> bool:
        entry = self.find(_name_of(ref))
        return bool(entry and entry.blocked)

    def sources(self, ref) -> list[Source]:
        """Where to pull `ref` from, in order: mirrors first, then the location.

        Raises RegistryError if the reference is blocked."""
        name = _name_of(ref)
        entry = self.find(name)
        if entry is None:
            return [Source(ref.registry, ref.repository, insecure=False)]
        if entry.blocked:
            raise RegistryError(f"registry blocked by registries.conf: {name}")
        out = []
        by_digest = ref.digest is not None
        for m in entry.mirrors:
            mode = m.pull_from_mirror
            if entry.mirror_by_digest_only and mode == "all":
                mode = "digest-only"
            if (mode == "digest-only" and not by_digest) or (mode == "tag-only" and by_digest):
                continue
            out.append(_rewrite(entry.prefix, m.location, ref, m.insecure, mirror=True))
        out.append(_rewrite(entry.prefix, entry.location, ref, entry.insecure, mirror=False))
        return out

    def resolve(self, name: str, default_registry: str = DEFAULT_SEARCH_REGISTRY) -> list:
        """Candidate References for an image name, in the order to try them.

        A fully qualified name (its first component has a "." or ":" or is
        "localhost") or a name with a digest is itself the only candidate. A short
        name is looked up in [aliases] first, then tried at each of the
        unqualified-search-registries (docker.io when none is set)."""
        from keel.image import reference

        if not reference.is_short_name(name):
            return [reference.parse(name)]
        reference.parse(name)                  # ReferenceError_ naming `name` if malformed
        bare, suffix = _split_suffix(name)
        alias = self.aliases.get(bare)
        if alias is not None:
            return [reference.parse(alias + suffix)]
        registries = self.unqualified_search_registries or [default_registry]
        if self.short_name_mode == "enforcing" and len(registries) > 1:
            raise ReferenceError_(
                f"short name {name!r} is ambiguous: it could be at "
                + ", ".join(registries)
                + " (short-name-mode is enforcing: use a fully qualified name or an [aliases] entry)")
        return [reference.parse(f"{r}/{name}") for r in registries]


# -- loading -------------------------------------------------------------------

def load(paths=None) -> RegistriesConf:
    """Read the first existing file of `paths` (default: keel's own, then the
    system one) and its drop-ins. No file at all gives the empty configuration."""
    conf = RegistriesConf()
    for path in (DEFAULT_PATHS if paths is None else paths):
        if path and os.path.isfile(path):
            _merge(conf, path)
            dropins = sorted(glob.glob(os.path.join(path + ".d", "*.conf")))
            for d in dropins:
                _merge(conf, d)
            break
    return conf


def loads(text: str, path: str = "<string>") -> RegistriesConf:
    """Parse one registries.conf text (for tests and callers that hold the text)."""
    conf = RegistriesConf()
    _apply(conf, _parse_toml(text, path), path)
    return conf


def _parse_toml(text: str, path: str) -> dict:
    if all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
        return {}                 # e.g. Debian's stock file, all comments: skip importing tomllib
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RegistriesConfError(f"{path}: invalid toml: {e}") from None


def _merge(conf: RegistriesConf, path: str) -> None:
    try:
        with open(path, "rb") as f:
            text = f.read().decode()
    except (OSError, UnicodeDecodeError) as e:
        raise RegistriesConfError(f"{path}: {e}") from None
    _apply(conf, _parse_toml(text, path), path)


def _apply(conf: RegistriesConf, data: dict, path: str) -> None:
    conf.paths.append(path)
    v1 = data.get("registries")
    if isinstance(v1, dict):       # version 1: [registries.search] / .insecure / .block
        _apply_v1(conf, v1, path)
        return
    if "unqualified-search-registries" in data:
        conf.unqualified_search_registries = _str_list(data, "unqualified-search-registries", path)
    if "short-name-mode" in data:
        mode = data["short-name-mode"]
        if mode not in SHORT_NAME_MODES:
            raise RegistriesConfError(f"{path}: short-name-mode: {mode!r} is not one of "
                                      + ", ".join(SHORT_NAME_MODES))
        conf.short_name_mode = mode
    aliases = data.get("aliases", {})
    if not isinstance(aliases, dict):
        raise RegistriesConfError(f"{path}: aliases: not a table")
    for k, v in aliases.items():
        if not isinstance(v, str):
            raise RegistriesConfError(f"{path}: aliases.{k}: not a string")
        if not _is_qualified(v):
            raise RegistriesConfError(f"{path}: aliases.{k}: {v!r} is not fully qualified")
        conf.aliases[k] = v
    regs = data.get("registry", [])
    if not isinstance(regs, list):
        raise RegistriesConfError(f"{path}: registry: not an array of tables")
    for i, r in enumerate(regs):
        entry = _registry_entry(r, f"{path}: registry[{i}]")
        conf.registries = [e for e in conf.registries if e.prefix != entry.prefix] + [entry]


def _apply_v1(conf: RegistriesConf, v1: dict, path: str) -> None:
    def hosts(table):
        t = v1.get(table, {})
        if not isinstance(t, dict) or not isinstance(t.get("registries", []), list):
            raise RegistriesConfError(f"{path}: registries.{table}.registries: not a list")
        return [str(h) for h in t.get("registries", [])]

    search = hosts("search")
    if search:
        conf.unqualified_search_registries = search
    for h in hosts("insecure"):
        _v1_entry(conf, h).insecure = True
    for h in hosts("block"):
        _v1_entry(conf, h).blocked = True


def _v1_entry(conf, host):
    e = conf.find(host)
    if e is None or e.prefix != host:
        e = RegistryEntry(prefix=host, location=host)
        conf.registries.append(e)
    return e


def _registry_entry(r, where) -> RegistryEntry:
    if not isinstance(r, dict):
        raise RegistriesConfError(f"{where}: not a table")
    location = r.get("location", "")
    prefix = r.get("prefix", "") or location
    if not isinstance(location, str) or not isinstance(prefix, str):
        raise RegistriesConfError(f"{where}: prefix/location must be strings")
    if not prefix:
        raise RegistriesConfError(f"{where}: needs a prefix or a location")
    if prefix.startswith("*.") and location:
        raise RegistriesConfError(f"{where}: a wildcard prefix {prefix!r} cannot have a location")
    mirrors = []
    for j, m in enumerate(r.get("mirror", [])):
        if not isinstance(m, dict) or not isinstance(m.get("location"), str) or not m["location"]:
            raise RegistriesConfError(f"{where}.mirror[{j}]: needs a location")
        mode = m.get("pull-from-mirror", "all")
        if mode not in PULL_FROM_MIRROR:
            raise RegistriesConfError(f"{where}.mirror[{j}]: pull-from-mirror: {mode!r} is not one of "
                                      + ", ".join(PULL_FROM_MIRROR))
        mirrors.append(Mirror(m["location"].rstrip("/"), _bool(m, "insecure", where), mode))
    return RegistryEntry(prefix=prefix.rstrip("/"), location=(location or prefix).rstrip("/"),
                         insecure=_bool(r, "insecure", where), blocked=_bool(r, "blocked", where),
                         mirror_by_digest_only=_bool(r, "mirror-by-digest-only", where),
                         mirrors=mirrors)


def _bool(d, key, where):
    v = d.get(key, False)
    if not isinstance(v, bool):
        raise RegistriesConfError(f"{where}: {key}: not a boolean")
    return v


def _str_list(d, key, where):
    v = d[key]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise RegistriesConfError(f"{where}: {key}: not a list of strings")
    return list(v)


# -- names ---------------------------------------------------------------------

def _name_of(ref) -> str:
    return f"{ref.registry}/{ref.repository}"


def _is_qualified(name: str) -> bool:
    from keel.image import reference

    return not reference.is_short_name(name)


def _split_suffix(name: str) -> tuple[str, str]:
    """("busybox", ":1.36") from "busybox:1.36"; ("a/b", "@sha256:..") from "a/b@sha256:.."."""
    at = name.find("@")
    if at >= 0:
        return name[:at], name[at:]
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        return name[:colon], name[colon:]
    return name, ""


def _prefix_len(prefix: str, name: str) -> int:
    """Length of `prefix` when it matches `name` at a path boundary, else -1."""
    if prefix.startswith("*."):
        host = name.split("/")[0]
        return len(prefix) if host.endswith(prefix[1:]) else -1
    if name == prefix:
        return len(prefix)
    if name.startswith(prefix) and name[len(prefix)] in "/:@":
        return len(prefix)
    return -1


def _rewrite(prefix, location, ref, insecure, mirror) -> Source:
    name = _name_of(ref)
    if prefix.startswith("*."):
        rest = name
    else:
        rest = location + name[len(prefix):]
    host, _, repo = rest.partition("/")
    if not repo:
        raise RegistriesConfError(f"registries.conf rewrites {name} to {rest!r}: no repository left")
    return Source(host, repo, insecure, mirror)


def certs_dir_for(host: str, dirs=CERTS_DIRS) -> str | None:
    """The first `<dir>/<host>` directory that exists, for RegistryClient(ca_dir=...)."""
    for d in dirs:
        p = os.path.join(d, host)
        if os.path.isdir(p):
            return d
    return None
