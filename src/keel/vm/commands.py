"""One function per keel-vm command (the runc command line), over the shim's requests."""

import os
import signal
import sys
import time

from keel.oci import fastjson
from keel.vm.errors import VMError
from keel.vm.state import VMContainer, read_reply


def _load(opts, cid):
    return VMContainer.load(opts.root, cid)


def cmd_create(opts, args):
    from keel.vm.create import create

    if opts.preserve_fds not in (None, "0"):
        raise VMError("--preserve-fds: passing host file descriptors into a VM is not supported")
    create(opts.root, args[0], opts.bundle or ".", console_socket=opts.console_socket, pid_file=opts.pid_file)


def cmd_run(opts, args):
    from keel.vm.create import run

    if opts.preserve_fds not in (None, "0"):
        raise VMError("--preserve-fds: passing host file descriptors into a VM is not supported")
    return run(opts.root, args[0], opts.bundle or ".", console_socket=opts.console_socket,
               pid_file=opts.pid_file, detach=bool(opts.detach), keep=bool(opts.keep))


def start(c):
    status = c.status()
    if status != "created":
        raise VMError(f"cannot start container {c.id!r}: it is {status}, not created")
    s, _, _ = c.request({"op": "start"})
    s.close()
    from keel.runtime import hooks

    hooks.run_warn(c.data.get("hooks"), "poststart", c.oci_state("running"))


def cmd_start(opts, args):
    start(_load(opts, args[0]))


def cmd_state(opts, args):
    c = _load(opts, args[0])
    sys.stdout.write(fastjson.dumps_indent(c.runc_state()) + "\n")


def cmd_kill(opts, args):
    from keel.runtime.kill import parse_signal
    from keel.runtime.errors import RuntimeError_

    c = _load(opts, args[0])
    try:
        sig = parse_signal(args[1]) if len(args) > 1 else 15
    except RuntimeError_ as e:
        raise VMError(str(e)) from None
    kill(c, sig, bool(opts.all))


def kill(c, sig, all_processes=False):
    status = c.status()
    if status == "stopped" or status == "creating":
        raise VMError(f"cannot kill container {c.id!r}: it is not running")
    try:
        s, _, _ = c.request({"op": "kill", "signal": sig, "all": all_processes}, timeout=10)
        s.close()
    except VMError:
        if sig != signal.SIGKILL:
            raise
        _kill_shim(c)  # a shim that no longer answers still goes, and takes its VM with it


