"""A `create` killed outright (SIGKILL, no clean-up) leaves a container that `state` reports as
stopped and `delete --force` removes completely: state dir, cgroup, processes."""

import json
import os
import signal
import subprocess
import time

import runtime_helpers as h


def test_create_killed_midway_is_cleaned_by_delete_force(runtime, bundle, tmp_path):
    # A createRuntime hook that blocks keeps `create` in the middle of its work.
    flag = tmp_path / "hook-started"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {flag}\nsleep 30\n")
    hook.chmod(0o755)
    cfg = bundle.config
    cfg["hooks"] = {"createRuntime": [{"path": str(hook)}]}
    cfg["linux"]["cgroupsPath"] = f"/keel-test-{bundle.id}"
    runtime.extra_cgroups.append(f"keel-test-{bundle.id}")
    bundle.save()
    runtime._note(["create", bundle.id])
    out = open(tmp_path / "create.out", "w")
    p = subprocess.Popen(h.runtime_argv() + ["--root", str(runtime.root), "create", "--bundle",
                                             str(bundle.path), bundle.id],
                         stdout=out, stderr=out, start_new_session=True)
    try:
        for _ in range(500):
            if flag.exists():
                break
            time.sleep(0.01)
        assert flag.exists(), open(tmp_path / "create.out").read()
        st = json.loads(runtime("state", bundle.id).out)
        assert st["status"] == "creating"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    st = json.loads(runtime("state", bundle.id).out)
    assert st["status"] == "stopped"
    assert h.cgroup_dirs_for(f"keel-test-{bundle.id}"), "the cgroup should still be there before delete"
    r = runtime("delete", "--force", bundle.id)
    assert r.rc == 0, r.err
    assert not h.cgroup_dirs_for(f"keel-test-{bundle.id}")
    assert runtime("state", bundle.id).rc != 0
