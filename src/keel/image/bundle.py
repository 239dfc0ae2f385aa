"""An OCI bundle (config.json + rootfs) for a runtime, from an image config.

The process follows docker's rules: args (when non-empty) replace the image's Cmd; an
entrypoint override replaces Entrypoint and drops the image's Cmd (an empty override just
removes the Entrypoint); Env is the image's, with
PATH, HOSTNAME and HOME filled in when missing and the caller's env overriding by name;
WorkingDir (created in the rootfs if missing, as docker does); User "uid", "uid:gid", "name",
"name:group" (and mixes) resolved from the rootfs's /etc/passwd and /etc/group, read with
openat2(RESOLVE_IN_ROOT) so a symlinked /etc/passwd resolves inside the rootfs, never on the
host. Everything else starts from `keel-runtime spec`'s defaults, with terminal off, the rootfs
writable and Docker's default capability set. ExposedPorts, Labels and StopSignal become
annotations as the OCI image spec's conversion rules say.
"""

import errno
import json
import os
import stat

from keel.image.errors import ImageError
from keel.kernel import libc

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
               "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
               "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
ANN_EXPOSED_PORTS = "org.opencontainers.image.exposedPorts"
ANN_STOP_SIGNAL = "org.opencontainers.image.stopSignal"
_RESOLVE = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
_MAX_DB = 4 << 20


def make_bundle(image, rootfs: str, bundle_dir: str, args: list[str] | None = None, *,
                entrypoint: list[str] | None = None, env: list[str] | dict | None = None,
                workdir: str | None = None, user: str | None = None, hostname: str | None = None,
                terminal: bool = False, readonly: bool = False, annotations: dict | None = None,
                capabilities: list[str] | None = None, no_new_privileges: bool = False,
                create_workdir: bool = True) -> str:
    """Write bundle_dir/config.json for `image` (anything with a .config dict, or the config
    dict itself) running on `rootfs`; returns bundle_dir. ImageError for a config that cannot
    run (no command, unknown user or group, a relative or unreachable working dir)."""
    spec = bundle_spec(image, rootfs, args, entrypoint=entrypoint, env=env, workdir=workdir,
                       user=user, hostname=hostname, terminal=terminal, readonly=readonly,
                       annotations=annotations, capabilities=capabilities,
                       no_new_privileges=no_new_privileges)
    if create_workdir:
        mkdir_in_root(rootfs, spec["process"]["cwd"])
    try:
        os.makedirs(bundle_dir, 0o711, exist_ok=True)
        path = os.path.join(bundle_dir, "config.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(spec, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except OSError as e:
        raise ImageError(f"bundle {bundle_dir}: writing config.json: {(e.strerror or str(e)).lower()}") from None
    return bundle_dir


def bundle_spec(image, rootfs, args=None, *, entrypoint=None, env=None, workdir=None, user=None,
                hostname=None, terminal=False, readonly=False, annotations=None,
                capabilities=None, no_new_privileges=False) -> dict:
    """The config.json make_bundle writes, as a dict (nothing written)."""
    from keel.oci.spec import default_spec  # data only: the runc-like defaults

    full = image if isinstance(image, dict) else image.config
    cfg = full.get("config") or {}
    what = f"image {getattr(image, 'id', '') or 'config'}"

    # command: docker's override rules
    image_ep = _strlist(cfg.get("Entrypoint"), f"{what}: config.Entrypoint")
    image_cmd = _strlist(cfg.get("Cmd"), f"{what}: config.Cmd")
    if entrypoint is None:
        ep, cmd = image_ep, list(args) if args else image_cmd
    elif not [a for a in entrypoint if a != ""]:
        ep, cmd = [], list(args) if args else image_cmd  # `--entrypoint ""`: no entrypoint
    else:
        ep, cmd = list(entrypoint), list(args or [])     # a new entrypoint drops the image's Cmd
    argv = ep + cmd
    if not argv:
        raise ImageError(f"{what}: no command: the image has no Entrypoint or Cmd and none was given")

    hostname = hostname or "keel"
    uid, gid, extra_gids, home = resolve_user(rootfs, user if user is not None else cfg.get("User") or "")

    # environment: image, defaults, caller
    envs = _merge_env([], _strlist(cfg.get("Env"), f"{what}: config.Env"))
    if not any(e.startswith("PATH=") for e in envs):
        envs.insert(0, DEFAULT_PATH)
    defaults = [f"HOSTNAME={hostname}", f"HOME={home}"] + (["TERM=xterm"] if terminal else [])
    envs = envs + [d for d in defaults if not any(e.split("=", 1)[0] == d.split("=", 1)[0] for e in envs)]
    if env:
        envs = _merge_env(envs, [f"{k}={v}" for k, v in env.items()] if isinstance(env, dict) else list(env))

    cwd = workdir or cfg.get("WorkingDir") or "/"
    if not cwd.startswith("/"):
        cwd = "/" + cwd  # docker treats a relative WorkingDir as relative to /

    spec = default_spec()
    proc = spec["process"]
    proc["terminal"] = bool(terminal)
    proc["args"] = argv
    proc["env"] = envs
    proc["cwd"] = cwd
    proc["user"] = {"uid": uid, "gid": gid}
    if extra_gids:
        proc["user"]["additionalGids"] = extra_gids
    caps = list(capabilities) if capabilities is not None else list(DOCKER_CAPS)
    proc["capabilities"] = {"bounding": caps, "effective": list(caps), "permitted": list(caps)}
    proc["noNewPrivileges"] = bool(no_new_privileges)
    spec["root"] = {"path": os.path.abspath(rootfs), "readonly": bool(readonly)}
    spec["hostname"] = hostname

    ann = {}
    labels = cfg.get("Labels") or {}
    if isinstance(labels, dict):
        ann.update({str(k): str(v) for k, v in labels.items()})
    ports = cfg.get("ExposedPorts") or {}
    if isinstance(ports, dict) and ports:
        ann[ANN_EXPOSED_PORTS] = ",".join(sorted(ports, key=_port_key))
    if cfg.get("StopSignal"):
        ann[ANN_STOP_SIGNAL] = str(cfg["StopSignal"])
    for key in ("os", "architecture"):
        if full.get(key):
            ann[f"org.opencontainers.image.{key}"] = str(full[key])
    if getattr(image, "id", None):
        ann["org.opencontainers.image.id"] = image.id
    ann.update(annotations or {})
    if ann:
        spec["annotations"] = ann
    return spec


def _port_key(p):
    num, _, proto = str(p).partition("/")
    return (int(num) if num.isdigit() else 1 << 20, proto, str(p))


def _strlist(value, what):
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"{what}: expected a list of strings")
    return list(value)