def _kill_shim(c):
    try:
        pidfd = os.pidfd_open(c.pid)
    except (ProcessLookupError, OSError):
        return
    try:
        if c.alive():  # identity re-checked after pinning the pid: never signal a recycled pid
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            import select

            select.select([pidfd], [], [], 10)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def delete(c, force=False):
    status = c.status()
    if status in ("running", "creating") and not force:
        raise VMError(f"cannot delete container {c.id!r}: it is {status} (stop it first or use --force)")
    if status == "creating":
        # its create is still booting the VM: killing the creator makes the shim tear down
        try:
            os.kill(c.data["creator"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    if status != "stopped" or c.alive():
        _kill_shim(c)
    deadline = time.monotonic() + 10
    while c.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    _kill_leftovers(c)
    if c.data.get("vmCgroup"):
        from keel.kernel.cgroups import Cgroup, CgroupError

        try:
            Cgroup.from_dict(c.data["vmCgroup"]).destroy(timeout=5)
        except CgroupError as e:
            raise VMError(f"cannot delete container {c.id!r}: its cgroup: {e}") from None
    from keel.runtime import hooks

    if c.data.get("status") != "creating":
        hooks.run_warn(c.data.get("hooks"), "poststop", c.oci_state("stopped"))
    import shutil  # here: it imports re and fnmatch, ~6 ms every command would pay

    shutil.rmtree(c.dir, ignore_errors=True)


def _kill_leftovers(c):
    """QEMU and virtiofsd die with their shim (PDEATHSIG): wait for that, by pid and start time;
    SIGKILL what still runs after 2 s. A zombie waiting for its reaper counts as gone."""
    from keel.vm.state import proc_start_time

    vm = c.data.get("vm") or {}
    procs = [(vm.get(k + "Pid"), vm.get(k + "Start")) for k in ("qemu", "virtiofsd")]

    def running():
        out = []
        for pid, start in procs:
            if pid and start:
                t, st = proc_start_time(pid)
                if t == start and st not in ("Z", "X"):
                    out.append(pid)
        return out

    grace, deadline = time.monotonic() + 2, time.monotonic() + 10
    left = running()
    while left and time.monotonic() < deadline:
        if time.monotonic() > grace:
            for pid in left:
                _kill_pinned(pid, dict(procs)[pid])
        time.sleep(0.02)
        left = running()


def _kill_pinned(pid, start):
    """SIGKILL `pid` through a pidfd, after checking (with the pid pinned) it is still the
    process that started at `start`: a recycled pid is never signalled."""
    from keel.vm.state import proc_start_time

    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if proc_start_time(pid)[0] == start:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(fd)


def cmd_delete(opts, args):
    try:
        c = _load(opts, args[0])
    except VMError:
        if opts.force:
            return 0
        raise
    delete(c, bool(opts.force))


def cmd_list(opts, args):
    from keel.runtime.commands import list_containers

    list_containers(opts, VMContainer.load, VMError)


def cmd_ps(opts, args):
    """JSON: the host pids that stand for the container (its shim), as engines map pids on the
    host. Table: the container's processes inside the guest, with their pids there."""
    c = _load(opts, args[0])
    fmt = opts.format or "table"
    if fmt not in ("table", "json"):
        raise VMError(f"--format: unknown format {fmt!r} (table or json)")
    running = c.status() in ("created", "running", "paused")
    if fmt == "json":
        print(fastjson.dumps([c.pid] if running else []))
        return 0
    print("PID (in the guest)   COMMAND")
    if c.status() != "running":
        return 0
    s, _, reply = c.request({"op": "ps"}, timeout=30)
    s.close()
    for pid, cmd in sorted(zip(reply["pids"], reply["args"])):
        print(f"{pid:<20} {cmd}")


def cmd_exec(opts, args):
    from keel.runtime.errors import RuntimeError_
    from keel.runtime.exec import build_process
    from keel.vm.guestspec import process_fields

    c = _load(opts, args[0])
    status = c.status()
    if status != "running":
        raise VMError(f"cannot exec in container {c.id!r}: it is {status}")
    if opts.preserve_fds not in (None, "0"):
        raise VMError("--preserve-fds: passing host file descriptors into a VM is not supported")
    try:
        proc = build_process(c, opts, args[1:])
    except RuntimeError_ as e:
        raise VMError(str(e)) from None
    fields = process_fields(proc)
    stdio, slave = (0, 1, 2), None
    if fields["terminal"]:
        if not opts.console_socket:
            raise VMError("exec --tty needs --console-socket")
        from keel.vm import console

        slave = console.make(os.path.abspath(opts.console_socket))
        stdio = (slave, slave, slave)
    s, reader, _ = c.request({"op": "exec", "process": fields}, fds=stdio)  # first reply: started
    # A child lives as long as the process and ends with its status: the pid conmon waits on
    # with --detach, and the holder of the terminal (its resizes go to the guest).
    pid = os.fork()
    if pid == 0:
        try:
            if slave is not None:
                _follow_resizes(s, slave)
            _forward_signals(s)
            reply = read_reply(reader, c.id)
            from keel.vm.shim import exit_like

            exit_like(reply["exit"])
        finally:
            os._exit(255)
    s.close()
    if slave is not None:
        os.close(slave)
    if opts.pid_file:
        from keel.vm.create import _write_pid_file

        _write_pid_file(opts.pid_file, pid)
    if opts.detach:
        return 0
    from keel.runtime.attach import Forwarder, exit_code

    forwarder = Forwarder(pid)  # signals to exec reach the process, as runc's exec forwards them
    forwarder.release()
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                return exit_code(status)
            except InterruptedError:
                continue
    finally:
        forwarder.restore()


def _send_line(sock, obj):
    from keel.oci import fastjson

    try:
        sock.sendall((fastjson.dumps(obj) + "\n").encode())
    except OSError:
        pass


def _forward_signals(sock):
    """In the exec's child: signals it gets go to the process in the guest."""
    from keel.runtime.attach import FORWARDED

    for sig in FORWARDED:
        if sig != signal.SIGWINCH:
            signal.signal(sig, lambda n, _f: _send_line(sock, {"op": "signal", "signal": int(n)}))


def _follow_resizes(sock, slave):
    """In the exec's child: own the terminal and send its size now and on every SIGWINCH."""
    from keel.vm import console

    console.own(slave)

    def send_size(*_):
        got = console.size(slave)
        if got:
            _send_line(sock, {"op": "resize", "rows": got[0], "cols": got[1]})

    signal.signal(signal.SIGWINCH, send_size)
    send_size()


def cmd_features(opts, args):
    from keel.vm.features import features

    print(fastjson.dumps_indent(features()))


def cmd_spec(opts, args):
    from keel.runtime.commands import cmd_spec as runtime_spec
    from keel.runtime.errors import RuntimeError_

    try:
        return runtime_spec(opts, args)
    except RuntimeError_ as e:
        raise VMError(str(e)) from None


def _pause_resume(op):
    def cmd(opts, args):
        c = _load(opts, args[0])
        status, want = c.status(), ("running" if op == "pause" else "paused")
        if status != want:
            raise VMError(f"cannot {op} container {c.id!r}: it is {status}, not {want}")
        s, _, _ = c.request({"op": op}, timeout=30)
        s.close()
    return cmd


cmd_pause = _pause_resume("pause")  # the whole VM: QEMU's vCPUs stop (QMP stop / cont)
cmd_resume = _pause_resume("resume")
def cmd_update(opts, args):
    """New limits for the container's cgroup in the guest. The VM's own size (memory, vCPUs)
    is fixed at boot: a memory limit beyond it is refused."""
    from keel.runtime.errors import RuntimeError_
    from keel.runtime.update import resources_from
    from keel.vm.guestspec import guest_cgroup

    c = _load(opts, args[0])
    status = c.status()
    if status not in ("created", "running"):
        raise VMError(f"cannot update container {c.id!r}: it is {status}")
    try:
        res = resources_from(opts)
    except RuntimeError_ as e:
        raise VMError(str(e)) from None
    vm_mib = (c.data.get("vm") or {}).get("memoryMiB", 0)
    limit = (res.get("memory") or {}).get("limit")
    if limit and limit > 0 and vm_mib and limit > vm_mib << 20:
        raise VMError(f"--memory {limit}: more than the VM's {vm_mib} MiB (fixed when it booted)")
    unsupported = sorted(k for k in res if k not in ("memory", "cpu", "pids", "unified") and res[k])
    unsupported += [f"cpu.{k}" for k in ("cpus", "mems", "realtimeRuntime", "realtimePeriod")
                    if (res.get("cpu") or {}).get(k)]
    if unsupported:
        raise VMError(f"update: {', '.join(unsupported)} cannot be changed inside a keel-vm guest")
    keys, values = guest_cgroup({"linux": {"resources": res}})
    if not keys:
        return 0
    s, _, _ = c.request({"op": "update", "cg_key": keys, "cg_val": values}, timeout=30)
    s.close()
def cmd_events(opts, args):
    """runc's events, from the host cgroup the VM (QEMU and virtiofsd) runs in: what the
    container costs the host, as engines see it."""
    from keel.runtime.errors import RuntimeError_
    from keel.runtime.events import events, parse_interval

    c = _load(opts, args[0])
    if not c.data.get("vmCgroup"):
        raise VMError(f"container {c.id!r} has no cgroup")
    c.data["cgroup"] = c.data["vmCgroup"]  # in memory only: what keel.runtime.events reads
    try:
        interval = parse_interval(opts.interval) if opts.interval else 5.0
        return events(c, bool(opts.stats), interval)
    except RuntimeError_ as e:
        raise VMError(str(e)) from None
    except BrokenPipeError:
        return 0
