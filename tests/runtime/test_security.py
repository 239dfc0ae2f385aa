"""Regression tests for the container-escape classes runc has had, one test each."""

import hashlib
import os
import sys

import pytest

from test_process import _fds


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _host_binaries():
    """The files a /proc/<pid>/exe overwrite would hit: the interpreter and the launcher."""
    paths = {os.path.realpath(sys.executable)}
    launcher = os.path.join(os.path.dirname(sys.executable), "keel-runtime")
    if os.path.exists(launcher):
        paths.add(os.path.realpath(launcher))
    return {p: (_sha256(p), os.stat(p).st_mtime_ns) for p in sorted(paths)}


# -- CVE-2019-5736: overwriting the runtime binary through /proc/<init>/exe -----------------

def test_cve_2019_5736_init_exe_unreachable_while_created(bundle, runtime):
    before = _host_binaries()
    bundle.sh("sleep 1000").create_ok()
    pid = bundle.state()["pid"]
    # the init is still the runtime's Python interpreter, waiting for `start`
    assert os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(sys.executable)
    r = runtime("exec", bundle.id, "sh", "-c",
                "readlink /proc/1/exe; echo readlink=$?; "
                "cat /proc/1/exe > /dev/null; echo open=$?; "
                "echo x >> /proc/1/exe; echo write=$?; "
                "for f in /proc/1/fd/*; do readlink $f; cat $f > /dev/null; done; "
                "readlink /proc/1/fd/3; echo fdlink=$?; "
                "readlink /proc/1/cwd; echo cwd=$?; "
                "readlink /proc/1/root; echo root=$?; "
                "cat /proc/1/environ; echo environ=$?; "
                "cat /proc/1/mem; echo mem=$?")
    assert r.rc == 0, r
    for what in ("readlink", "open", "write", "fdlink", "cwd", "root", "environ", "mem"):
        assert f"{what}=0" not in r.out, (what, r.out, r.err)
    assert "python" not in r.out and "keel" not in r.out, r.out
    assert bundle.start().rc == 0
    assert _host_binaries() == before


def test_cve_2019_5736_exec_intermediate_not_reachable(bundle, runtime, tmp_path):
    """A running container races a new exec: the exec's runtime side must not be openable either."""
    before = _host_binaries()
    bundle.start_detached("sleep 1000")
    # scan every process the container can see for an exe it may open and that is not its own
    script = ("for p in /proc/[0-9]*; do "
              "  n=${p#/proc/}; [ $n = $$ ] && continue; "
              "  t=$(readlink $p/exe 2>/dev/null) || continue; "
              "  case $t in *python*|*keel*) echo HOSTEXE $n $t;; esac; "
              "done; echo scanned")
    for _ in range(3):
        r = runtime("exec", bundle.id, "sh", "-c", script)
        assert r.rc == 0 and "scanned" in r.out and "HOSTEXE" not in r.out, r
    assert _host_binaries() == before


def _grant_ptrace(bundle):
    caps = bundle.process.setdefault("capabilities", {})
    for s in ("bounding", "effective", "permitted"):
        caps.setdefault(s, [])
        if "CAP_SYS_PTRACE" not in caps[s]:
            caps[s].append("CAP_SYS_PTRACE")
    bundle.save()


def test_cve_2019_5736_ptrace_capable_container_sees_only_sealed_copy(bundle, runtime):
    """With CAP_SYS_PTRACE in the host user namespace non-dumpable is no guard: the runtime
    then runs from a sealed memfd copy of its interpreter, never from the host's file."""
    if "runc" in os.path.basename(runtime.argv[0]):
        pytest.skip("keel-runtime's own guard")
    before = _host_binaries()
    _grant_ptrace(bundle)
    bundle.sh("sleep 1000").create_ok()
    pid = bundle.state()["pid"]
    assert os.readlink(f"/proc/{pid}/exe").startswith("/memfd:keel-runtime"), os.readlink(f"/proc/{pid}/exe")
    r = runtime("exec", bundle.id, "sh", "-c",
                "grep CapEff /proc/self/status; readlink /proc/1/exe; "
                "echo x >> /proc/1/exe; echo write=$?")
    assert r.rc == 0, r
    assert "/memfd:keel-runtime" in r.out and "python" not in r.out, r.out
    assert "write=0" not in r.out, r.out
    assert bundle.start().rc == 0
    assert _host_binaries() == before


