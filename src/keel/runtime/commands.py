"""One function per keel-runtime command: parse what the command line gave, call the verb."""

import os
import sys

from keel.oci import fastjson
from keel.runtime.errors import RuntimeError_
from keel.runtime.state import Container, list_ids


def _int(value, flag):
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise RuntimeError_(f"{flag}: {value!r} is not a number") from None
    if n < 0:
        raise RuntimeError_(f"{flag}: must not be negative")
    return n


def cmd_create(opts, args):
    from keel.runtime.create import create

    create(opts.root, args[0], opts.bundle or ".", console_socket=opts.console_socket,
           pid_file=opts.pid_file, no_pivot=bool(opts.no_pivot),
           preserve_fds=_int(opts.preserve_fds or 0, "--preserve-fds"),
           no_new_keyring=bool(opts.no_new_keyring))


def cmd_run(opts, args):
    from keel.runtime.run import run

    return run(opts.root, args[0], opts.bundle or ".", console_socket=opts.console_socket,
               pid_file=opts.pid_file, no_pivot=bool(opts.no_pivot),
               preserve_fds=_int(opts.preserve_fds or 0, "--preserve-fds"),
               detach=bool(opts.detach), keep=bool(opts.keep),
               no_new_keyring=bool(opts.no_new_keyring))


def cmd_start(opts, args):
    from keel.runtime.start import start

    start(Container.load(opts.root, args[0]))


def cmd_state(opts, args):
    c = Container.load(opts.root, args[0])
    sys.stdout.write(fastjson.dumps_indent(c.runc_state()) + "\n")


def cmd_kill(opts, args):
    from keel.runtime.kill import kill, parse_signal

    sig = parse_signal(args[1]) if len(args) > 1 else 15
    kill(Container.load(opts.root, args[0]), sig, bool(opts.all))


def cmd_delete(opts, args):
    from keel.runtime.delete import delete

    try:
        c = Container.load(opts.root, args[0])
    except RuntimeError_:
        if opts.force:
            return 0  # runc: delete --force of a missing container succeeds
        raise
    delete(c, bool(opts.force))


def cmd_list(opts, args):
    list_containers(opts, Container.load, RuntimeError_)


def list_containers(opts, load, error):
    """`list` of keel-runtime and keel-vm: load(root, id) reads a container (raising `error` for
    one that went away meanwhile, which is skipped); `error` also reports a bad --format."""
    fmt = opts.format or "table"
    if fmt not in ("table", "json"):
        raise error(f"--format: unknown format {fmt!r} (table or json)")
    rows = []
    for cid in list_ids(opts.root):
        try:
            rows.append(load(opts.root, cid).runc_state())
        except error:
            continue
    if opts.quiet:
        for r in rows:
            print(r["id"])
    elif fmt == "json":
        print(fastjson.dumps(rows) if rows else "null")
    else:
        out = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        out += [(r["id"], str(r["pid"]), r["status"], r["bundle"], r["created"], r["owner"] or "root")
                for r in rows]
        widths = [max(len(row[i]) for row in out) for i in range(len(out[0]))]
        for row in out:
            print("   ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def cmd_ps(opts, args):
    c = Container.load(opts.root, args[0])
    pids = container_pids(c)
    fmt = opts.format or "table"
    if fmt == "json":
        print(fastjson.dumps(pids))
        return 0
    if fmt != "table":
        raise RuntimeError_(f"--format: unknown format {fmt!r} (table or json)")
    import subprocess

    ps_args = args[1:] or ["-ef"]
    out = subprocess.run(["ps"] + ps_args, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError_(f"ps {' '.join(ps_args)}: {out.stderr.strip()}")
    lines = out.stdout.splitlines()
    if not lines:
        return 0
    header = lines[0].split()
    if "PID" not in header:
        raise RuntimeError_("ps: output has no PID column")
    col = header.index("PID")
    print(lines[0])
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > col and fields[col].isdigit() and int(fields[col]) in pids:
            print(line)


def container_pids(c):
    if c.data.get("cgroup"):
        from keel.kernel.cgroups import Cgroup

        return Cgroup.from_dict(c.data["cgroup"]).pids()
    return [c.pid] if c.alive() else []


def cmd_exec(opts, args):
    from keel.runtime.exec import build_process, exec_

    if opts.process_label:
        from keel.runtime.create import selinux_enabled

        if selinux_enabled():
            raise RuntimeError_("--process-label: SELinux labels are not supported by keel-runtime")
    c = Container.load(opts.root, args[0])
    proc = build_process(c, opts, args[1:])
    from keel.runtime import sealed

    # any process of the container with CAP_SYS_PTRACE could reach this exec's helpers
    sealed.ensure(proc, c.data.get("process"), in_userns=bool(c.data.get("userns")))
    return exec_(c, proc, console_socket=opts.console_socket, detach=bool(opts.detach),
                 pid_file=opts.pid_file, preserve_fds=_int(opts.preserve_fds or 0, "--preserve-fds"),
                 seccomp_profile=c.data.get("seccomp"), ignore_paused=bool(opts.ignore_paused))


def _cgroup_of(c):
    if not c.data.get("cgroup"):
        raise RuntimeError_(f"container {c.id!r} has no cgroup")
    from keel.kernel.cgroups import Cgroup

    return Cgroup.from_dict(c.data["cgroup"])


def cmd_pause(opts, args):
    c = Container.load(opts.root, args[0])
    status = c.status()
    if status != "running":
        raise RuntimeError_(f"cannot pause container {c.id!r}: it is {status}")
    _cgroup_of(c).freeze()


def cmd_resume(opts, args):
    c = Container.load(opts.root, args[0])
    status = c.status()
    if status != "paused":
        raise RuntimeError_(f"cannot resume container {c.id!r}: it is {status}, not paused")
    _cgroup_of(c).thaw()


def cmd_update(opts, args):
    from keel.runtime.update import resources_from, update

    c = Container.load(opts.root, args[0])
    update(c, resources_from(opts))


def cmd_events(opts, args):
    from keel.runtime.events import events, parse_interval

    c = Container.load(opts.root, args[0])
    interval = parse_interval(opts.interval) if opts.interval else 5.0
    try:
        return events(c, bool(opts.stats), interval)
    except BrokenPipeError:
        return 0


def cmd_spec(opts, args):
    from keel.oci.spec import default_spec

    bundle = opts.bundle or "."
    path = os.path.join(bundle, "config.json")
    if os.path.exists(path):
        raise RuntimeError_(f"{path} already exists; remove it first")
    try:
        with open(path, "x") as f:
            f.write(fastjson.dumps_indent(default_spec(rootless=bool(opts.rootless)), "\t") + "\n")
    except OSError as e:
        raise RuntimeError_(f"{path}: {e.strerror.lower()}") from None


def cmd_features(opts, args):
    from keel.runtime.features import features

    print(fastjson.dumps_indent(features()))
