"""The security, resource and storage flags of `keel run` and `keel create` (podman's
spellings); keel.engine.specgen checks them and turns them into the container's config."""


def add_flags(p):
    a = p.add_argument
    a("--cap-add", action="append", default=[], metavar="CAP", help="add a capability (ALL for every one)")
    a("--cap-drop", action="append", default=[], metavar="CAP", help="drop a capability (ALL for every one)")
    a("--privileged", action="store_true",
      help="every capability, no seccomp filter, no masked paths, the host's devices")
    a("--security-opt", action="append", default=[], metavar="OPT",
      help="seccomp=FILE|unconfined, no-new-privileges[=true|false], mask=PATHS, unmask=ALL|PATHS")
    a("--read-only", action="store_true", help="mount the container's root filesystem read-only")
    a("--read-only-tmpfs", nargs="?", const="true", default="true", metavar="BOOL",
      help="with --read-only, a writable tmpfs on /run, /tmp and /var/tmp (default true)")
    a("-m", "--memory", metavar="SIZE", help="memory limit (b, k, m, g suffixes)")
    a("--memory-swap", metavar="SIZE", help="memory plus swap limit (-1: unlimited swap)")
    a("--memory-reservation", metavar="SIZE", help="memory soft limit")
    a("--cpus", metavar="N", help="number of CPUs (CFS quota over a 100ms period)")
    a("-c", "--cpu-shares", metavar="N", help="CPU shares (relative weight)")
    a("--cpu-period", metavar="US", help="CFS period in microseconds")
    a("--cpu-quota", metavar="US", help="CFS quota in microseconds")
    a("--cpuset-cpus", metavar="LIST", help="CPUs the container may use (0-2,4)")
    a("--cpuset-mems", metavar="LIST", help="memory nodes the container may use")
    a("--pids-limit", metavar="N", help="maximum number of processes (-1: unlimited)")
    a("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]", help="set a resource limit")
    a("--sysctl", action="append", default=[], metavar="KEY=VALUE", help="set a namespaced sysctl")
    a("-v", "--volume", action="append", default=[], metavar="SRC:DST[:OPTS]",
      help="bind mount a host path, or mount a named volume (NAME:DST) or an anonymous one (DST)")
    a("--tmpfs", action="append", default=[], metavar="PATH[:OPTS]", help="mount a tmpfs")
    a("--mount", action="append", default=[], metavar="type=TYPE,...",
      help="type=bind|volume|tmpfs,source=,target=,readonly,...")
    a("--device", action="append", default=[], metavar="HOST[:CTR][:PERMS]",
      help="add a host device (PERMS: r, w, m; default rwm)")
    a("--shm-size", metavar="SIZE", help="size of /dev/shm (default 64m)")
    a("--init", action="store_true", help="run an init (catatonit) as pid 1 that runs the command")
    a("--init-path", metavar="PATH", help="the init binary for --init")


def parse(args, network="none") -> dict:
    from keel.engine import specgen
    from keel.engine.errors import EngineError

    ro_tmpfs = str(args.read_only_tmpfs).lower()
    if ro_tmpfs not in ("true", "false", "1", "0"):
        raise EngineError(f"--read-only-tmpfs {args.read_only_tmpfs!r}: true or false")
    return specgen.parse(
        cap_add=args.cap_add, cap_drop=args.cap_drop, privileged=args.privileged,
        security_opt=args.security_opt, read_only=args.read_only,
        read_only_tmpfs=ro_tmpfs in ("true", "1"), memory=args.memory, memory_swap=args.memory_swap,
        memory_reservation=args.memory_reservation, cpus=args.cpus, cpu_shares=args.cpu_shares,
        cpu_period=args.cpu_period, cpu_quota=args.cpu_quota, cpuset_cpus=args.cpuset_cpus,
        cpuset_mems=args.cpuset_mems, pids_limit=args.pids_limit, ulimits=args.ulimit,
        sysctls=args.sysctl, volumes=args.volume, tmpfs=args.tmpfs, mounts=args.mount,
        init=args.init, init_path=args.init_path, devices=args.device, shm_size=args.shm_size,
        network=network)
