"""Seccomp profiles for one container: a file given with `--security-opt seccomp=FILE`
(OCI form, or Docker's with archMap and includes/excludes by capability, arch and kernel
version, as containers-common's seccomp.json) or keel's default (seccomp_default), resolved
into the OCI `linux.seccomp` for the container's capabilities and this machine's arch."""

import copy
import json
import os
import re
import stat

from keel.engine.errors import EngineError
from keel.engine.flagvalues import fail
from keel.image.bundle import DOCKER_CAPS

MAX_PROFILE = 4 << 20


def load_profile(path, where):
    try:
        # O_NONBLOCK: a fifo named as the profile is refused below, not waited on
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                fail(f"{where}: not a regular file")
            data = f.read(MAX_PROFILE + 1)
        if len(data) > MAX_PROFILE:
            fail(f"{where}: larger than {MAX_PROFILE >> 20} MiB")
        prof = json.loads(data)
    except OSError as e:
        fail(f"{where}: {(e.strerror or str(e)).lower()}")
    except ValueError as e:
        fail(f"{where}: not a JSON seccomp profile: {e}")
    if not isinstance(prof, dict):
        fail(f"{where}: not a JSON seccomp profile: expected an object")
    try:
        seccomp_for(prof, DOCKER_CAPS)   # every field checked now, before a container exists
    except EngineError as e:
        fail(f"{where}: {e}")
    return {"path": os.path.abspath(path), "profile": prof}


def _native_arch():
    return {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64", "ppc64le": "SCMP_ARCH_PPC64LE",
            "s390x": "SCMP_ARCH_S390X", "riscv64": "SCMP_ARCH_RISCV64"}.get(os.uname().machine)


def _kernel_version():
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def seccomp_for(profile: dict, caps) -> dict:
    """An OCI `linux.seccomp` from a profile in Docker's format (archMap, entries with
    includes/excludes of caps, arches, minKernel) or already in OCI form, for a container
    holding `caps`. Checked with keel.kernel.seccomp (EngineError naming the field)."""
    from keel.kernel import seccomp as _seccomp
    from keel.kernel.errors import KernelError

    caps = set(caps)
    arch = _native_arch()
    # entries name arches as Go does (GOARCH), the way Docker's profiles are written
    goarch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    out = {k: copy.deepcopy(v) for k, v in profile.items()
           if k not in ("archMap", "syscalls", "architectures")}
    arches = list(profile.get("architectures") or [])
    for entry in profile.get("archMap") or []:
        if isinstance(entry, dict) and entry.get("architecture") == arch:
            arches = [arch] + list(entry.get("subArchitectures") or [])
    if arches:
        out["architectures"] = arches
    if not isinstance(profile.get("syscalls") or [], list):
        fail("syscalls: expected a list")
    if not isinstance(profile.get("archMap") or [], list):
        fail("archMap: expected a list")
    syscalls = []
    for i, entry in enumerate(profile.get("syscalls") or []):
        if not isinstance(entry, dict):
            fail(f"syscalls[{i}]: expected an object")
        inc, exc = entry.get("includes") or {}, entry.get("excludes") or {}
        for what, part in (("includes", inc), ("excludes", exc)):
            if not isinstance(part, dict):
                fail(f"syscalls[{i}].{what}: expected an object")
            for key in ("caps", "arches"):
                if not isinstance(part.get(key) or [], list) or \
                        not all(isinstance(x, str) for x in part.get(key) or []):
                    fail(f"syscalls[{i}].{what}.{key}: expected a list of strings")
        if inc.get("caps") and not set(inc["caps"]) <= caps:
            continue
        if exc.get("caps") and set(exc["caps"]) & caps:
            continue
        if inc.get("arches") and goarch not in inc["arches"]:
            continue
        if exc.get("arches") and goarch in exc["arches"]:
            continue
        if inc.get("minKernel"):
            m = re.match(r"(\d+)\.(\d+)", str(inc["minKernel"]))
            if m and _kernel_version() < (int(m.group(1)), int(m.group(2))):
                continue
        e = {k: v for k, v in entry.items() if k not in ("includes", "excludes", "comment", "name")}
        if entry.get("name") and not entry.get("names"):
            e["names"] = [entry["name"]]
        syscalls.append(e)
    out["syscalls"] = syscalls
    try:
        _seccomp.validate(out)
    except KernelError as e:
        fail(str(e))
    return out
