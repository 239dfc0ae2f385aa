"""The container process: args, env, cwd, user, capabilities, no_new_privs, rlimits, oomScoreAdj."""

import pytest

from keel.kernel.caps import CAP_NUMBERS, last_cap


def _status(out):
    return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)


def _mask(names):
    m = 0
    for n in names:
        m |= 1 << CAP_NUMBERS[n]
    return m


def test_args_are_passed_verbatim(bundle):
    r = bundle.args("sh", "-c", 'for a in "$@"; do echo "[$a]"; done', "sh", "a b", "", "*", "$HOME").run()
    assert r.rc == 0, r
    assert r.out.splitlines() == ["[a b]", "[]", "[*]", "[$HOME]"]


def test_env(bundle):
    bundle.process["env"] = ["PATH=/bin", "FOO=bar baz", "EMPTY=", "EQ=a=b"]
    r = bundle.args("env").run()
    assert r.rc == 0, r
    env = r.out.splitlines()
    assert "FOO=bar baz" in env and "EMPTY=" in env and "EQ=a=b" in env and "PATH=/bin" in env
    assert "HOME=/root" in env  # from /etc/passwd, as runc sets it
    assert not any(e.startswith("PYTHON") or e.startswith("PYTEST") for e in env)


def test_home_from_env_wins(bundle):
    bundle.process["env"] = ["PATH=/bin", "HOME=/elsewhere"]
    assert bundle.args("sh", "-c", "echo $HOME").run().out == "/elsewhere\n"


def test_path_lookup(bundle):
    bundle.process["env"] = ["PATH=/nothere:/usr/bin:/bin"]
    assert bundle.args("echo", "found").run().out == "found\n"


def test_missing_executable(bundle, runtime):
    r = bundle.args("no-such-binary").run()
    assert r.rc != 0
    assert r.err_lines == ["keel-runtime: exec: 'no-such-binary': executable file not found in $PATH"], r


def test_cwd(bundle):
    bundle.process["cwd"] = "/etc"
    assert bundle.args("pwd").run().out == "/etc\n"


def test_cwd_is_created(bundle):
    bundle.config["root"]["readonly"] = False
    bundle.process["cwd"] = "/work/dir"
    r = bundle.args("pwd").run()
    assert r.rc == 0 and r.out == "/work/dir\n" or "process.cwd" in r.err, r


def test_cwd_missing_is_a_clear_error(bundle, runtime):
    bundle.process["cwd"] = "/no/such/dir"
    r = bundle.args("pwd").run()
    if r.rc == 0:  # created, as runc does when it can
        assert r.out == "/no/such/dir\n"
    else:
        assert len(r.err_lines) == 1 and "process.cwd" in r.err and "/no/such/dir" in r.err, r


def test_user_uid_gid_groups(bundle):
    bundle.process["user"] = {"uid": 1000, "gid": 1001, "additionalGids": [5, 2000, 3000]}
    r = bundle.sh("id -u; id -g; id -G; grep -E '^(Uid|Gid|Groups)' /proc/self/status").run()
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[0] == "1000" and lines[1] == "1001"
    assert set(lines[2].split()) == {"1001", "5", "2000", "3000"}
    st = _status(r.out)
    assert st["Uid"].split() == ["1000"] * 4
    assert st["Gid"].split() == ["1001"] * 4
    assert set(st["Groups"].split()) == {"5", "2000", "3000"}


def test_user_without_additional_gids_has_none(bundle):
    bundle.process["user"] = {"uid": 1000, "gid": 1000}
    r = bundle.sh("grep ^Groups /proc/self/status").run()
    assert r.rc == 0, r
    assert r.out.split(":", 1)[1].split() == []


@pytest.mark.parametrize("umask,mode", [(0o077, "600"), (0o022, "644"), (0o000, "666")])
def test_umask(bundle, umask, mode):
    bundle.process["user"]["umask"] = umask
    bundle.mount("/scratch", type="tmpfs", source="tmpfs")
    r = bundle.sh("umask; touch /scratch/f; stat -c %a /scratch/f").run()
    assert r.rc == 0, r
    assert r.out.splitlines() == [f"{umask:04o}", mode]