def test_cve_2019_5736_ptrace_exec_helpers_sealed(bundle, runtime):
    """An exec into a container whose processes may ptrace: the exec's runtime side, visible
    in the container's pid namespace, is the sealed copy too."""
    if "runc" in os.path.basename(runtime.argv[0]):
        pytest.skip("keel-runtime's own guard")
    before = _host_binaries()
    _grant_ptrace(bundle)
    bundle.start_detached("sleep 1000")
    script = ("for p in /proc/[0-9]*; do "
              "  t=$(readlink $p/exe 2>/dev/null) || continue; "
              "  case $t in *python*) echo HOSTEXE ${p#/proc/} $t;; esac; "
              "done; echo scanned")
    for _ in range(3):
        r = runtime("exec", bundle.id, "sh", "-c", script)
        assert r.rc == 0 and "scanned" in r.out and "HOSTEXE" not in r.out, r
    assert _host_binaries() == before


def test_no_sealed_copy_without_ptrace(bundle, runtime):
    """The copy costs a few ms: a container without CAP_SYS_PTRACE runs the interpreter as is."""
    if "runc" in os.path.basename(runtime.argv[0]):
        pytest.skip("keel-runtime's own guard")
    bundle.sh("sleep 1000").create_ok()
    pid = bundle.state()["pid"]
    assert os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(sys.executable)


# -- CVE-2024-21626: leaked fds and a cwd outside the container ------------------------------

@pytest.fixture
def host_dir_fd(tmp_path):
    """A directory fd on the host (as an engine might leak one), at a fixed number."""
    d = tmp_path / "hostside"
    d.mkdir()
    (d / "host-secret").write_text("s\n")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.set_inheritable(fd, True)
    yield fd
    os.close(fd)


def test_cve_2024_21626_only_stdio_in_container(bundle, runtime, host_dir_fd):
    r = bundle.args("ls", "-l", "/proc/self/fd").run(pass_fds=(host_dir_fd,))
    assert r.rc == 0, r
    assert sorted(_fds(r.out)) == [0, 1, 2], r.out


def test_cve_2024_21626_only_stdio_in_exec(bundle, runtime, host_dir_fd):
    bundle.start_detached()
    r = runtime("exec", bundle.id, "ls", "-l", "/proc/self/fd", pass_fds=(host_dir_fd,))
    assert r.rc == 0, r
    assert sorted(_fds(r.out)) == [0, 1, 2], r.out


def test_cve_2024_21626_preserve_fds(bundle, runtime, tmp_path, host_dir_fd):
    f = tmp_path / "passed"
    f.write_text("through fd 3\n")
    fd = os.open(f, os.O_RDONLY)
    try:
        r = bundle.sh("cat <&3; ls -l /proc/self/fd").run("--preserve-fds", "1", pass_fds=(host_dir_fd,),
                                                          fd_map={3: fd})
        assert r.rc == 0, r
        assert r.out.startswith("through fd 3\n")
        # fd 3 only: not the host directory fd the caller also had open
        assert sorted(_fds(r.out)) == [0, 1, 2, 3], r.out
    finally:
        os.close(fd)


def test_cve_2024_21626_exec_preserve_fds(bundle, runtime, tmp_path):
    bundle.start_detached()
    f = tmp_path / "passed"
    f.write_text("exec fd 3\n")
    fd = os.open(f, os.O_RDONLY)
    try:
        r = runtime("exec", "--preserve-fds", "1", bundle.id, "sh", "-c", "cat <&3", fd_map={3: fd})
        assert r.out == "exec fd 3\n", r
    finally:
        os.close(fd)


@pytest.mark.parametrize("n", range(3, 12))
def test_cve_2024_21626_cwd_through_proc_self_fd(bundle, runtime, host_dir_fd, n):
    """process.cwd /proc/self/fd/<n>: whatever fd n is in the init (ours, or one the caller
    leaked), the container must not start with its cwd outside the rootfs."""
    bundle.process["cwd"] = f"/proc/self/fd/{n}"
    bundle.args("sh", "-c", "ls; cat host-secret 2>/dev/null && echo ESCAPED")
    r = bundle.run(pass_fds=(host_dir_fd,))
    assert "ESCAPED" not in r.out and "host-secret" not in r.out, r
    if r.rc != 0:
        assert len(r.err_lines) == 1 and "process.cwd" in r.err, r


