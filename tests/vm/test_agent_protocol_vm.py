"""The guest agent against hostile frames, talked to directly over its port (marker `vm`).

A malformed frame gets an ERROR and the agent keeps serving; a CREATE with a NUL inside an
argument or no arguments is refused; an oversized frame length makes the guest power off (the
host sees QEMU end) instead of the agent allocating what the peer asked for."""

import os
import random
import select
import shutil
import struct
import tempfile

import pytest

from keel.vm import assets as vm_assets
from keel.vm import protocol as P
from keel.vm.qemu import VM

pytestmark = pytest.mark.vm


class Agent:
    def __init__(self, vm, conn):
        self.vm, self.conn, self.reader, self.queue = vm, conn, P.Reader(), []

    def send_raw(self, data):
        self.conn.sendall(data)

    def next(self, timeout=30):
        while not self.queue:
            r, _, _ = select.select([self.conn], [], [], timeout)
            assert r, "the agent did not answer"
            data = self.conn.recv(65536)
            assert data, f"the agent closed its channel: {self.vm.failure()}"
            self.queue += self.reader.feed(data)
        return self.queue.pop(0)

    def alive_check(self):
        """START of an unknown id: the agent must answer with an ERROR naming it."""
        self.send_raw(P.encode(P.START, id=4242))
        errors = 0
        while True:  # earlier bad frames' ERRORs come first, nothing else may
            mtype, f = self.next()
            assert mtype == P.ERROR, (mtype, f)
            if b"4242" in f["message"]:
                return errors
            errors += 1


@pytest.fixture
def agent(guest_release):
    work = tempfile.mkdtemp(prefix="kvm-agent-", dir="/tmp")
    share = os.path.join(work, "share")
    os.mkdir(share)
    vm = VM(work, share, vm_assets.ensure(), "tcg", memory_mib=128, name="keel-agent-test")
    try:
        listener = vm.start()
        r, _, _ = select.select([listener], [], [], 60)
        assert r, vm.failure()
        conn, _ = listener.accept()
        a = Agent(vm, conn)
        mtype, f = a.next(60)
        assert mtype == P.HELLO and f["version"] == P.VERSION
        yield a
    finally:
        vm.stop()
        shutil.rmtree(work, ignore_errors=True)
    assert not any(os.path.exists(f"/proc/{p}") and p for p in (vm.qemu_pid, vm.virtiofsd_pid)
                   if _running(p))


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def test_agent_survives_malformed_frames_and_refuses_bad_create(agent):
    rng = random.Random(6)
    bad = [
        struct.pack(">I", 3) + bytes([P.CREATE, 2, ord("z")]),  # unknown field kind
        struct.pack(">I", 4) + bytes([P.CREATE, 2, P.LIST, 0]),  # list count truncated
        struct.pack(">I", 10) + bytes([P.CREATE, 2, P.LIST]) + struct.pack(">I", 1000) + b"ab" + b"\0",
        struct.pack(">I", 7) + bytes([P.STDIN, 31, P.BYTES]) + struct.pack(">I", 9999)[:4],
        struct.pack(">I", 1) + bytes([250]),  # unknown message type
    ]
    for _ in range(20):  # random fields under unknown types (the parser runs before dispatch);
        # lengths kept honest so framing stays in step
        body = bytes([rng.randrange(100, 200)]) + bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        bad.append(struct.pack(">I", len(body)) + body)
    for frame in bad:
        agent.send_raw(frame)
    # every bad frame gets at most one ERROR; then the agent still serves
    assert 0 < agent.alive_check() <= len(bad)
    agent.send_raw(P.encode(P.CREATE, id=1, args=["sh\0-c"], env=[], rootfs="none"))
    mtype, f = agent.next()
    assert mtype == P.ERROR and b"NUL" in f["message"]
    agent.send_raw(P.encode(P.CREATE, id=1, args=[], env=[], rootfs="none"))
    mtype, f = agent.next()
    assert mtype == P.ERROR and b"empty" in f["message"]
    agent.alive_check()


def test_oversized_frame_powers_the_guest_off(agent):
    agent.send_raw(struct.pack(">I", P.MAX_FRAME + 1) + b"x" * 16)
    agent.vm.qemu.wait(timeout=30)  # the guest powered off: QEMU ends by itself
