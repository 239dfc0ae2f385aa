"""Container logs in the Kubernetes CRI format, as conmon writes them (k8s-file):

    2024-05-01T10:00:00.123456789+00:00 stdout F a full line
    2024-05-01T10:00:00.223456789+00:00 stderr P a partial line, continued by the next entry

`read_entries` parses a log file; `follow` yields entries as they are appended until a
predicate says the writer is gone (then drains what is left).
"""

import datetime
import os
import re
import time

from keel.engine.errors import EngineError

_TS = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?\Z")


class Entry:
    __slots__ = ("timestamp", "stream", "partial", "message")

    def __init__(self, timestamp: str, stream: str, partial: bool, message: bytes):
        self.timestamp = timestamp
        self.stream = stream
        self.partial = partial
        self.message = message

    @property
    def time(self) -> float:
        return parse_time(self.timestamp)

    def __repr__(self):
        return f"Entry({self.timestamp!r}, {self.stream!r}, {'P' if self.partial else 'F'}, {self.message!r})"


def parse_time(ts: str) -> float:
    """Seconds since the epoch of an RFC 3339 timestamp (nanoseconds kept to microseconds)."""
    m = _TS.match(ts)
    if not m:
        raise ValueError(f"invalid timestamp {ts!r}")
    frac = (m.group(2) or "0")[:6].ljust(6, "0")
    tz = m.group(3) or "Z"
    tz = "+00:00" if tz == "Z" else tz
    return datetime.datetime.fromisoformat(f"{m.group(1)}.{frac}{tz}").timestamp()


def parse_line(line: bytes) -> Entry | None:
    """One CRI log line (without its newline); None for a malformed line."""
    parts = line.split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr") or parts[2] not in (b"P", b"F"):
        return None
    msg = parts[3] if len(parts) == 4 else b""
    return Entry(parts[0].decode("ascii", "replace"), parts[1].decode(), parts[2] == b"P", msg)


def read_entries(path: str, offset: int = 0) -> tuple[list[Entry], int]:
    """Complete lines of the log from `offset`: (entries, offset after the last full line)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    except OSError as e:
        raise EngineError(f"log {path}: {(e.strerror or str(e)).lower()}") from None
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    entries = [e for e in (parse_line(ln) for ln in data[:end].split(b"\n")) if e is not None]
    return entries, offset + end + 1


def parse_since(value: str, now: float | None = None) -> float:
    """podman's --since: RFC 3339 (date or date-time), a unix time, or a duration (10m, 1h30m)."""
    now = time.time() if now is None else now
    v = value.strip()
    m = re.fullmatch(r"((?:\d+(?:\.\d+)?(?:ns|us|ms|s|m|h))+)", v)
    if m:
        units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
        total = sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", v))
        return now - total
    if re.fullmatch(r"\d+(\.\d+)?", v):
        return float(v)
    if re.fullmatch(r"\d{4}-\d\d-\d\d", v):
        v += "T00:00:00"
    try:
        return parse_time(v)
    except ValueError:
        try:
            return datetime.datetime.fromisoformat(v).timestamp()
        except ValueError:
            raise EngineError(f"--since {value!r}: expected a duration (10m), a unix time or "
                              "an RFC 3339 time") from None


def tail(entries: list[Entry], n: int) -> list[Entry]:
    """The entries making up the last `n` lines (a line: P entries closed by an F)."""
    if n < 0:
        return entries
    lines, cur = [], []
    for e in entries:
        cur.append(e)
        if not e.partial:
            lines.append(cur)
            cur = []
    if cur:
        lines.append(cur)
    return [e for ln in (lines[-n:] if n else []) for e in ln]


def follow(path: str, done, offset: int = 0, interval: float = 0.05):
    """Yield entries appended to `path` from `offset` until done() is true, then the rest.
    A log started afresh (conmon's --log-size-max renames a new file over it, or truncates it)
    is followed like `tail -F`: the old file is read to its end, then the new one from its start.
    Polls every 2 ms at first, backing off to `interval` while nothing happens (a short-lived
    container's exit is seen at once, a long-lived one costs little)."""
    f, buf, delay = None, b"", 0.002
    try:
        while True:
            finished = done()
            if f is None:
                try:
                    f = open(path, "rb")
                    f.seek(offset)
                except FileNotFoundError:
                    f = None
            data = f.read() if f is not None else b""
            if not data and f is not None and _replaced(path, f):
                data = f.read()   # written before the switch, after our last read
                if not data:
                    f.close()
                    f, buf, offset = None, b"", 0
                    continue
            if data:
                buf += data
                end = buf.rfind(b"\n")
                if end >= 0:
                    lines, buf = buf[:end].split(b"\n"), buf[end + 1:]
                    yield from (e for e in map(parse_line, lines) if e is not None)
                delay = 0.002
                continue
            if finished:
                return
            time.sleep(delay)
            delay = min(delay * 1.5, interval)
    finally:
        if f is not None:
            f.close()


def _replaced(path: str, f) -> bool:
    """Has the log at `path` been replaced by a new file, or truncated below our position?"""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_ino != os.fstat(f.fileno()).st_ino or st.st_size < f.tell()


def log_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
