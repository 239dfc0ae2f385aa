"""Security, resource and init options of keel.engine (specgen) on real runtimes: what the
process inside the container sees, and what the host's cgroups hold."""

import json
import os
import time

import pytest

from engine_helpers import RUNTIMES
from keel.engine import Engine, specgen
from keel.engine.errors import EngineError
from keel.kernel.caps import CAP_NUMBERS

IMAGE = "localhost/busybox:latest"
DOCKER_CAPEFF = 0x00000000a80425fb      # Docker's 14 default capabilities
ALL_CAPS = sum(1 << CAP_NUMBERS[c] for c in specgen.all_capabilities())   # keel's bounding set


@pytest.fixture
def engine(roots):
    e = Engine(*roots)
    yield e
    for c in e.containers():
        e.remove(c["id"], force=True, volumes=True)
    e.close()


def run(engine, cmd, runtime, **opts):
    """Run `cmd` to its end; (exit code, stdout + stderr text)."""
    from keel.engine import logs

    c = engine.create(IMAGE, cmd, runtime=runtime, run_options=specgen.parse(**opts))
    engine.start(c["id"])
    code = engine.wait(c["id"])
    entries, _ = logs.read_entries(c["log_path"])
    engine.remove(c["id"], volumes=True)
    return code, "".join(e.message.decode() + ("" if e.partial else "\n") for e in entries)


def status_field(out, field):
    for line in out.splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{field} not in {out!r}")


