"""Find an image locally or pull it, by podman's pull policies (`keel run --pull`, the Python
client's `containers.run`).

    missing  pull only when no local image matches (the default)
    always   always pull (a failed pull is an error)
    never    never pull: a missing image is an error
    newer    pull, and when the registry cannot be reached use the local image if there is one

A short name ("busybox") matches a local image the way podman looks it up: the name as docker
would qualify it (docker.io/library/busybox:latest), then localhost/busybox, then each
unqualified-search-registry (or alias) of registries.conf. Pulling uses the same resolution as
`keel pull`. `ensure` returns (Image, name): the name is the one to record on the container
(the qualified name that matched or was pulled, or the caller's own text for an id).
"""

from keel.image.errors import ImageError, ImageNotFound, ReferenceError_, RegistryError

POLICIES = ("missing", "always", "never", "newer")


def check_policy(policy: str) -> str:
    p = (policy or "missing").lower()
    if p not in POLICIES:
        raise ImageError(f"--pull {policy!r}: must be one of {', '.join(POLICIES)}")
    return p


def _candidates(name: str, conf_loader) -> list[str]:
    from keel.image import reference

    if not reference.is_short_name(name):
        return []
    bare = name.split("@", 1)[0]
    out = ["localhost/" + bare]
    try:
        out += [str(r) for r in conf_loader().resolve(name)]
    except ImageError:
        pass  # a malformed or (enforcing mode) ambiguous short name: no more local candidates
    return out


def find_local(store, name: str, conf_loader=None):
    """(Image, name that matched) for a local image, or None."""
    try:
        return store.get(name), name
    except ReferenceError_:
        raise
    except ImageNotFound:
        pass
    conf_loader = conf_loader or _default_conf
    for cand in _candidates(name, conf_loader):
        try:
            return store.get(cand), cand
        except ImageError:
            continue
    return None


def _default_conf(path=None):
    from keel.image import registries

    return registries.load([path]) if path else registries.load()


def ensure(store, name: str, policy: str = "missing", *, registries_conf: str | None = None,
           progress_factory=None, **pull_kw):
    """The image `name` under `policy`: (Image, name to record). registries_conf: a
    registries.conf path (default keel's, then the system's), read only when needed. Pull
    errors propagate (RegistryError; ImageNotFound when the policy is never).
    progress_factory: makes the Progress display, called only when a pull starts."""
    policy = check_policy(policy)
    cached = {}

    def conf_loader():
        if "conf" not in cached:
            cached["conf"] = _default_conf(registries_conf)
        return cached["conf"]

    local = None if policy == "always" else find_local(store, name, conf_loader)
    if local is not None and policy in ("missing", "never"):
        return local
    if policy == "never":
        raise ImageNotFound(f"{name}: image not known locally (pull policy is never)")
    if local is not None and _is_id(name, local[0]):
        return local  # an id names exactly one image: there is nothing newer to pull
    from keel.image.registry import pull_image

    progress = progress_factory() if progress_factory else None
    try:
        img = pull_image(store, name, conf=conf_loader(), progress=progress, **pull_kw)
    except RegistryError as e:
        if policy == "newer" and local is not None:
            return local
        if local is None:
            raise RegistryError(f"{name}: image not found locally, and pulling it failed: {e}",
                                status=e.status) from None
        raise
    finally:
        if progress is not None:
            progress.close()
    found = find_local(store, name, conf_loader)
    if found is not None and found[0].id == img.id:
        return found
    return img, (img.names[0] if img.names else img.id)


def _is_id(name: str, img) -> bool:
    s = name[len("sha256:"):] if name.startswith("sha256:") else name
    return len(s) >= 4 and all(c in "0123456789abcdef" for c in s) and img.id.partition(":")[2].startswith(s)
