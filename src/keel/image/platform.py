"""Platforms, spelled "os/arch[/variant]" ("linux/arm64/v8"): parsed with docker's architecture
aliases (x86_64 is amd64, aarch64 arm64, armhf arm/v7), this host's, the entries of an image
index that run on one, and whether an image config names another.

Variants: arm64 without one means v8 and arm v7 (as containerd's platforms package assumes);
asked without a variant, any variant of the architecture will do, the default one first.
"""

import os

from keel.image.errors import ImageError

ARCH_ALIASES = {"x86_64": ("amd64", None), "x86-64": ("amd64", None), "aarch64": ("arm64", None),
                "armhf": ("arm", "v7"), "armel": ("arm", "v6"), "i386": ("386", None),
                "i686": ("386", None)}
DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


def _normal(arch: str, variant: str | None) -> tuple[str, str | None]:
    if arch in ARCH_ALIASES:
        arch, v = ARCH_ALIASES[arch]
        variant = variant or v
    return arch, variant


def parse(s: str) -> tuple[str, str, str | None]:
    """("linux", "arm64", "v8") from "linux/arm64/v8"; ImageError for anything else."""
    parts = (s or "").strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"invalid platform {s!r}: expected os/arch[/variant]")
    arch, variant = _normal(parts[1].lower(), parts[2].lower() if len(parts) == 3 else None)
    return parts[0].lower(), arch, variant


def host() -> str:
    """This machine's platform: "linux/amd64", "linux/arm64", "linux/arm/v7"."""
    machine = os.uname().machine.lower()
    if machine.startswith("armv") and machine[4:5].isdigit():
        return f"linux/arm/v{machine[4]}"
    arch, variant = _normal(machine, None)
    return f"linux/{arch}" + (f"/{variant}" if variant else "")


def to_string(p: dict) -> str:
    """"os/arch[/variant]" of an OCI platform object ("?" for a missing part)."""
    s = f"{p.get('os') or '?'}/{p.get('architecture') or '?'}"
    return s + (f"/{p['variant']}" if p.get("variant") else "")


def matches(manifests: list, platform: str) -> list[dict]:
    """The descriptors of an index's `manifests` that run on `platform`, best first."""
    want_os, want_arch, want_variant = parse(platform)
    default = DEFAULT_VARIANT.get(want_arch)
    found = []
    for d in manifests:
        p = d.get("platform") if isinstance(d, dict) else None
        if not isinstance(p, dict):
            continue
        arch, variant = _normal(str(p.get("architecture", "")).lower(), p.get("variant"))
        if str(p.get("os", "")).lower() != want_os or arch != want_arch:
            continue
        have = str(variant or default or "").lower()
        if want_variant is not None and have != want_variant:
            continue
        found.append((0 if have == (want_variant or default or "") else 1, d))
    return [d for _, d in sorted(found, key=lambda rd: rd[0])]


def available(manifests: list) -> list[str]:
    """The platforms an index offers (its attestation entries, os "unknown", left out)."""
    return [to_string(d["platform"]) for d in manifests
            if isinstance(d, dict) and isinstance(d.get("platform"), dict)
            and d["platform"].get("os") not in (None, "unknown")]


def mismatch(config: dict, platform: str) -> str | None:
    """The platform an image config names when it is not `platform`, else None. A config
    naming no os or architecture matches anything; variants are compared when both sides
    have one (the architecture's default variant standing in for a missing one)."""
    want_os, want_arch, want_variant = parse(platform)
    os_ = str(config.get("os") or "").lower()
    arch, variant = _normal(str(config.get("architecture") or "").lower(),
                            str(config.get("variant") or "").lower() or None)
    have = to_string({"os": os_, "architecture": arch, "variant": variant})
    if (os_ and os_ != want_os) or (arch and arch != want_arch):
        return have
    have_variant = variant or DEFAULT_VARIANT.get(arch)
    if want_variant and have_variant and have_variant != want_variant:
        return have
    return None
