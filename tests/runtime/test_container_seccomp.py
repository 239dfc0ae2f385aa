"""linux.seccomp through the runtime: the filter is in force in the container and in exec."""

import pytest

from keel.kernel import seccomp


@pytest.fixture(autouse=True)
def _libseccomp():
    try:
        seccomp.features()
        seccomp.validate({"defaultAction": "SCMP_ACT_ALLOW"})
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"libseccomp unavailable: {e}")


def _deny_mkdir(errno_ret=1):
    return {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno_ret}]}


@pytest.mark.parametrize("nnp", [True, False])
def test_seccomp_denies(bundle, nnp):
    bundle.process["noNewPrivileges"] = nnp
    bundle.linux["seccomp"] = _deny_mkdir()
    bundle.mount("/scratch", type="tmpfs", source="tmpfs")
    r = bundle.sh("mkdir /scratch/d; echo rc=$?; touch /scratch/f && echo touch-ok; "
                  "grep ^Seccomp: /proc/self/status").run()
    assert r.rc == 0, r
    assert "rc=1" in r.out and "Operation not permitted" in r.err
    assert "touch-ok" in r.out
    assert r.out.split()[-1] == "2"  # SECCOMP_MODE_FILTER


def test_seccomp_errno_value(bundle):
    bundle.linux["seccomp"] = _deny_mkdir(errno_ret=13)
    bundle.mount("/scratch", type="tmpfs", source="tmpfs")
    r = bundle.sh("mkdir /scratch/d").run()
    assert "Permission denied" in r.err, r


def test_seccomp_applies_to_exec(bundle, runtime):
    bundle.linux["seccomp"] = _deny_mkdir()
    bundle.mount("/scratch", type="tmpfs", source="tmpfs")
    bundle.start_detached()
    r = runtime("exec", bundle.id, "mkdir", "/scratch/x")
    assert r.rc != 0 and "Operation not permitted" in r.err, r


def test_no_seccomp(bundle):
    r = bundle.args("grep", "^Seccomp:", "/proc/self/status").run()
    assert r.out.split() == ["Seccomp:", "0"]
