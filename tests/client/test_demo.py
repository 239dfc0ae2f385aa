"""`make demo` (keel.testing.demo) end to end: offline image, keel load, run --rm, run -d,
ps, logs, rm -f; nothing left afterwards."""

import glob
import subprocess
import sys


def test_demo_runs_the_whole_quick_start():
    before = set(glob.glob("/tmp/keel-demo-*"))
    r = subprocess.run([sys.executable, "-m", "keel.testing.demo"], capture_output=True, text=True,
                       timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for cmd in ("$ keel load -i", "$ keel run --rm", "$ keel run -d --name demo-ticker", "$ keel ps",
                "$ keel logs --tail 3 demo-ticker", "$ keel rm -f demo-ticker"):
        assert cmd in out, (cmd, out)
    assert "Loaded image: localhost/demo-busybox:latest" in out
    assert "hostname:     keel-demo" in out and "my pid:       1 " in out
    assert "network:      lo (its own network namespace)" in out
    logs = out.split("$ keel logs --tail 3 demo-ticker\n", 1)[1].split("\n\n$ ", 1)[0].splitlines()
    n = [int(line.split()[1]) for line in logs]
    assert [line.split()[0] for line in logs] == ["tick"] * 3 and n == list(range(n[0], n[0] + 3))
    assert out.rstrip().splitlines()[-3].startswith("CONTAINER ID")   # `ps -a` after rm -f: empty
    assert set(glob.glob("/tmp/keel-demo-*")) == before
