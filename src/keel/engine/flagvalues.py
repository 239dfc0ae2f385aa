"""Checks shared by the run options' parsers: each failure is one EngineError line
naming the flag and the value."""

import os
import re

from keel.engine.errors import EngineError

MAX_INT64 = (1 << 63) - 1


def fail(msg):
    raise EngineError(msg)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp])?i?b?\Z", re.I)


def parse_size(value, flag: str) -> int:
    """Bytes from docker's RAMInBytes spelling: 1024, 512k, 64m, 1g, 1.5GiB, 2gb."""
    m = _SIZE.match(str(value).strip())
    if not m:
        fail(f"{flag} {value!r}: invalid size (a number with an optional unit b, k, m, g, t, p)")
    n = int(float(m.group(1)) * (1 << (10 * " kmgtp".index((m.group(2) or " ").lower()))))
    if n > MAX_INT64:
        fail(f"{flag} {value!r}: too large")
    return n


def parse_bool(value, flag):
    v = str(value).strip().lower()
    if v in ("", "true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    fail(f"{flag}: {value!r} is not true or false")


def abs_dest(dest, flag):
    if not dest or not dest.startswith("/"):
        fail(f"{flag}: destination {dest!r} must be an absolute path in the container")
    clean = os.path.normpath(dest)
    if clean == "/":
        fail(f"{flag}: destination {dest!r}: a mount cannot replace the container's root")
    if ".." in dest.split("/"):
        fail(f"{flag}: destination {dest!r}: '..' is not allowed")
    return clean


def parse_int(value, flag, lo=None, hi=None):
    try:
        n = int(str(value).strip())
    except ValueError:
        fail(f"{flag} {value!r}: not a whole number")
    if abs(n) > MAX_INT64:
        fail(f"{flag} {value}: too large")
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        fail(f"{flag} {value}: must be in {lo}..{hi}" if hi is not None else f"{flag} {value}: must be at least {lo}")
    return n