@pytest.mark.parametrize("n", range(3, 10))
def test_cve_2024_21626_exec_cwd_through_proc_self_fd(bundle, runtime, host_dir_fd, n):
    bundle.start_detached()
    r = runtime("exec", "--cwd", f"/proc/self/fd/{n}", bundle.id, "sh", "-c",
                "ls; cat host-secret 2>/dev/null && echo ESCAPED", pass_fds=(host_dir_fd,))
    assert "ESCAPED" not in r.out and "host-secret" not in r.out, r


def test_cve_2024_21626_cwd_is_inside_rootfs(bundle):
    bundle.process["cwd"] = "/../../../.."
    r = bundle.sh("pwd; readlink /proc/self/cwd; ls / | grep -c busybox; ls ..").run()
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[0] == "/" and lines[1] == "/"
    assert "bin" in lines[2:] or "bin" in r.out


# -- CVE-2021-30465: a mount destination that is a symlink out of the rootfs ----------------

def _climb(target):
    return "../" * 12 + str(target).lstrip("/")


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_cve_2021_30465_symlink_mount_destination(bundle, runtime, tmp_path, how):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "marker").write_text("host\n")
    src = tmp_path / "volume"
    src.mkdir()
    os.makedirs(bundle.rootfs_path("/mnt"), exist_ok=True)
    link = bundle.rootfs_path("/mnt/x")
    os.symlink(str(outside) if how == "absolute" else _climb(outside), link)
    bundle.mount("/mnt/x", source=src, options=["rbind"])
    bundle.sh("echo from-container > /mnt/x/written; ls /mnt/x")
    r = bundle.run()
    # resolved inside the rootfs: the volume is mounted at rootfs/<outside>, not on the host path
    assert r.rc == 0, r
    assert (src / "written").read_text() == "from-container\n"
    assert sorted(os.listdir(outside)) == ["marker"]
    assert (outside / "marker").read_text() == "host\n"
    assert os.path.isdir(bundle.rootfs_path(str(outside)))


def test_cve_2021_30465_symlink_to_etc(bundle, runtime, tmp_path):
    """rootfs/mnt/x -> /etc: a tmpfs at /mnt/x lands on the rootfs's /etc, never the host's."""
    host_etc = sorted(os.listdir("/etc"))
    os.makedirs(bundle.rootfs_path("/mnt"), exist_ok=True)
    os.symlink("/etc", bundle.rootfs_path("/mnt/x"))
    bundle.mount("/mnt/x", type="tmpfs", source="tmpfs")
    r = bundle.sh("ls -A /etc | wc -l; grep ' /etc ' /proc/self/mountinfo | cut -d' ' -f9").run()
    assert r.rc == 0, r
    assert r.out.split() == ["0", "tmpfs"]
    assert sorted(os.listdir("/etc")) == host_etc


def test_cve_2021_30465_symlink_in_bind_file_destination(bundle, runtime, tmp_path):
    target = tmp_path / "host-file"
    target.write_text("untouched\n")
    src = tmp_path / "src-file"
    src.write_text("volume\n")
    os.symlink(str(target), bundle.rootfs_path("/etc/linked"))
    bundle.mount("/etc/linked", source=src, options=["bind"])
    r = bundle.args("cat", "/etc/linked").run()
    assert target.read_text() == "untouched\n"
    if r.rc == 0:
        assert r.out == "volume\n"
    else:
        assert len(r.err_lines) == 1 and "/etc/linked" in r.err, r


# -- CVE-2025-31133: /dev/null replaced by a symlink; /proc a symlink ------------------------

def _core_pattern():
    with open("/proc/sys/kernel/core_pattern") as f:
        return f.read()


def _image_dev(bundle):
    """Use the image's /dev: no /dev tmpfs (and the mounts under it) in the config."""
    for d in ("/dev", "/dev/pts", "/dev/shm", "/dev/mqueue"):
        bundle.drop_mount(d)