def test_capabilities(bundle):
    caps = ["CAP_CHOWN", "CAP_NET_RAW", "CAP_KILL"]
    bundle.process["user"] = {"uid": 1000, "gid": 1000}
    bundle.process["capabilities"] = {
        "bounding": caps + ["CAP_SYS_ADMIN"], "effective": caps, "permitted": caps,
        "inheritable": ["CAP_KILL", "CAP_NET_RAW"], "ambient": ["CAP_KILL"],
    }
    r = bundle.args("grep", "^Cap", "/proc/self/status").run()
    assert r.rc == 0, r
    st = {k: int(v, 16) for k, v in _status(r.out).items()}
    # not root, no file capabilities: after execve permitted = effective = ambient
    assert st["CapBnd"] == _mask(caps + ["CAP_SYS_ADMIN"])
    assert st["CapInh"] == _mask(["CAP_KILL", "CAP_NET_RAW"])
    assert st["CapAmb"] == _mask(["CAP_KILL"])
    assert st["CapPrm"] == _mask(["CAP_KILL"]) == st["CapEff"]


def test_capabilities_root_with_no_new_privs(bundle):
    """root, no_new_privs: execve cannot give more than the permitted set (not the bounding set)."""
    caps = ["CAP_CHOWN", "CAP_KILL"]
    bundle.process["noNewPrivileges"] = True
    bundle.process["capabilities"] = {"bounding": caps + ["CAP_SYS_ADMIN"], "effective": caps,
                                      "permitted": caps}
    r = bundle.args("grep", "^Cap", "/proc/self/status").run()
    st = {k: int(v, 16) for k, v in _status(r.out).items()}
    assert st["CapBnd"] == _mask(caps + ["CAP_SYS_ADMIN"])
    assert st["CapPrm"] == st["CapEff"] == _mask(caps)


def test_capabilities_of_root_survive_exec(bundle):
    caps = ["CAP_CHOWN", "CAP_NET_RAW", "CAP_KILL"]
    bundle.process["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps}
    r = bundle.sh("grep ^Cap /proc/self/status").run()
    st = {k: int(v, 16) for k, v in _status(r.out).items()}
    # uid 0: the file capability rules give root its bounding set back as permitted
    assert st["CapBnd"] == _mask(caps)
    assert st["CapEff"] == st["CapPrm"] == _mask(caps)
    assert st["CapAmb"] == 0


def test_capabilities_effect(bundle):
    """Without CAP_CHOWN root cannot chown a file it does not own; with it, it can."""
    bundle.mount("/scratch", type="tmpfs", source="tmpfs")
    bundle.process["capabilities"] = {s: ["CAP_DAC_OVERRIDE"] for s in ("bounding", "effective", "permitted")}
    r = bundle.sh("touch /scratch/f; chown 5 /scratch/f && echo chowned || echo refused").run()
    assert r.out.strip().endswith("refused"), r


def test_no_capabilities(bundle):
    bundle.process["capabilities"] = {}
    r = bundle.sh("grep ^Cap /proc/self/status").run()
    st = {k: int(v, 16) for k, v in _status(r.out).items()}
    assert st == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}


def _host_bounding():
    return int(_status(open("/proc/self/status").read())["CapBnd"], 16)


def test_all_capabilities_the_host_has(bundle):
    from keel.kernel.caps import CAPS

    host = _host_bounding()
    every = [c for c in CAPS[: last_cap() + 1] if host & _mask([c])]
    bundle.process["capabilities"] = {s: every for s in ("bounding", "effective", "permitted")}
    r = bundle.args("grep", "^Cap", "/proc/self/status").run()
    assert r.rc == 0, r
    st = {k: int(v, 16) for k, v in _status(r.out).items()}
    assert st["CapBnd"] == st["CapEff"] == st["CapPrm"] == host


def test_capability_the_host_lacks_is_a_clear_error(bundle, runtime):
    from keel.kernel.caps import CAPS

    host = _host_bounding()
    lacking = [c for c in CAPS[: last_cap() + 1] if not host & _mask([c])]
    if not lacking:
        pytest.skip("this host's bounding set is full")
    bundle.process["capabilities"]["permitted"].append(lacking[0])
    bundle.process["capabilities"]["effective"].append(lacking[0])
    r = bundle.create()
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "process.capabilities" in r.err and lacking[0] in r.err, r


def test_unknown_capability_is_ignored_or_refused(bundle, runtime):
    bundle.process["capabilities"]["bounding"].append("CAP_NOT_A_CAP")
    r = bundle.sh("true").run()
    assert r.rc == 0 or ("CAP_NOT_A_CAP" in r.err and len(r.err_lines) == 1), r


@pytest.mark.parametrize("nnp", [True, False])
def test_no_new_privileges(bundle, nnp):
    bundle.process["noNewPrivileges"] = nnp
    r = bundle.sh("grep ^NoNewPrivs /proc/self/status").run()
    assert r.rc == 0, r
    assert r.out.split() == ["NoNewPrivs:", "1" if nnp else "0"]


