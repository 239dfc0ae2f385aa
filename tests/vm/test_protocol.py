"""The agent protocol's framing (keel.vm.protocol), without a VM: the agent in the guest speaks
the same frames, so these are the host half of the contract (the VM tests exercise both)."""

import pytest

from keel.vm import protocol as P


def test_round_trip_every_kind():
    frame = P.encode(P.CREATE, id=1, args=["sh", "-c", "echo ü"], cwd="/", groups=[1, 2, -3],
                     cap_bnd=-(1 << 63), data=b"\0\xff")
    frames = P.Reader().feed(frame)
    assert frames == [(P.CREATE, {"id": 1, "args": [b"sh", b"-c", "echo ü".encode()], "cwd": b"/",
                                  "groups": [1, 2, -3], "cap_bnd": -(1 << 63), "data": b"\0\xff"})]


def test_stream_split_anywhere():
    data = P.encode(P.OUTPUT, id=1, stream=1, data=b"x" * 1000) + P.encode(P.EXIT, id=1, status=256)
    r = P.Reader()
    got = []
    for i in range(0, len(data), 7):
        got += r.feed(data[i:i + 7])
    assert [t for t, _ in got] == [P.OUTPUT, P.EXIT]
    assert got[1][1] == {"id": 1, "status": 256}


def test_unknown_keys_are_skipped():
    body = bytes([P.HELLO, 200, P.INT]) + (5).to_bytes(8, "big") + bytes([40, P.INT]) + (1).to_bytes(8, "big")
    assert P.decode(body) == (P.HELLO, {"version": 1})


@pytest.mark.parametrize("body", [b"", bytes([P.HELLO, 40, P.INT, 0, 0]), bytes([P.HELLO, 41, P.BYTES, 0, 0, 0, 9, 1]),
                                  bytes([P.HELLO, 41, ord("z")])])
def test_malformed_frames_are_errors(body):
    with pytest.raises(P.ProtocolError):
        P.decode(body)


def test_oversized_frame_refused():
    with pytest.raises(P.ProtocolError, match="exceeds"):
        P.Reader().feed((P.MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(P.ProtocolError, match="exceeds"):
        P.encode(P.STDIN, id=1, data=b"x" * (P.MAX_FRAME + 1))


def test_agent_source_matches_protocol_numbers():
    """agent.c's enums must list the same numbers as protocol.py (one source of truth each side)."""
    import os
    import re

    from keel.vm.assets import AGENT_SOURCE

    src = open(AGENT_SOURCE).read()
    assert f"#define PROTOCOL_VERSION {P.VERSION}" in src
    for value, name in P.NAMES.items():
        assert re.search(rf"\bM_{name} = {value}\b", src), name
    keys = re.search(r"enum \{ K_ID = 1, (.*?) K_MAX \};", src, re.S).group(1)
    names = ["id"] + [k.strip()[2:].lower() for k in keys.replace("\n", " ").split(",") if k.strip()]
    assert {n: i + 1 for i, n in enumerate(names)} == {n: k for n, (k, _) in P.FIELDS.items()}
    assert os.path.exists(AGENT_SOURCE)