STATUS = ["cat", "/proc/self/status"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_defaults_are_dockers(engine, runtime):
    code, out = run(engine, STATUS, runtime)
    assert code == 0, out
    assert int(status_field(out, "CapEff"), 16) == DOCKER_CAPEFF
    assert int(status_field(out, "CapBnd"), 16) == DOCKER_CAPEFF
    assert status_field(out, "NoNewPrivs") == "0"
    assert status_field(out, "Seccomp") == "2"
    # masked and read-only paths as Docker's: timer_list reads empty (/dev/null over it),
    # /sys/firmware is an empty dir, /proc/sys is read-only
    code, out = run(engine, ["sh", "-c", "wc -c < /proc/timer_list; ls /sys/firmware | wc -l; "
                             "echo 1 > /proc/sys/kernel/domainname && echo WROTE; "
                             "grep ' /proc/sys ' /proc/self/mountinfo"], runtime)
    lines = out.splitlines()
    assert lines[0].strip() == "0" and lines[1].strip() == "0", out
    assert "WROTE" not in out and " ro," in out, out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cap_add_and_drop(engine, runtime):
    code, out = run(engine, STATUS, runtime, cap_drop=["ALL"], cap_add=["net_admin", "CAP_SYS_TIME"])
    assert code == 0, out
    assert int(status_field(out, "CapEff"), 16) == (1 << 12) | (1 << 25)
    code, out = run(engine, STATUS, runtime, cap_drop=["chown", "CAP_NET_RAW"])
    assert int(status_field(out, "CapEff"), 16) == DOCKER_CAPEFF & ~1 & ~(1 << 13)
    code, out = run(engine, STATUS, runtime, cap_add=["ALL"], cap_drop=["SYS_ADMIN"])
    assert int(status_field(out, "CapEff"), 16) == ALL_CAPS & ~(1 << 21)
    # without CAP_CHOWN, chown fails even for root
    code, out = run(engine, ["chown", "1:1", "/tmp"], runtime, cap_drop=["CHOWN"])
    assert code != 0 and "Operation not permitted" in out, out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_privileged(engine, runtime):
    dev = next(d for d in ("/dev/loop-control", "/dev/kvm", "/dev/net/tun", "/dev/fuse") if os.path.exists(d))
    code, out = run(engine, ["sh", "-c", f"cat /proc/self/status; ls {dev}; wc -c < /proc/timer_list | "
                             "sed 's/^/timers=/'; grep ' /sys ' /proc/self/mountinfo"], runtime,
                    privileged=True)
    assert code == 0, out
    assert int(status_field(out, "CapEff"), 16) == ALL_CAPS
    assert status_field(out, "Seccomp") == "0"
    assert dev in out and "timers=0" not in out
    assert " rw," in [ln for ln in out.splitlines() if " /sys " in ln][0]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_default_seccomp_blocks_and_unconfined_allows(engine, runtime):
    # a user namespace needs no capability: only the seccomp profile refuses it
    code, out = run(engine, ["unshare", "-U", "true"], runtime)
    assert code != 0 and "Operation not permitted" in out, out
    code, out = run(engine, ["sh", "-c", "cat /proc/self/status; unshare -U true && echo USERNS"],
                    runtime, security_opt=["seccomp=unconfined"])
    assert status_field(out, "Seccomp") == "0" and "USERNS" in out, out
    # with CAP_SYS_ADMIN Docker's profile lets mount through: so does keel's
    code, out = run(engine, ["sh", "-c", "mkdir -p /tmp/m; mount -t tmpfs none /tmp/m && echo MOUNTED"], runtime,
                    cap_add=["SYS_ADMIN"])
    assert "MOUNTED" in out, out
    code, out = run(engine, ["sh", "-c", "mkdir -p /tmp/m; mount -t tmpfs none /tmp/m && echo MOUNTED"], runtime)
    assert "MOUNTED" not in out, out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_seccomp_profile_file(engine, runtime, tmp_path):
    prof = {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(prof))
    code, out = run(engine, ["mkdir", "/tmp/x"], runtime, security_opt=[f"seccomp={path}"])
    assert code != 0 and "Permission denied" in out, out
    # Docker's format: includes/excludes by capability
    prof = {"defaultAction": "SCMP_ACT_ALLOW", "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                      "excludes": {"caps": ["CAP_SYS_ADMIN"]}}]}
    path.write_text(json.dumps(prof))
    code, out = run(engine, ["mkdir", "/tmp/x"], runtime, security_opt=[f"seccomp={path}"])
    assert code != 0 and "Operation not permitted" in out, out
    code, out = run(engine, ["mkdir", "/tmp/x"], runtime, security_opt=[f"seccomp={path}"],
                    cap_add=["SYS_ADMIN"])
    assert code == 0, out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_no_new_privileges(engine, runtime):
    code, out = run(engine, STATUS, runtime, security_opt=["no-new-privileges"])
    assert status_field(out, "NoNewPrivs") == "1" and status_field(out, "Seccomp") == "2"
    code, out = run(engine, STATUS, runtime, security_opt=["no-new-privileges=false"])
    assert status_field(out, "NoNewPrivs") == "0"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_read_only_root(engine, runtime):
    code, out = run(engine, ["sh", "-c", "touch /etc/x || echo REFUSED; touch /tmp/x /run/x /var/tmp/x "
                             "&& echo TMP-OK"], runtime, read_only=True)
    assert "REFUSED" in out and "Read-only file system" in out and "TMP-OK" in out, out
    code, out = run(engine, ["sh", "-c", "touch /tmp/x || echo REFUSED"], runtime, read_only=True,
                    read_only_tmpfs=False)
    assert "REFUSED" in out, out


V1 = os.path.isdir("/sys/fs/cgroup/memory")   # v1 or hybrid memory controller (this machine)


def _limits_while_running(engine, runtime, **opts):
    """The container's cgroup limits read on the host, in v1 terms on v1 and v2 hosts alike."""
    c = engine.create(IMAGE, ["sleep", "30"], runtime=runtime, run_options=specgen.parse(**opts))
    engine.start(c["id"])
    rel = os.path.join(engine.cgroup_parent.lstrip("/"), c["id"])

    def read(controller, v1name, v2name):
        path = os.path.join("/sys/fs/cgroup", controller, rel, v1name) if V1 else \
            os.path.join("/sys/fs/cgroup", rel, v2name)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return f.read().strip()

    try:
        out = {"memory": read("memory", "memory.limit_in_bytes", "memory.max"),
               "reservation": read("memory", "memory.soft_limit_in_bytes", "memory.low"),
               "swap": read("memory", "memory.memsw.limit_in_bytes", "memory.swap.max"),
               "pids": read("pids", "pids.max", "pids.max"),
               "cpuset": read("cpuset", "cpuset.cpus", "cpuset.cpus")}
        if V1:
            out["cpu"] = (read("cpu", "cpu.cfs_quota_us", ""), read("cpu", "cpu.cfs_period_us", ""))
            out["shares"] = read("cpu", "cpu.shares", "")
        else:
            out["cpu"] = tuple(read("", "", "cpu.max").split())
            out["shares"] = read("", "", "cpu.weight")
        return out
    finally:
        engine.remove(c["id"], force=True)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_memory_limit_and_oom_kill(engine, runtime):
    got = _limits_while_running(engine, runtime, memory="32m", memory_reservation="16m")
    assert int(got["memory"]) == 32 << 20 and int(got["reservation"]) == 16 << 20
    if specgen.swap_accounting():   # docker's default: as much swap as memory (v2 counts swap alone)
        assert int(got["swap"]) == (64 << 20 if V1 else 32 << 20)
    # a 64 MiB buffer does not fit in 24 MiB: the kernel's OOM killer ends it (128 + 9)
    code, out = run(engine, ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"], runtime,
                    memory="24m", memory_swap="24m")
    assert code == 137, out
    code, out = run(engine, ["dd", "if=/dev/zero", "of=/dev/null", "bs=8M", "count=1"], runtime,
                    memory="24m")
    assert code == 0, out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cpu_and_pids_limits(engine, runtime):
    got = _limits_while_running(engine, runtime, cpus="0.5", cpu_shares="512", pids_limit="40",
                                cpuset_cpus="0")
    assert got["cpu"] == ("50000", "100000") and got["pids"] == "40" and got["cpuset"] == "0"
    # v2 has weights: runc's conversion of shares 512
    assert got["shares"] == ("512" if V1 else str(1 + (512 - 2) * 9999 // 262142))
    # a fork loop stops at the limit instead of filling the machine
    code, out = run(engine, ["sh", "-c", "i=0; while [ $i -lt 60 ]; do sleep 5 & i=$((i+1)); done; "
                             "echo STARTED-ALL"], runtime, pids_limit="20")
    assert "STARTED-ALL" not in out and "fork" in out.lower(), out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_ulimit_and_sysctl(engine, runtime):
    code, out = run(engine, ["sh", "-c", "ulimit -n; ulimit -Hn; cat /proc/sys/kernel/shmmax "
                             "/proc/sys/net/ipv4/ip_unprivileged_port_start"], runtime,
                    ulimits=["nofile=512:1024"],
                    sysctls=["kernel.shmmax=123456789", "net.ipv4.ip_unprivileged_port_start=80"])
    assert code == 0 and out.split() == ["512", "1024", "123456789", "80"], out
    # podman's defaults, within what keel itself holds
    import resource

    code, out = run(engine, ["sh", "-c", "ulimit -n; ulimit -Hn; ulimit -u"], runtime)
    nofile = min(specgen.DEFAULT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    nproc = min(specgen.DEFAULT_NPROC, resource.getrlimit(resource.RLIMIT_NPROC)[1])
    assert out.split() == [str(nofile), str(nofile), str(nproc)], out
    with pytest.raises(EngineError, match="cannot be set with --network host"):
        specgen.parse(sysctls=["net.ipv4.ip_forward=1"], network="host")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_init_is_pid_1_and_forwards_signals(engine, runtime):
    from keel.engine import logs

    code, out = run(engine, ["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline; echo; echo ppid=$PPID; "
                             "/run/keel-init --version"], runtime, init=True)
    assert code == 0 and "catatonit" in out, out
    first = out.splitlines()[0].split()
    assert first[0] == specgen.INIT_PATH and first[1:4] == ["--", "sh", "-c"], out
    assert "ppid=1" in out
    c = engine.create(IMAGE, ["sh", "-c", "trap 'echo got-term; exit 7' TERM; echo ready; "
                              "while :; do sleep 0.1; done"], runtime=runtime,
                      run_options=specgen.parse(init=True))
    engine.start(c["id"])
    deadline = time.monotonic() + 10
    while b"ready" not in b"".join(e.message for e in logs.read_entries(c["log_path"])[0]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    engine.stop(c["id"], timeout=10)
    assert engine.get(c["id"])["exit_code"] == 7
    assert b"got-term" in b"".join(e.message for e in logs.read_entries(c["log_path"])[0])


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_devices_and_shm_size(engine, runtime):
    host = "/dev/loop-control"   # not among the devices every container gets
    st = os.stat(host)
    code, out = run(engine, ["sh", "-c", "stat -c '%t:%T %F' /dev/lc; echo > /dev/lc; cat /dev/lc; "
                             "grep ' /dev/shm ' /proc/mounts"], runtime,
                    devices=[f"{host}:/dev/lc:r"], shm_size="16m")
    major, minor = (int(x, 16) for x in out.splitlines()[0].split()[0].split(":"))
    assert (major, minor) == (os.major(st.st_rdev), os.minor(st.st_rdev)) and "character" in out, out
    assert "Operation not permitted" in out          # w is not granted: the devices cgroup says no
    assert "Invalid argument" in out                 # r is: the loop driver itself answers
    assert "size=16384k" in out, out
    code, out = run(engine, ["sh", "-c", f"cat {host} || echo REFUSED"], runtime)
    assert "REFUSED" in out and "No such file" in out   # no host devices by default


BAD = [
    ({"cap_add": ["CAP_NOPE"]}, "unknown capability CAP_NOPE"),
    ({"cap_drop": ["bogus"]}, "unknown capability CAP_BOGUS"),
    ({"security_opt": ["seccomp=/no/such/profile.json"]}, "no such file"),
    ({"security_opt": ["seccomp"]}, "give a profile file or unconfined"),
    ({"security_opt": ["no-new-privileges=maybe"]}, "not true or false"),
    ({"security_opt": ["selinux=x"]}, "unknown security option"),
    ({"security_opt": ["label=type:foo_t"]}, "SELinux labels are not supported"),
    ({"memory": "lots"}, "invalid size"),
    ({"memory": "1k"}, "minimum memory limit"),
    ({"memory_swap": "1g"}, "needs --memory"),
    ({"memory": "64m", "memory_swap": "32m"}, "at least --memory"),
    ({"cpus": "0"}, "range of CPUs"),
    ({"cpus": "many"}, "not a number"),
    ({"cpu_shares": "1"}, "2..262144"),
    ({"pids_limit": "x"}, "not a whole number"),
    ({"cpuset_cpus": "0-4096"}, "not available"),
    ({"cpuset_cpus": "3-1"}, "backwards"),
    ({"cpuset_cpus": "zero"}, "expected a list"),
    ({"ulimits": ["nofile=10:5"]}, "above the hard limit"),
    ({"ulimits": ["bogus=1"]}, "expected NAME=SOFT"),
    ({"sysctls": ["kernel.panic=1"]}, "not a namespaced sysctl"),
    ({"init_path": "/no/such/init"}, "no such executable"),
    ({"devices": ["/dev/nope"]}, "no such file"),
    ({"devices": ["/etc/passwd"]}, "is not a device"),
    ({"devices": ["/dev/null:/dev/x:rwx"]}, "a combination of r, w and m"),
    ({"devices": ["/dev/null:rel"]}, "must be an absolute path"),
    ({"shm_size": "big"}, "invalid size"),
    ({"sysctls": ["net/../../kernel/x=1"]}, "is not a sysctl name"),
    ({"memory": "99999999p"}, "too large"),
    ({"pids_limit": str(1 << 70)}, "too large"),
    ({"security_opt": ["seccomp=/dev/null"]}, "not a regular file"),
    ({"security_opt": ["mask=/proc/../etc"]}, "without '..'"),
    ({"volumes": ["/tmp:/a/../b"]}, "'..' is not allowed"),
    ({"volumes": ["../name:/x"]}, "host path"),
    ({"mounts": ["type=volume,source=../../etc,target=/x"]}, "invalid volume name"),
]


@pytest.mark.parametrize("opts,message", BAD, ids=[m for _, m in BAD])
def test_bad_values_are_refused_before_anything_exists(engine, opts, message):
    with pytest.raises(EngineError, match=message):
        specgen.parse(**opts)


def test_init_is_found_static():
    found = specgen.find_init()
    assert specgen._static_elf(found) and os.path.basename(found) in ("catatonit", "tini-static")
    assert not specgen._static_elf("/bin/sh") or os.path.realpath("/bin/sh").endswith("busybox")


def test_bad_seccomp_file_is_refused(engine, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(EngineError, match="not a JSON seccomp profile"):
        specgen.parse(security_opt=[f"seccomp={path}"])
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_NOPE"}))
    with pytest.raises(EngineError, match="defaultAction"):
        specgen.parse(security_opt=[f"seccomp={path}"])
    for bad, where in (({"syscalls": {"a": 1}}, "syscalls: expected a list"),
                       ({"syscalls": ["x"]}, r"syscalls\[0\]: expected an object"),
                       ({"syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                                       "includes": {"caps": "CAP_SYS_ADMIN"}}]}, "includes.caps"),
                       ({"archMap": {"x": 1}}, "archMap: expected a list")):
        path.write_text(json.dumps(dict(bad, defaultAction="SCMP_ACT_ALLOW")))
        with pytest.raises(EngineError, match=where):
            specgen.parse(security_opt=[f"seccomp={path}"])


def test_failure_in_apply_leaves_no_container_snapshot_or_volume(engine, tmp_path):
    run_options = specgen.parse(volumes=["fresh:/data", "/anon"])
    # a record damaged after the checks: apply fails after making two volumes, and undoes them
    run_options["mounts"].append({"type": "volume", "name": "-bad-", "destination": "/x",
                                  "options": [], "mode": "rw"})
    with pytest.raises(EngineError):
        engine.create(IMAGE, ["true"], run_options=run_options)
    assert engine.containers() == [] and engine.snapshotter.snapshots() == []
    assert engine.volumes.all() == []
    assert os.listdir(os.path.join(engine.runroot, "containers")) == []


def _image_with_volume(tmp_path, busybox_tar, root, volumes=None, name="localhost/withvol:1"):
    """busybox plus /data/seed.txt, with VOLUME /data and VOLUME /cache (or `volumes`)."""
    import importlib.util

    from keel.image import archive
    from keel.image.store import Store

    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "image", "conftest.py")
    spec = importlib.util.spec_from_file_location("image_conftest_for_run_options", here)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with open(busybox_tar, "rb") as f:
        layers = [f.read(), mod.tar_of_files({"data/seed.txt": b"seed\n"})]
    cfg = {"config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"],
                      "Volumes": volumes if volumes is not None else {"/data": {}, "/cache": {}}}}
    layout = str(tmp_path / ("vol-image-" + name.rsplit(":", 1)[-1]))
    mod.build_oci_layout(layout, layers=layers, config=cfg)
    with Store(root) as s:
        archive.import_oci_layout(s, layout, name=name)
    return name


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_image_volumes_become_anonymous_volumes(engine, runtime, tmp_path, busybox_tar):
    from keel.engine import logs

    image = _image_with_volume(tmp_path, busybox_tar, engine.root)
    c = engine.create(image, ["sh", "-c", "cat /data/seed.txt; grep -E ' /(data|cache) ' /proc/mounts | wc -l"],
                      runtime=runtime, run_options=specgen.parse(volumes=["keep:/cache"]))
    anon = [m["name"] for m in c["options"]["run"]["mounts"] if m.get("anonymous")]
    assert len(anon) == 1 and sorted(v["Name"] for v in engine.volumes.all()) == sorted(anon + ["keep"])
    engine.start(c["id"])
    assert engine.wait(c["id"]) == 0
    entries, _ = logs.read_entries(c["log_path"])
    assert [e.message for e in entries] == [b"seed", b"2"]
    engine.remove(c["id"], volumes=True)
    assert [v["Name"] for v in engine.volumes.all()] == ["keep"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_podmans_own_profile_file(engine, runtime):
    """containers-common's seccomp.json (Docker's format: an allow-list with includes by
    capability, arch and kernel version), as `podman run --security-opt seccomp=` takes it."""
    path = "/usr/share/containers/seccomp.json"   # shipped with podman (make apt-test)
    # it allows user namespaces (keel's default, like Docker's, does not): a filter is loaded,
    # and it is podman's, with its per-arch entries kept (busybox-static needs arch_prctl)
    code, out = run(engine, ["sh", "-c", "grep Seccomp: /proc/self/status; unshare -U true && echo USERNS"],
                    runtime, security_opt=[f"seccomp={path}"])
    assert code == 0 and "Seccomp:\t2" in out and "USERNS" in out, out


def _denied(profile):
    return {n for e in profile["syscalls"] if not e.get("args") for n in e["names"]}


def test_default_profile_follows_capabilities():
    from keel.engine import seccomp_default

    base = specgen.seccomp_for(seccomp_default.profile(), specgen.DOCKER_CAPS)
    assert base["defaultAction"] == "SCMP_ACT_ALLOW"
    assert base["architectures"][0] == "SCMP_ARCH_X86_64" or os.uname().machine != "x86_64"
    denied = _denied(base)
    for name in ("mount", "unshare", "setns", "keyctl", "add_key", "ptrace", "bpf", "kexec_load",
                 "init_module", "reboot", "settimeofday", "open_by_handle_at", "perf_event_open"):
        assert name in denied, name
    assert "restart_syscall" not in denied and "chroot" not in denied
    clone_rules = [e for e in base["syscalls"] if e["names"] == ["clone"]]
    assert len(clone_rules) == 7 and all(e["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" for e in clone_rules)
    admin = specgen.seccomp_for(seccomp_default.profile(), list(specgen.DOCKER_CAPS) + ["CAP_SYS_ADMIN"])
    assert {"mount", "unshare", "setns", "bpf"}.isdisjoint(_denied(admin)) and "keyctl" in _denied(admin)
    assert not [e for e in admin["syscalls"] if e["names"] in (["clone"], ["clone3"])]
    ptrace = specgen.seccomp_for(seccomp_default.profile(), ["CAP_SYS_PTRACE"])
    assert "ptrace" not in _denied(ptrace) and "mount" in _denied(ptrace)


def test_privileged_keeps_an_explicit_profile(engine, tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW",
                                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}))
    c = engine.create(IMAGE, ["true"], run_options=specgen.parse(privileged=True,
                                                                 security_opt=[f"seccomp={path}"]))
    linux = c["config"]["linux"]
    assert linux["seccomp"]["syscalls"][0]["names"] == ["mkdir"]
    assert linux["maskedPaths"] == [] and linux["readonlyPaths"] == []
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    c = engine.create(IMAGE, ["true"], run_options=specgen.parse(privileged=True))
    assert "seccomp" not in c["config"]["linux"]


@pytest.mark.parametrize("volumes", [{"/../etc": {}}, {"relative": {}}, {"/": {}}, ["/data"]])
def test_hostile_image_volumes_are_refused(engine, tmp_path, busybox_tar, volumes):
    image = _image_with_volume(tmp_path, busybox_tar, engine.root, volumes, name="localhost/badvol:1")
    with pytest.raises(EngineError, match="image config.Volumes"):
        engine.create(image, ["true"])
    assert engine.containers() == [] and engine.snapshotter.snapshots() == [] and engine.volumes.all() == []


def test_failed_apply_keeps_a_volume_another_container_took(tmp_path):
    from keel.engine.volumes import Volumes

    vols = Volumes(str(tmp_path / "root"))
    run_options = specgen.parse(volumes=["shared:/data", "mine:/mine"])
    run_options["mounts"].append({"type": "volume", "name": "-bad-", "destination": "/x",
                                  "options": [], "mode": "rw"})
    with pytest.raises(EngineError, match="invalid volume name"):
        specgen.apply({"process": {"args": ["true"]}}, run_options, volumes=vols,
                      used_elsewhere=lambda name: name == "shared")
    assert [v["Name"] for v in vols.all()] == ["shared"]