def test_rlimit_nofile(bundle):
    bundle.process["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}]
    r = bundle.sh("ulimit -n; ulimit -Hn; grep 'open files' /proc/self/limits").run()
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[:2] == ["1024", "1024"]
    assert lines[2].split()[3:5] == ["1024", "1024"]


def test_rlimit_several(bundle):
    bundle.process["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 2048},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
        {"type": "RLIMIT_NPROC", "soft": 1000, "hard": 2000},
    ]
    r = bundle.sh("cat /proc/self/limits").run()
    limits = {line[:26].strip(): line[26:].split() for line in r.out.splitlines()[1:]}
    assert limits["Max open files"][:2] == ["512", "2048"]
    assert limits["Max core file size"][:2] == ["0", "0"]
    assert limits["Max processes"][:2] == ["1000", "2000"]


def test_rlimit_above_hard_limit_fails_clearly(bundle, runtime):
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or _has_cap("CAP_SYS_RESOURCE"):
        pytest.skip("this host can raise RLIMIT_NOFILE")
    bundle.process["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": hard + 1, "hard": hard + 1}]
    r = bundle.create()
    assert r.rc != 0
    assert len(r.err_lines) == 1, r
    assert "RLIMIT_NOFILE" in r.err and "process.rlimits[0]" in r.err and str(hard) in r.err, r
    assert runtime("state", bundle.id).rc != 0


def _has_cap(name):
    bnd = int(_status(open("/proc/self/status").read())["CapBnd"], 16)
    return bool(bnd & (1 << CAP_NUMBERS[name]))


def test_oom_score_adj(bundle):
    bundle.process["oomScoreAdj"] = 500
    r = bundle.sh("cat /proc/self/oom_score_adj").run()
    assert r.rc == 0 and r.out == "500\n", r


def test_oom_score_adj_negative(bundle, runtime):
    bundle.process["oomScoreAdj"] = -500
    r = bundle.sh("cat /proc/self/oom_score_adj").create()
    if _has_cap("CAP_SYS_RESOURCE"):
        assert r.rc == 0, r
        return
    assert r.rc != 0
    assert len(r.err_lines) == 1 and "process.oomScoreAdj" in r.err and "-500" in r.err, r
    assert runtime("state", bundle.id).rc != 0


def test_signals_reset_for_the_process(bundle):
    """The Python runtime ignores SIGPIPE: the container's process must not inherit that."""
    r = bundle.args("grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status").run()
    st = _status(r.out)
    assert int(st["SigBlk"], 16) == 0
    assert int(st["SigIgn"], 16) == 0


def test_no_fds_leak_into_the_container(bundle):
    r = bundle.args("ls", "-l", "/proc/self/fd").run(pass_fds=())
    assert r.rc == 0, r
    fds = _fds(r.out)
    assert sorted(fds) == [0, 1, 2], r.out


def _fds(ls_out):
    """fd numbers from `ls -l /proc/self/fd`, without the one ls itself has open on that dir."""
    fds = []
    for line in ls_out.splitlines():
        parts = line.split()
        if "->" not in parts:
            continue
        i = parts.index("->")
        target = " ".join(parts[i + 1:])
        if target.startswith("/proc/") and target.endswith("/fd"):
            continue
        fds.append(int(parts[i - 1]))
    return fds


def test_signals_ignored_by_the_caller_are_reset(bundle, runtime, tmp_path):
    """A caller that ignores signals (here SIGRTMIN-2, which glibc will not let Python reset)
    must not hand that disposition to the container's process."""
    import ctypes
    import subprocess

    class KSigaction(ctypes.Structure):
        _fields_ = [("handler", ctypes.c_ulong), ("flags", ctypes.c_ulong),
                    ("restorer", ctypes.c_ulong), ("mask", ctypes.c_ulong)]

    libc = ctypes.CDLL(None, use_errno=True)

    def ignore_signals():
        for sig in (10, 32):  # SIGUSR1 and glibc's own 32
            act = KSigaction(1, 0, 0, 0)  # SIG_IGN
            libc.syscall(13, sig, ctypes.byref(act), None, 8)

    bundle.args("grep", "-E", "^SigIgn", "/proc/self/status").save()
    out = tmp_path / "out"
    with open(out, "w") as f:
        rc = subprocess.call(runtime.cmd("run", "--bundle", bundle.path, bundle.id), stdout=f,
                             stderr=subprocess.STDOUT, preexec_fn=ignore_signals, timeout=30)
    runtime._note(["run", bundle.id])
    text = out.read_text()
    assert rc == 0, text
    assert int(text.split()[1], 16) == 0, text
