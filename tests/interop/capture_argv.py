"""Show the exact argv that podman (via conmon) and containerd (via the runc v2 shim) pass to an
OCI runtime: each peer is pointed at a logging wrapper around the runtime, a set of everyday
scenarios is played, and every call is printed under the scenario that caused it.

    .venv/bin/python tests/interop/capture_argv.py                 # around /usr/sbin/runc
    .venv/bin/python tests/interop/capture_argv.py --runtime PATH  # around any runtime
    .venv/bin/python tests/interop/capture_argv.py --json out.json

Run as root. Everything is created in private temp dirs and removed at the end, as in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import interop_helpers as h  # noqa: E402
import interop_peers as peers  # noqa: E402


def _shorten(argv, subs):
    out = []
    for a in argv:
        for old, new in subs:
            a = a.replace(old, new)
        a = re.sub(r"\b[0-9a-f]{64}\b", "<ID>", a)
        out.append(a)
    return out


class Recorder:
    def __init__(self, logfile):
        self.logfile = logfile
        self.seen = 0
        self.scenarios = []

    def scenario(self, peer, title, fn):
        try:
            fn()
            error = None
        except Exception as e:  # keep going: a failing scenario still shows its calls
            error = f"{type(e).__name__}: {str(e)[:300]}"
        h.wait_for(lambda: False, 0.3)  # let asynchronous cleanup (conmon exit command) log too
        calls = h.read_argv_log(self.logfile)[self.seen:] if os.path.exists(self.logfile) else []
        self.seen += len(calls)
        self.scenarios.append({"peer": peer, "scenario": title, "error": error, "calls": calls})


def pty_expect(argv, send, code, env=None):
    out, rc = h.run_in_pty(argv, send, env=env)
    if rc != code:
        raise AssertionError(f"exit {rc}, expected {code}: {out.decode(errors='replace')[-300:]!r}")


def podman_scenarios(rec, runtime, rootfs_tar):
    p = peers.Podman(peers.make_workdir("keel-argv-podman-"), runtime)
    try:
        p.import_image(rootfs_tar)
        img = p.image
        rec.scenario("podman", "podman run --rm IMG echo ok",
                     lambda: p("run", "--rm", img, "echo", "ok", check=True))
        rec.scenario("podman", "podman run -it --rm IMG sh  (on a pty)",
                     lambda: pty_expect(p.argv("run", "-it", "--rm", img, "sh"), b"exit 5\n", 5, env=p.env))
        state = {}

        def run_d():
            state["cid"] = p("run", "-d", "--name", "c1", img, "sleep", "100", check=True).stdout.strip()
        rec.scenario("podman", "podman run -d IMG sleep 100", run_d)
        rec.scenario("podman", "podman ps; podman inspect c1",
                     lambda: (p("ps", check=True), p("inspect", "c1", check=True)))
        rec.scenario("podman", "podman ps --sync", lambda: p("ps", "--sync", check=True))
        rec.scenario("podman", "podman info", lambda: p("info", check=True))
        rec.scenario("podman", "podman update --memory 64m c1",
                     lambda: p("update", "--memory", "64m", "c1", check=True))
        rec.scenario("podman", "podman exec c1 echo inside", lambda: p("exec", "c1", "echo", "inside", check=True))
        rec.scenario("podman", "podman exec -it c1 sh  (on a pty)",
                     lambda: pty_expect(p.argv("exec", "-it", "c1", "sh"), b"exit 3\n", 3, env=p.env))
        rec.scenario("podman", "podman pause c1; podman unpause c1",
                     lambda: (p("pause", "c1", check=True), p("unpause", "c1", check=True)))
        rec.scenario("podman", "podman stop -t 1 c1", lambda: p("stop", "-t", "1", "c1", check=True))
        rec.scenario("podman", "podman start c1", lambda: p("start", "c1", check=True))
        rec.scenario("podman", "podman kill -s KILL c1; podman wait c1",
                     lambda: (p("kill", "-s", "KILL", "c1", check=True), p("wait", "c1", check=True)))
        rec.scenario("podman", "podman rm c1", lambda: p("rm", "c1", check=True))
        rec.scenario("podman", "podman run -d IMG sleep 100; podman rm -f c2",
                     lambda: (p("run", "-d", "--name", "c2", img, "sleep", "100", check=True),
                              p("rm", "-f", "-t", "0", "c2", check=True)))
        return p.workdir
    finally:
        p.close()


def containerd_scenarios(rec, runtime, oci_archive):
    d = peers.Containerd(peers.make_workdir("keel-argv-ctrd-")).start()
    try:
        c = d.ctr(runtime, "argv")
        c.import_image(oci_archive)
        rec.scenario("containerd", "ctr run --rm IMG c0 sh -c 'exit 3'", lambda: c.run("c0", "sh", "-c", "exit 3"))
        rec.scenario("containerd", "ctr run --rm -t IMG t0 sh  (on a pty)",
                     lambda: pty_expect(c.argv(*c.run_args("t0", "sh", extra=["-t"])), b"exit 2\n", 2))
        rec.scenario("containerd", "ctr run -d IMG c1 sleep 100", lambda: c.run("c1", "sleep", "100", detach=True, check=True))
        rec.scenario("containerd", "ctr tasks exec --exec-id e1 c1 echo inside",
                     lambda: c.exec("c1", "echo", "inside", exec_id="e1", check=True))
        rec.scenario("containerd", "ctr tasks exec -t --exec-id e2 c1 sh  (on a pty)",
                     lambda: pty_expect(c.argv("tasks", "exec", "-t", "--exec-id", "e2", "--fifo-dir",
                                               c.fifo_dir, "c1", "sh"), b"exit 4\n", 4))
        rec.scenario("containerd", "ctr tasks ps c1", lambda: c("tasks", "ps", "c1", check=True))
        rec.scenario("containerd", "ctr tasks pause c1; ctr tasks resume c1",
                     lambda: (c("tasks", "pause", "c1", check=True), c("tasks", "resume", "c1", check=True)))
        rec.scenario("containerd", "ctr tasks kill -s SIGKILL c1",
                     lambda: (c("tasks", "kill", "-s", "SIGKILL", "c1", check=True),
                              h.wait_for(lambda: c.task_status("c1") == "STOPPED", 5)))
        rec.scenario("containerd", "ctr tasks delete c1; ctr containers delete c1",
                     lambda: (c.delete_task("c1"), c("containers", "delete", "c1", check=True)))
        rec.scenario("containerd", "ctr run -d IMG c2 sleep 100; ctr tasks delete --force c2",
                     lambda: (c.run("c2", "sleep", "100", detach=True, check=True),
                              c("tasks", "delete", "--force", "c2", check=True)))
        c.cleanup()
        return d.workdir
    finally:
        d.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime", default="/usr/sbin/runc", help="runtime to wrap (default: runc)")
    ap.add_argument("--peers", default="podman,containerd", help="comma list (default: both)")
    ap.add_argument("--json", help="also write the calls as JSON here")
    ap.add_argument("--raw", action="store_true", help="do not shorten temp paths and ids")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root")
    work = peers.make_workdir("keel-argv-")
    try:
        logfile = os.path.join(work, "argv.log")
        wrapper = h.argv_logging_wrapper(work, os.path.abspath(args.runtime), logfile)
        rootfs_tar = h.build_rootfs_tar(work)
        oci_archive = h.build_oci_archive(rootfs_tar, os.path.join(work, "oci.tar"))
        rec = Recorder(logfile)
        subs = [(wrapper, "RUNTIME")]
        if "podman" in args.peers:
            wd = podman_scenarios(rec, wrapper, rootfs_tar)
            subs.append((wd, "$PODMAN"))
        if "containerd" in args.peers:
            wd = containerd_scenarios(rec, wrapper, oci_archive)
            subs.append((wd, "$CTRD"))
        subs.append((work, "$WORK"))
        for sc in rec.scenarios:
            print(f"## {sc['peer']}: {sc['scenario']}" + (f"   [failed: {sc['error']}]" if sc["error"] else ""))
            for call in sc["calls"]:
                a = call["argv"] if args.raw else _shorten(call["argv"], subs)
                print(f"  ({call['parent']}) " + " ".join(a))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rec.scenarios, f, indent=1)
    finally:
        h.rmtree(work)


if __name__ == "__main__":
    main()
