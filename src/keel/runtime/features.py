"""`features`: what keel-runtime really implements, in the runtime-spec features.md shape."""

import os

from keel.kernel.caps import CAPS, last_cap
from keel.oci.config import HOOK_KINDS, NAMESPACE_FLAGS
from keel.runtime.rootfs import PROPAGATION, _FLAGS

OCI_VERSION_MIN = "1.0.0"
OCI_VERSION_MAX = "1.1.0"


def features():
    namespaces = [ns for ns in NAMESPACE_FLAGS
                  if ns != "time" or os.path.exists("/proc/self/ns/time")]
    try:
        from keel.kernel import seccomp

        seccomp_features = seccomp.features()
    except Exception:  # noqa: BLE001 - no libseccomp: report it disabled, never claim it
        seccomp_features = {"enabled": False}
    from keel.runtime.process import apparmor_enabled

    from keel import __version__

    return {
        "ociVersionMin": OCI_VERSION_MIN,
        "ociVersionMax": OCI_VERSION_MAX,
        "hooks": list(HOOK_KINDS),
        "mountOptions": sorted(set(_FLAGS) | set(PROPAGATION) | {"tmpcopyup"}),
        "linux": {
            "namespaces": namespaces,
            "capabilities": list(CAPS[: last_cap() + 1]),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False, "rdma": False},
            "seccomp": seccomp_features,
            "apparmor": {"enabled": apparmor_enabled()},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {"org.keel.runtime.version": __version__},
    }
