"""`keel-vm features`: what keel-vm implements, in the runtime-spec features.md shape, plus the VM."""

import os

from keel.runtime.rootfs import PROPAGATION, _FLAGS


def features():
    from keel import __version__
    from keel.kernel.caps import CAPS
    from keel.vm import assets as vm_assets
    from keel.vm.accel import choose
    from keel.vm.errors import VMError

    vm = {"hypervisor": "qemu", "machine": "microvm", "sharedFs": "virtiofs",
          "controlChannel": "virtio-serial", "agentProtocol": 1}
    try:
        cache = vm_assets.cache_dir()
        assets = vm_assets.ensure(cache)
        accel, reason = choose(assets, cache)
        vm.update(guestKernel=assets.release, accelerator=accel, acceleratorReason=reason)
    except VMError as e:
        vm.update(accelerator=None, acceleratorReason=str(e))
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],  # the host-side ones
        "mountOptions": sorted(set(_FLAGS) | set(PROPAGATION)),
        "linux": {
            "namespaces": ["pid", "network", "mount", "ipc", "uts", "cgroup"],
            "capabilities": list(CAPS),
            "cgroup": {"v1": False, "v2": False, "systemd": False, "systemdUser": False, "rdma": False},
            "seccomp": {"enabled": False},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {"org.keel.vm.version": __version__,
                        "org.keel.vm.accelerator": str(vm.get("accelerator")),
                        "org.keel.vm.cpus": str(os.cpu_count())},
        "vm": vm,
    }
