"""Progress of pulls and pushes: one bar per blob on a terminal, plain lines otherwise.

The registry client reports through four calls, from any of its download
threads:

    add(key, total, label)   a blob starts ("Copying blob 3f4a..."); total may be None
    advance(key, n)          n more bytes moved
    reset(key, offset)       the transfer restarts at offset (a resume or a retry)
    finish(key, status)      "done", "skipped: already exists", "mounted", "failed"

and message(text) for lines such as "Writing manifest". make_progress() picks a
rich progress display (bytes, speed, ETA per blob) when the stream is a terminal,
plain lines when it is not, and nothing at all with quiet=True. rich is imported
only when a terminal display is made.
"""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    """The silent progress (quiet mode) and the interface the others implement."""

    def add(self, key: str, total: int | None, label: str) -> None:
        pass

    def advance(self, key: str, n: int) -> None:
        pass

    def reset(self, key: str, offset: int) -> None:
        pass

    def finish(self, key: str, status: str = "done") -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class QuietProgress(Progress):
    pass


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}GiB"


class PlainProgress(Progress):
    """Lines, as podman prints them without a terminal:

        Copying blob 3f4a5b6c7d8e
        Copying blob 3f4a5b6c7d8e done 1.2MiB in 0.3s (4.0MiB/s)
    """

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        self._items: dict[str, list] = {}      # key -> [label, total, done, start]

    def _line(self, text):
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def add(self, key, total, label):
        with self._lock:
            self._items[key] = [label, total, 0, time.monotonic()]
        self._line(label)

    def advance(self, key, n):
        with self._lock:
            item = self._items.get(key)
            if item:
                item[2] += n

    def reset(self, key, offset):
        with self._lock:
            item = self._items.get(key)
            if item:
                item[2] = offset

    def finish(self, key, status="done"):
        with self._lock:
            item = self._items.pop(key, None)
        if item is None:
            return
        label, total, done, start = item
        if status == "done" and done:
            secs = max(time.monotonic() - start, 1e-6)
            self._line(f"{label} done {_human(done)} in {secs:.1f}s ({_human(done / secs)}/s)")
        else:
            self._line(f"{label} {status}")

    def message(self, text):
        self._line(text)


class RichProgress(Progress):
    """A rich display: a bar per blob with bytes, speed and ETA."""

    def __init__(self, stream=None):
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress as _RP, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)

        self._console = Console(file=stream if stream is not None else sys.stdout)
        self._p = _RP(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), TimeRemainingColumn(), console=self._console,
                      transient=False)
        self._tasks: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self._p.start()

    def add(self, key, total, label):
        with self._lock:
            self._tasks[key] = (self._p.add_task(label, total=total), label, total)

    def advance(self, key, n):
        t = self._tasks.get(key)
        if t is not None:
            self._p.advance(t[0], n)

    def reset(self, key, offset):
        t = self._tasks.get(key)
        if t is not None:
            self._p.update(t[0], completed=offset)

    def finish(self, key, status="done"):
        with self._lock:
            t = self._tasks.pop(key, None)
        if t is None:
            return
        task, label, total = t
        if status == "done" and total:
            self._p.update(task, completed=total, description=f"{label} done")
        else:
            self._p.update(task, description=f"{label} {status}")
        self._p.stop_task(task)

    def message(self, text):
        self._p.console.print(text, highlight=False, markup=False)

    def close(self):
        self._p.stop()


def make_progress(quiet: bool = False, stream=None, tty: bool | None = None) -> Progress:
    """The right display for `stream` (default stdout): quiet, rich or plain."""
    if quiet:
        return QuietProgress()
    stream = stream if stream is not None else sys.stdout
    if tty is None:
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
    if tty:
        try:
            return RichProgress(stream)
        except ImportError:
            pass
    return PlainProgress(stream)