def _merge_env(base, more):
    """`more` over `base` by variable name, keeping first-seen order."""
    out = list(base)
    for e in more:
        name = e.split("=", 1)[0]
        for i, old in enumerate(out):
            if old.split("=", 1)[0] == name:
                out[i] = e
                break
        else:
            out.append(e)
    return out


# -- users ----------------------------------------------------------------------------------------


def read_in_root(rootfs: str, path: str) -> bytes | None:
    """The bytes of a regular file at `path` inside `rootfs`, every symlink resolved inside it
    (never out of it); None if missing or not a regular file."""
    try:
        root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ImageError(f"rootfs {rootfs}: {(e.strerror or str(e)).lower()}") from None
    try:
        fd = libc.openat2(root, path.lstrip("/"), os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY, _RESOLVE)
    except OSError:
        return None
    finally:
        os.close(root)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None  # a fifo or device named /etc/passwd is never read
        chunks, total = [], 0
        while total <= _MAX_DB:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)[:_MAX_DB]
    finally:
        os.close(fd)


def _db(rootfs, path, fields):
    data = read_in_root(rootfs, path)
    rows = []
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) < fields:
            parts += [""] * (fields - len(parts))
        rows.append(parts)
    return rows


def _int(s):
    return int(s) if s.isdigit() and len(s) < 11 and int(s) < 1 << 32 else None


def resolve_user(rootfs: str, spec: str) -> tuple[int, int, list[int], str]:
    """(uid, gid, additional gids, home) for a docker USER string, as runc's GetExecUser does:
    a numeric uid needs no passwd entry (gid 0 then), a name must exist; an explicit group
    (number or name) is the primary group, else the passwd entry's; without an explicit group
    the user's memberships in /etc/group are the additional gids."""
    spec = (spec or "").strip()
    user_part, _, group_part = spec.partition(":")
    user_part = user_part or "0"
    passwd = _db(rootfs, "/etc/passwd", 7)
    uid = _int(user_part)
    entry = None
    for row in passwd:
        if (uid is None and row[0] == user_part) or (uid is not None and _int(row[2]) == uid):
            entry = row
            break
    if entry is None and uid is None:
        raise ImageError(f"user {spec!r}: no user {user_part!r} in the image's /etc/passwd")
    name = entry[0] if entry else None
    if entry is not None:
        uid = _int(entry[2])
        if uid is None:
            raise ImageError(f"user {spec!r}: /etc/passwd entry {name!r} has an invalid uid")
    home = (entry[5] if entry and entry[5] else "/")
    groups = _db(rootfs, "/etc/group", 4)
    extra = []
    if group_part:
        gid = _int(group_part)
        if gid is None:
            for row in groups:
                if row[0] == group_part and _int(row[2]) is not None:
                    gid = _int(row[2])
                    break
            else:
                raise ImageError(f"user {spec!r}: no group {group_part!r} in the image's /etc/group")
    else:
        gid = _int(entry[3]) if entry and _int(entry[3]) is not None else 0
        if name:
            for row in groups:
                g = _int(row[2])
                if g is not None and name in row[3].split(",") and g != gid and g not in extra:
                    extra.append(g)
    return uid, gid, extra, home


# -- rootfs ----------------------------------------------------------------------------------------


def mkdir_in_root(rootfs: str, path: str, mode: int = 0o755) -> None:
    """mkdir -p `path` inside `rootfs`, each symlink on the way resolved inside it."""
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise ImageError(f"working dir {path!r}: '..' is not allowed")
    try:
        root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ImageError(f"rootfs {rootfs}: {(e.strerror or str(e)).lower()}") from None
    fd = os.dup(root)
    try:
        for i, comp in enumerate(parts):
            sub = "/".join(parts[:i + 1])
            try:
                nfd = libc.openat2(root, sub, os.O_PATH | os.O_DIRECTORY, _RESOLVE)
            except OSError as e:
                if e.errno == errno.ENOTDIR:
                    raise ImageError(f"working dir {path}: /{sub} is not a directory") from None
                if e.errno != errno.ENOENT:
                    raise ImageError(f"working dir {path}: /{sub}: {e.strerror.lower()}") from None
                try:
                    os.mkdir(comp, mode, dir_fd=fd)
                except FileExistsError:
                    raise ImageError(f"working dir {path}: /{sub} is a dangling symlink") from None
                except OSError as e:
                    raise ImageError(f"working dir {path}: mkdir /{sub}: {e.strerror.lower()}") from None
                nfd = libc.openat2(fd, comp, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW,
                                   libc.RESOLVE_BENEATH | libc.RESOLVE_NO_SYMLINKS)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
        os.close(root)
