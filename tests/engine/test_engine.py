"""keel.engine's API on real runtimes (keel-runtime and runc) under conmon."""

import contextlib
import os
import signal
import time

import pytest

from engine_helpers import RUNTIMES, engine  # noqa: F401
from keel.engine import Engine
from keel.engine.errors import ContainerNotFound, EngineError, InvalidState, NameInUse

IMAGE = "localhost/busybox:latest"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_run_to_exit_code_and_log(engine, runtime):
    c = engine.create(IMAGE, ["sh", "-c", "echo out; echo err >&2; exit 3"], runtime=runtime)
    assert len(c["id"]) == 64 and c["state"] == "created" and "_" in c["name"]
    assert os.path.basename(c["runtime"]) == runtime
    c = engine.start(c["id"])
    assert c["state"] == "running" and c["pid"] > 0 and c["conmon_pid"] > 0
    assert engine.wait(c["name"]) == 3
    c = engine.get(c["id"][:12])
    assert c["state"] == "exited" and c["exit_code"] == 3 and c["finished"] >= c["started"]
    from keel.engine import logs

    entries, _ = logs.read_entries(c["log_path"])
    assert sorted((e.stream, e.message) for e in entries) == [("stderr", b"err"), ("stdout", b"out")]
    # conmon's exit command deleted the runtime's state (and its cgroup)
    assert not os.path.exists(os.path.join(engine.runtime_root, c["id"]))
    engine.remove(c["id"])
    with pytest.raises(ContainerNotFound):
        engine.get(c["id"])
    assert engine.snapshotter.snapshots() == []


def test_names_are_unique(engine):
    engine.create(IMAGE, ["true"], name="web")
    with pytest.raises(NameInUse, match="'web' is already in use"):
        engine.create(IMAGE, ["true"], name="web")
    assert [c["name"] for c in engine.containers()] == ["web"]
    assert engine.snapshotter.snapshots() == [engine.get("web")["id"]]


def test_bad_input_leaves_nothing(engine):
    with pytest.raises(EngineError, match="network 'no-such-net' not found"):
        engine.create(IMAGE, ["true"], network="no-such-net")
    with pytest.raises(EngineError, match="image not found"):
        engine.create("localhost/nope:1", ["true"])
    with pytest.raises(EngineError, match="invalid container name"):
        engine.create(IMAGE, ["true"], name="-bad")
    with pytest.raises(EngineError, match="no such OCI runtime"):
        engine.create(IMAGE, ["true"], runtime="no-such-runtime")
    with pytest.raises(EngineError, match="invalid signal"):
        engine.create(IMAGE, ["true"], stop_signal="SIGNOPE")
    with pytest.raises(EngineError, match="no user"):
        engine.create(IMAGE, ["true"], user="nobody-here")
    assert engine.containers() == [] and engine.snapshotter.snapshots() == []
    assert os.listdir(os.path.join(engine.runroot, "containers")) == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_missing_executable_fails_start_cleanly(engine, runtime):
    c = engine.create(IMAGE, ["/no/such/binary"], runtime=runtime)
    with pytest.raises(EngineError):
        engine.start(c["id"])
    c = engine.get(c["id"])
    assert c["state"] == "created" and c["error"]
    assert not os.path.exists(os.path.join(engine.runtime_root, c["id"]))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_network_none_and_host(engine, runtime):
    host_ns = os.readlink("/proc/self/ns/net")
    for network, same in (("none", False), ("host", True)):
        c = engine.start(engine.create(IMAGE, ["sleep", "30"], runtime=runtime, network=network)["id"])
        assert (os.readlink(f"/proc/{c['pid']}/ns/net") == host_ns) is same
        ns = [n["type"] for n in c["config"]["linux"]["namespaces"]]
        assert ("network" in ns) is not same
        engine.remove(c["id"], force=True)


def _wait_ready(c, n):
    """Wait until the container printed "ready" n times (its traps are set: a signal sent
    earlier would reach a pid 1 without a handler, which ignores it)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError), open(c["log_path"]) as f:
            if f.read().count(" F ready\n") >= n:
                return
        time.sleep(0.02)
    raise AssertionError("container never printed ready")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_stop_kill_and_remove_running(engine, runtime):
    trap = "trap 'exit 0' TERM; trap 'exit 7' USR1; echo ready; while true; do sleep 0.1; done"
    c = engine.start(engine.create(IMAGE, ["sh", "-c", trap], runtime=runtime)["id"])
    _wait_ready(c, 1)
    with pytest.raises(InvalidState, match="stop it first"):
        engine.remove(c["id"])
    t = time.monotonic()
    assert engine.stop(c["id"])["exit_code"] == 0
    assert time.monotonic() - t < 5
    engine.start(c["id"])                      # an exited container starts again
    _wait_ready(c, 2)
    engine.kill(c["id"], "USR1")
    assert engine.wait(c["id"]) == 7
    with pytest.raises(InvalidState, match="can only kill running containers"):
        engine.kill(c["id"], "TERM")
    d = engine.start(engine.create(IMAGE, ["sleep", "100"], runtime=runtime)["id"])
    t = time.monotonic()
    assert engine.stop(d["id"], timeout=1)["exit_code"] == 128 + signal.SIGKILL  # pid 1 ignores TERM
    assert 1 <= time.monotonic() - t < 10
    e = engine.start(engine.create(IMAGE, ["sleep", "100"], runtime=runtime)["id"])
    engine.remove(e["id"], force=True)
    assert not os.path.exists(f"/proc/{e['pid']}") or open(f"/proc/{e['pid']}/stat").read().split()[2] == "Z"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_conmon_death_is_visible(engine, runtime):
    c = engine.start(engine.create(IMAGE, ["sleep", "100"], runtime=runtime)["id"])
    os.kill(c["conmon_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while engine.get(c["id"])["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    got = engine.get(c["id"])
    assert got["state"] == "unknown" and "conmon" in got["error"]
    engine.remove(c["id"], force=True)
    with pytest.raises(ContainerNotFound):
        engine.get(c["id"])


def test_another_engine_sees_the_container(engine, roots):
    c = engine.start(engine.create(IMAGE, ["sleep", "100"], labels={"a": "b"})["id"])
    other = Engine(*roots)
    try:
        [seen] = other.containers(all=False)
        assert seen["id"] == c["id"] and seen["state"] == "running" and seen["labels"] == {"a": "b"}
    finally:
        other.close()
