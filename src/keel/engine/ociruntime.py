"""An OCI runtime binary driven through runc's command line (never imported: keel-runtime,
runc, crun and keel-vm are peers behind the same contract).

`find(name_or_path)`: a path is used as given; "keel-runtime" is looked up next to the
running interpreter first (the venv's bin), then on PATH; any other name on PATH.
"""

import json
import os
import re
import shutil
import subprocess
import sys

from keel.engine.errors import EngineError, RuntimeFailed

DEFAULT = "keel-runtime"
_MSG = re.compile(r'msg="((?:[^"\\]|\\.)*)"')


def find(name_or_path: str | None) -> str:
    name = name_or_path or DEFAULT
    if "/" in name:
        path = os.path.abspath(name)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise EngineError(f"--runtime {name}: not an executable file")
        return path
    if name == DEFAULT:
        beside = os.path.join(os.path.dirname(sys.executable), DEFAULT)
        if os.path.isfile(beside) and os.access(beside, os.X_OK):
            return beside
    found = shutil.which(name)
    if not found:
        raise EngineError(f"--runtime {name}: no such OCI runtime in $PATH")
    return os.path.abspath(found)


def error_text(stderr: str) -> str:
    """The runtime's error as one line: runc's logrus `msg="..."`, else the last line."""
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        m = _MSG.search(ln)
        if m and "level=error" in ln:
            return m.group(1).replace('\\"', '"')
        if ln.startswith("{") and '"msg"' in ln:
            try:
                return json.loads(ln)["msg"]
            except (ValueError, KeyError, TypeError):
                pass
    return lines[-1] if lines else "failed"


class OCIRuntime:
    def __init__(self, path: str, root: str):
        self.path = path
        self.root = root
        self.name = os.path.basename(path)

    def _run(self, *args, timeout=60):
        argv = [self.path, "--root", self.root, *args]
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout)
        except OSError as e:
            raise RuntimeFailed(f"{self.path}: {(e.strerror or str(e)).lower()}") from None
        except subprocess.TimeoutExpired:
            raise RuntimeFailed(f"{self.name} {args[0]}: no answer in {timeout}s") from None

    def _check(self, r, what):
        if r.returncode != 0:
            raise RuntimeFailed(f"{self.name} {what}: {error_text(r.stderr)}")
        return r

    def start(self, cid: str) -> None:
        self._check(self._run("start", cid), "start")

    def kill(self, cid: str, signal: int, all: bool = False) -> None:
        self._check(self._run("kill", *(["--all"] if all else []), cid, str(signal)), "kill")

    def delete(self, cid: str, force: bool = False) -> None:
        """Delete the runtime's state (and cgroup); a container the runtime does not know is
        already deleted."""
        r = self._run("delete", *(["--force"] if force else []), cid)
        if r.returncode != 0 and self.state(cid) is not None:
            raise RuntimeFailed(f"{self.name} delete: {error_text(r.stderr)}")

    def state(self, cid: str) -> dict | None:
        """The runtime's state JSON, or None when it does not know the container."""
        if not os.path.isdir(os.path.join(self.root, cid)):
            return None  # runc, crun and keel-runtime all keep <root>/<id>/
        r = self._run("state", cid)
        if r.returncode != 0:
            return None
        try:
            return json.loads(r.stdout)
        except ValueError:
            raise RuntimeFailed(f"{self.name} state: not JSON: {r.stdout[:80]!r}") from None

    def pause(self, cid: str) -> None:
        self._check(self._run("pause", cid), "pause")

    def resume(self, cid: str) -> None:
        self._check(self._run("resume", cid), "resume")

    def ps(self, cid: str) -> list[int]:
        """Host pids of every process in the container (`ps --format json`)."""
        r = self._check(self._run("ps", "--format", "json", cid), "ps")
        try:
            pids = json.loads(r.stdout or "null") or []
        except ValueError:
            raise RuntimeFailed(f"{self.name} ps: not JSON: {r.stdout[:80]!r}") from None
        if not isinstance(pids, list) or not all(isinstance(p, int) for p in pids):
            raise RuntimeFailed(f"{self.name} ps: expected a list of pids, got {r.stdout[:80]!r}")
        return sorted(pids)
