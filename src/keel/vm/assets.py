"""The guest's boot files in keel's cache: Debian's cloud kernel, its modules, the agent, an initramfs.

The kernel package is fetched with `apt-get download` and unpacked with `dpkg -x` into the
cache, never installed on the host. microvm boots a PVH ELF, so the uncompressed vmlinux
is cut out of the bzImage. busybox's depmod indexes the modules; the initramfs carries only
the agent (as /init) and the modules it loads, in dependency order (lib/modules/keel.order).
Everything is built once per kernel and agent source, under a lock, and written atomically.

    python -m keel.vm.assets   # fetch and build now (the Makefile's vm-assets target)
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile

from keel.vm.errors import VMError

CACHE_ENV = "KEEL_VM_CACHE"
DEFAULT_CACHE = "/var/cache/keel/vm"
KERNEL_PACKAGE = "linux-image-cloud-amd64"
# What the guest needs: the virtio-mmio transport, the control port, virtiofs; overlay and
# erofs for images kept as layers or read-only disks; virtio-blk for those disks; virtio-net for
# a container network extended into the VM.
MODULES = ("virtio_mmio", "virtio_console", "virtiofs", "overlay", "erofs", "virtio_blk", "virtio_net")
AGENT_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "agent", "agent.c")


def cache_dir():
    return os.environ.get(CACHE_ENV) or DEFAULT_CACHE


class Assets:
    """Paths of one ready guest: kernel (vmlinux), initramfs, kernel release."""

    __slots__ = ("vmlinux", "initramfs", "release")

    def __init__(self, vmlinux, initramfs, release):
        self.vmlinux, self.initramfs, self.release = vmlinux, initramfs, release


def _run(argv, what, cwd=None):
    try:
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise VMError(f"{what}: {argv[0]} is not installed") from None
    if r.returncode != 0:
        msg = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        raise VMError(f"{what}: {' '.join(argv)}: {msg}")
    return r.stdout


def _atomic_write(path, data, mode=0o644):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fetch_kernel(cache):
    """Download and unpack the cloud kernel; returns its release (e.g. 6.1.0-56-cloud-amd64)."""
    work = tempfile.mkdtemp(prefix=".fetch-", dir=cache)
    try:
        try:
            _run(["apt-get", "download", KERNEL_PACKAGE], "fetch the guest kernel", cwd=work)
        except VMError:
            # package lists missing or stale (a fresh machine, a point release since): refresh once
            _run(["apt-get", "update"], "refresh the package lists")
            _run(["apt-get", "download", KERNEL_PACKAGE], "fetch the guest kernel", cwd=work)
        meta = [f for f in os.listdir(work) if f.endswith(".deb")][0]
        depends = _run(["dpkg-deb", "-f", os.path.join(work, meta), "Depends"], "read " + meta)
        image = next((d.strip().split()[0] for d in depends.split(",")
                      if d.strip().startswith("linux-image-")), None)
        if not image:
            raise VMError(f"{meta}: depends on no linux-image package ({depends.strip()!r})")
        _run(["apt-get", "download", image], "fetch the guest kernel", cwd=work)
        deb = next(f for f in os.listdir(work) if f.startswith(image + "_") and f.endswith(".deb"))
        tree = os.path.join(work, "tree")
        _run(["dpkg", "-x", os.path.join(work, deb), tree], "unpack " + deb)
        release = os.listdir(os.path.join(tree, "lib", "modules"))[0]
        final = os.path.join(cache, "kernels", release)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        if not os.path.isdir(final):
            os.rename(tree, final)
        return release
    finally:
        shutil.rmtree(work, ignore_errors=True)


def extract_vmlinux(bzimage):
    """The uncompressed ELF kernel inside a bzImage (what PVH boot needs)."""
    with open(bzimage, "rb") as f:
        data = f.read()
    import gzip
    import lzma

    candidates = (
        (b"\x02\x21\x4c\x18", lambda blob: _decompress_cli(["lz4", "-dc"], blob)),
        (b"\x28\xb5\x2f\xfd", lambda blob: _decompress_cli(["zstd", "-dcq"], blob)),
        (b"\xfd7zXZ\x00", lambda blob: lzma.LZMADecompressor().decompress(blob)),
        (b"\x1f\x8b\x08", lambda blob: gzip.GzipFile(fileobj=_io(blob)).read()),
    )
    for magic, unpack in candidates:
        at = data.find(magic)
        while at != -1:
            try:
                out = unpack(data[at:])
            except (OSError, EOFError, lzma.LZMAError, VMError):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            at = data.find(magic, at + 1)
    raise VMError(f"{bzimage}: no compressed ELF kernel found inside")


def _io(blob):
    import io

    return io.BytesIO(blob)


def _decompress_cli(argv, blob):
    try:
        # The compressed stream is followed by the rest of the bzImage: the tools stop at its end
        # and complain about the trailing bytes, so their exit status is not the answer.
        r = subprocess.run(argv, input=blob, capture_output=True)
    except FileNotFoundError:
        raise VMError(f"{argv[0]} is not installed (needed to unpack the guest kernel)") from None
    return r.stdout


def module_order(moddir):
    """Module files (relative to moddir) in load order for MODULES, from modules.dep."""
    deps = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            mod, _, rest = line.partition(":")
            deps[mod.strip()] = rest.split()
    by_name = {os.path.basename(p).split(".ko")[0].replace("-", "_"): p for p in deps}
    order = []
    for name in MODULES:
        path = by_name.get(name)
        if path is None:
            raise VMError(f"guest kernel: module {name} not found in {moddir}/modules.dep")
        # modules.dep lists a module's dependencies deepest last: load them in reverse.
        for p in list(reversed(deps[path])) + [path]:
            if p not in order:
                order.append(p)
    return order


def _cpio(entries):
    """An uncompressed newc archive of (name, mode, data, rdev) entries."""
    out = bytearray()
    ino = 1
    for name, mode, data, rdev in list(entries) + [("TRAILER!!!", 0, b"", (0, 0))]:
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0))
        out += hdr.encode() + nb
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
        ino += 1
    return bytes(out)


def build_agent(cache):
    with open(AGENT_SOURCE, "rb") as f:
        src = f.read()
    digest = hashlib.sha256(src).hexdigest()[:16]
    path = os.path.join(cache, f"agent-{digest}")
    if os.path.exists(path):
        return path
    tmp = path + ".build"
    _run(["gcc", "-static", "-Os", "-s", "-Wall", "-o", tmp, AGENT_SOURCE], "build the guest agent")
    os.rename(tmp, path)
    return path


def ensure(cache=None):
    """Fetch and build what is missing; returns Assets. Safe to call from many processes at once."""
    cache = cache or cache_dir()
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError as e:
        raise VMError(f"cache {cache}: {e.strerror.lower()}") from None
    ready = os.path.join(cache, "current")
    got = _read_current(cache, ready)
    if got:
        return got
    with open(os.path.join(cache, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _remove_abandoned(cache)
        got = _read_current(cache, ready)
        if got:
            return got
        kernels = os.path.join(cache, "kernels")
        releases = sorted(os.listdir(kernels)) if os.path.isdir(kernels) else []
        release = releases[-1] if releases else _fetch_kernel(cache)
        tree = os.path.join(kernels, release)
        moddir = os.path.join(tree, "lib", "modules", release)
        vmlinux = os.path.join(tree, "vmlinux")
        if not os.path.exists(vmlinux):
            _atomic_write(vmlinux, extract_vmlinux(os.path.join(tree, "boot", f"vmlinuz-{release}")))
        if not os.path.exists(os.path.join(moddir, "modules.dep")):
            _run(["busybox", "depmod", "-b", tree, release], "index the guest kernel's modules")
        agent = build_agent(cache)
        order = module_order(moddir)
        entries = [("dev", 0o40755, b"", (0, 0)), ("dev/console", 0o20600, b"", (5, 1)),
                   ("proc", 0o40555, b"", (0, 0)), ("sys", 0o40555, b"", (0, 0)),
                   ("keel", 0o40755, b"", (0, 0)), ("lib", 0o40755, b"", (0, 0)),
                   ("lib/modules", 0o40755, b"", (0, 0))]
        names = []
        for rel in order:
            base = os.path.basename(rel)
            with open(os.path.join(moddir, rel), "rb") as f:
                entries.append((f"lib/modules/{base}", 0o100644, f.read(), (0, 0)))
            names.append(f"/lib/modules/{base}")
        entries.append(("lib/modules/keel.order", 0o100644, ("\n".join(names) + "\n").encode(), (0, 0)))
        with open(agent, "rb") as f:
            entries.append(("init", 0o100755, f.read(), (0, 0)))
        blob = _cpio(entries)
        initramfs = os.path.join(cache, f"initramfs-{release}-{hashlib.sha256(blob).hexdigest()[:16]}.cpio")
        if not os.path.exists(initramfs):
            _atomic_write(initramfs, blob)
        _atomic_write(ready, f"{release}\n{vmlinux}\n{initramfs}\n{_source_digest()}\n".encode())
        _remove_old(cache, keep=(agent, initramfs))
        return Assets(vmlinux, initramfs, release)


def _remove_abandoned(cache, age=600):
    """Work directories and temp files of a fetch, build or probe that was killed half-way."""
    import time

    for name in os.listdir(cache):
        if name.startswith((".fetch-", ".probe-", ".tmp-", ".accel-")):
            path = os.path.join(cache, name)
            try:
                if time.time() - os.lstat(path).st_mtime > age:
                    shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
            except OSError:
                pass


def _remove_old(cache, keep, age=600):
    """Agents and initramfs images of earlier agent sources, once no create can still be about
    to boot with them (QEMU reads the image at start)."""
    import time

    for name in os.listdir(cache):
        path = os.path.join(cache, name)
        if name.startswith(("agent-", "initramfs-")) and path not in keep:
            try:
                if time.time() - os.stat(path).st_mtime > age:
                    os.unlink(path)
            except OSError:
                pass


def _source_digest():
    with open(AGENT_SOURCE, "rb") as f:
        return hashlib.sha256(f.read() + repr(MODULES).encode()).hexdigest()[:16]


def _read_current(cache, ready):
    try:
        with open(ready) as f:
            release, vmlinux, initramfs, digest = f.read().split("\n")[:4]
    except (OSError, ValueError):
        return None
    # A changed agent or module list means a new initramfs; a vanished file means a rebuild.
    if digest != _source_digest() or not (os.path.exists(vmlinux) and os.path.exists(initramfs)):
        return None
    return Assets(vmlinux, initramfs, release)


if __name__ == "__main__":
    a = ensure()
    print(f"guest kernel {a.release}\nvmlinux {a.vmlinux}\ninitramfs {a.initramfs}")