def test_cve_2025_31133_dev_null_symlink_in_image(bundle, runtime):
    before = _core_pattern()
    _image_dev(bundle)
    os.symlink("/proc/sys/kernel/core_pattern", bundle.rootfs_path("/dev/null"))
    bundle.linux["maskedPaths"] = ["/proc/timer_list", "/proc/keys"]
    bundle.process["capabilities"] = {s: ["CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE"]
                                      for s in ("bounding", "effective", "permitted")}
    bundle.sh("cat /proc/timer_list | wc -c; echo '|/tmp/pwn' > /proc/timer_list 2>/dev/null; "
              "echo '|/tmp/pwn' > /proc/sys/kernel/core_pattern 2>/dev/null; "
              "stat -c '%F %t,%T' /dev/null")
    r = bundle.run()
    assert _core_pattern() == before
    if r.rc != 0:
        assert len(r.err_lines) == 1 and "/dev/null" in r.err, r
    else:
        lines = r.out.splitlines()
        assert lines[0].strip() == "0"
        assert lines[-1] == "character special file 1,3"


def test_cve_2025_31133_dev_null_symlink_in_bound_dev(bundle, runtime, tmp_path):
    """/dev bind-mounted from a directory whose null is a symlink: masking must refuse it."""
    before = _core_pattern()
    dev = tmp_path / "dev"
    dev.mkdir()
    os.symlink("/proc/sys/kernel/core_pattern", dev / "null")
    _image_dev(bundle)
    bundle.mount("/dev", source=dev, options=["rbind"])
    bundle.linux["maskedPaths"] = ["/proc/timer_list"]
    bundle.linux["readonlyPaths"] = []
    bundle.process["capabilities"] = {s: ["CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE"]
                                      for s in ("bounding", "effective", "permitted")}
    bundle.sh("echo '|/tmp/pwn' > /proc/timer_list; cat /proc/timer_list")
    r = bundle.run()
    assert _core_pattern() == before
    assert r.rc != 0, r
    assert len(r.err_lines) == 1 and "maskedPaths" in r.err and "/dev/null" in r.err, r


def test_cve_2025_31133_dev_null_other_device(bundle, runtime, tmp_path):
    """/dev/null that is a real device, but not 1:3 (here /dev/zero), is refused for masking."""
    dev = tmp_path / "dev"
    dev.mkdir()
    os.mknod(dev / "null", 0o020666, os.makedev(1, 5))
    _image_dev(bundle)
    bundle.mount("/dev", source=dev, options=["rbind"])
    bundle.linux["maskedPaths"] = ["/proc/timer_list"]
    r = bundle.create()
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "/dev/null" in r.err, r


def test_cve_2025_31133_masked_path_symlink(bundle, runtime, tmp_path):
    before = (tmp_path / "host-file")
    before.write_text("keep\n")
    os.symlink(str(before), bundle.rootfs_path("/etc/masked-link"))
    bundle.linux["maskedPaths"] = ["/etc/masked-link"]
    r = bundle.sh("cat /etc/masked-link 2>&1; echo done").run()
    assert before.read_text() == "keep\n"
    if r.rc != 0:
        assert len(r.err_lines) == 1 and "/etc/masked-link" in r.err, r


@pytest.mark.parametrize("target", ["/tmp", "../../../../etc", "/proc/../sys"])
def test_proc_symlink_in_rootfs_is_refused(bundle, runtime, target):
    os.rmdir(bundle.rootfs_path("/proc"))
    os.symlink(target, bundle.rootfs_path("/proc"))
    r = bundle.create()
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "/proc" in r.err and "symlink" in r.err, r


def test_sys_symlink_in_rootfs_is_refused(bundle, runtime):
    os.rmdir(bundle.rootfs_path("/sys"))
    os.symlink("/etc", bundle.rootfs_path("/sys"))
    r = bundle.create()
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "/sys" in r.err and "symlink" in r.err, r


def test_container_cannot_write_host_sysctl(bundle, runtime):
    before = _core_pattern()
    bundle.process["capabilities"] = {s: ["CAP_SYS_ADMIN", "CAP_DAC_OVERRIDE"]
                                      for s in ("bounding", "effective", "permitted")}
    r = bundle.sh("echo '|/tmp/pwn' > /proc/sys/kernel/core_pattern; echo rc=$?").run()
    assert "rc=1" in r.out, r
    assert _core_pattern() == before
