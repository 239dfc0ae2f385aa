"""keel-runtime's log: --log FILE, --log-format text|json (logrus-shaped, as engines parse runc's), --debug."""

import os
import sys
import time

_path = None
_json = False
_debug = False
_fd = None
PROG = "keel-runtime"  # keel-vm shares this log and sets its own name


def configure(path=None, fmt="text", debug=False):
    global _path, _json, _debug, _fd
    _path, _json, _debug = path, fmt == "json", debug
    if _fd is not None:
        os.close(_fd)
        _fd = None
    if path:
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def debug_enabled():
    return _debug


def _emit(level, msg):
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"
    if _json:
        from keel.oci import fastjson

        line = fastjson.dumps({"level": level, "msg": msg, "time": stamp}) + "\n"
    else:
        line = f'time="{stamp}" level={level} msg="{msg}"\n'
    if _fd is not None:
        os.write(_fd, line.encode())
    elif level != "error":
        # Without --log, warnings and debug lines go to stderr like runc's.
        sys.stderr.write(line)


def debug(msg):
    if _debug:
        _emit("debug", msg)


def warn(msg):
    _emit("warning", msg)


def error(msg):
    """Errors always reach stderr as one line; with --log they are also logged."""
    if _fd is not None:
        _emit("error", msg)
    sys.stderr.write(f"{PROG}: {msg}\n")
    sys.stderr.flush()
