"""keel's Python API, in the shape of the docker SDK, daemonless:

    import keel
    c = keel.Client(root="/var/lib/keel", runroot="/run/keel")
    c.images.pull("localhost:5000/busybox", tls_verify=False)
    out = c.containers.run("busybox", ["echo", "hi"], remove=True)      # b"hi\\n"
    ctr = c.containers.run("busybox", "sleep 60", detach=True)
    ctr.stop(); ctr.wait()["StatusCode"]; ctr.remove()

The client drives keel.engine and keel.image in this process; the containers it starts are
watched by conmon and outlive the program, exactly as `keel run -d` containers do, and the `keel`
command sees them. Errors follow docker's tree: ContainerError (non-zero exit of a foreground
run, with exit_status, command, image and stderr), APIError (status_code, explanation) with
NotFound and ImageNotFound below it, and InvalidArgument for options keel cannot honour: a docker
option keel's engine does not implement yet is refused by name, never silently dropped.

A Client may be shared between threads: each thread gets its own engine (SQLite connections),
dropped with the thread.
"""

import contextlib
import datetime
import os
import shlex
import threading

from keel.errors import KeelError

_all = all   # list() methods take docker's `all` argument, which hides the builtin there
DEFAULT_ROOT = "/var/lib/keel"
DEFAULT_RUNROOT = "/run/keel"


# -- errors -----------------------------------------------------------------------------------

class APIError(KeelError):
    """An operation failed; status_code is the HTTP status docker's API would have answered."""

    def __init__(self, message: str, status_code: int = 500, explanation: str | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.explanation = explanation if explanation is not None else message
        self.response = None

    def is_client_error(self) -> bool:
        return 400 <= self.status_code < 500

    def is_server_error(self) -> bool:
        return 500 <= self.status_code < 600


class NotFound(APIError):
    def __init__(self, message: str, explanation: str | None = None):
        super().__init__(message, 404, explanation)


class ImageNotFound(NotFound):
    pass


class InvalidArgument(KeelError):
    """An argument keel cannot honour (a bad value, or an option not implemented yet)."""


class ContainerError(KeelError):
    """A foreground run exited non-zero."""

    def __init__(self, container, exit_status: int, command, image, stderr: bytes | None):
        self.container = container
        self.exit_status = exit_status
        self.command = command
        self.image = image
        self.stderr = stderr
        err = f": {stderr.decode(errors='replace').strip()}" if stderr else ""
        super().__init__(f"Command '{command}' in image '{image}' returned non-zero exit "
                         f"status {exit_status}{err}")


@contextlib.contextmanager
def _translated():
    """keel.engine / keel.image errors become the client's (docker's) error classes."""
    from keel.engine import errors as ee
    from keel.image import errors as ie

    try:
        yield
    except (APIError, InvalidArgument, ContainerError):
        raise
    except ee.ContainerNotFound as e:
        raise NotFound(str(e)) from None
    except (ee.NameInUse, ee.InvalidState) as e:
        raise APIError(str(e), 409) from None
    except ee.NotSupported as e:
        raise InvalidArgument(str(e)) from None
    except ee.EngineError as e:
        msg = str(e)
        if "image not found" in msg:
            raise ImageNotFound(msg) from None
        raise APIError(msg, 400 if msg.startswith(("invalid", "--")) else 500) from None
    except ie.ImageNotFound as e:
        raise ImageNotFound(str(e)) from None
    except ie.ReferenceError_ as e:
        raise APIError(str(e), 400) from None
    except ie.RegistryError as e:
        if e.status == 404:
            raise ImageNotFound(str(e)) from None
        raise APIError(str(e), e.status or 500) from None
    except ie.ImageError as e:
        raise APIError(str(e), 500) from None
    except KeelError as e:   # a lower layer's (kernel, oci) error: still one of ours
        raise APIError(str(e), 500) from None


# -- options ----------------------------------------------------------------------------------

# docker SDK create/run options that keel's engine does not implement (yet): refused by name
# when given a value, so that a program never runs with less isolation or fewer mounts than
# it asked for.
_UNSUPPORTED = frozenset("""
    blkio_weight blkio_weight_device cgroup_parent cgroupns cpu_count cpu_percent
    cpu_rt_period cpu_rt_runtime device_cgroup_rules device_read_bps device_read_iops
    device_requests device_write_bps device_write_iops domainname group_add healthcheck
    ipc_mode isolation kernel_memory links log_config lxc_conf mac_address mem_swappiness
    oom_kill_disable oom_score_adj pid_mode restart_policy stdin_open storage_opt tty
    userns_mode uts_mode volume_driver volumes_from
""".split())
# docker SDK options that keel.engine.specgen implements (security, resources, storage)
_RUN_OPTIONS = ("cap_add", "cap_drop", "privileged", "security_opt", "read_only", "mem_limit",
                "memswap_limit", "mem_reservation", "nano_cpus", "cpu_shares", "cpu_period",
                "cpu_quota", "cpuset_cpus", "cpuset_mems", "pids_limit", "ulimits", "sysctls",
                "volumes", "tmpfs", "mounts", "devices", "shm_size", "init", "init_path")
_IGNORED = frozenset(("detach", "use_config_proxy"))  # no meaning here: no daemon, no proxy config


def _command(value, what: str):
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as e:
            raise InvalidArgument(f"{what} {value!r}: {e}") from None
    if isinstance(value, (list, tuple)) and all(isinstance(a, str) for a in value):
        return list(value)
    raise InvalidArgument(f"{what}: a string or a list of strings, not {type(value).__name__}")


def _environment(value):
    if value is None:
        return []
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            if not isinstance(k, str) or not k or "=" in k:
                raise InvalidArgument(f"environment: invalid variable name {k!r}")
            out.append(f"{k}={'' if v is None else v}")
        return out
    if isinstance(value, (list, tuple)):
        for item in value:
            if not isinstance(item, str) or not item.partition("=")[0]:
                raise InvalidArgument(f"environment: invalid entry {item!r} (NAME=VALUE)")
        return [i for i in value if "=" in i]
    raise InvalidArgument("environment: a dict or a list of NAME=VALUE strings")


def _labels(value):
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return {str(k): "" for k in value}
    raise InvalidArgument("labels: a dict or a list of names")


def _network(kwargs):
    mode = kwargs.pop("network_mode", None)
    net = kwargs.pop("network", None)
    if kwargs.pop("network_disabled", False):
        if (mode or net or "none") != "none":
            raise InvalidArgument(f"network_disabled with network {mode or net!r}: give one")
        return "none"
    if mode is not None and net is not None and mode != net:
        raise InvalidArgument(f"network_mode {mode!r} and network {net!r}: give one")
    return mode if mode is not None else net


def _port_specs(value) -> list:
    """docker's ports {"80/tcp": 8080 | None | ("127.0.0.1", 8080) | [8080, 8081]} ->
    `-p` strings ("[IP:][HOSTPORT:]PORT[/PROTO]")."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise InvalidArgument("ports: a dict {container port: host port}")
    out = []
    for ctr, host in value.items():
        ctr = str(ctr)
        binds = host if isinstance(host, list) else [host]
        for b in binds:
            if b is None:
                out.append(ctr)
            elif isinstance(b, tuple) and 1 <= len(b) <= 2:
                ip, port = b[0], (b[1] if len(b) == 2 else None)
                out.append(f"{ip}:{'' if port is None else port}:{ctr}")
            elif isinstance(b, (int, str)) and not isinstance(b, bool):
                out.append(f"{b}:{ctr}")
            else:
                raise InvalidArgument(f"ports[{ctr!r}]: {b!r} is not a host port, (ip, port) or None")
    return out


def _extra_hosts(value) -> list:
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{h}:{ip}" for h, ip in value.items()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise InvalidArgument("extra_hosts: a dict {host: ip} or a list of HOST:IP")


def _str_or_none(v):
    return None if v is None else str(v)


def _volume_specs(value) -> list:
    """docker's volumes: {"/host" or "name": {"bind": "/ctr", "mode": "ro"}} or ["src:dst:opts"]."""
    if value is None:
        return []
    if isinstance(value, dict):
        out = []
        for src, spec in value.items():
            if isinstance(spec, str):
                spec = {"bind": spec}
            if not isinstance(spec, dict) or not spec.get("bind"):
                raise InvalidArgument(f"volumes[{src!r}]: a dict with 'bind' (and 'mode')")
            out.append(f"{src}:{spec['bind']}" + (f":{spec['mode']}" if spec.get("mode") else ""))
        return out
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidArgument("volumes: a dict or a list of SRC:DST[:OPTS] strings")


def _tmpfs_specs(value) -> list:
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{path}:{opts}" if opts else str(path) for path, opts in value.items()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    raise InvalidArgument("tmpfs: a dict {path: options} or a list of PATH[:OPTS]")


def _mount_specs(value) -> list:
    """docker.types.Mount (a dict: Target, Source, Type, ReadOnly, ...) -> --mount strings."""
    out = []
    for m in value or ():
        if isinstance(m, str):
            out.append(m)
            continue
        if not isinstance(m, dict) or not m.get("Target"):
            raise InvalidArgument(f"mounts: {m!r} is not a Mount")
        parts = [f"type={m.get('Type') or 'volume'}", f"target={m['Target']}"]
        if m.get("Source"):
            parts.append(f"source={m['Source']}")
        if m.get("ReadOnly"):
            parts.append("readonly")
        prop = (m.get("BindOptions") or {}).get("Propagation")
        if prop:
            parts.append(f"bind-propagation={prop}")
        tmpfs = m.get("TmpfsOptions") or {}
        if tmpfs.get("SizeBytes"):
            parts.append(f"tmpfs-size={tmpfs['SizeBytes']}")
        if tmpfs.get("Mode"):
            parts.append(f"tmpfs-mode={tmpfs['Mode']:o}")
        out.append(",".join(parts))
    return out


def _ulimit_specs(value) -> list:
    """docker.types.Ulimit (a dict: Name, Soft, Hard) or "name=soft:hard" strings."""
    out = []
    for u in value or ():
        if isinstance(u, str):
            out.append(u)
        elif isinstance(u, dict) and u.get("Name"):
            soft = u.get("Soft")
            hard = u.get("Hard", soft)
            out.append(f"{u['Name']}={soft}:{hard}")
        else:
            raise InvalidArgument(f"ulimits: {u!r} is not a Ulimit")
    return out


def _run_options(kw: dict, network) -> dict | None:
    """The security, resource and storage options, checked by keel.engine.specgen (None: none)."""
    given = {k: kw.pop(k) for k in _RUN_OPTIONS if k in kw}
    given = {k: v for k, v in given.items() if v not in (None, False, [], {}, (), "")}
    if not given:
        return None
    from keel.engine import specgen

    g = given.get
    nano = g("nano_cpus")
    sysctls = g("sysctls") or {}
    if not isinstance(sysctls, dict):
        raise InvalidArgument("sysctls: a dict {key: value}")
    with _translated():
        return specgen.parse(
            cap_add=list(g("cap_add") or ()), cap_drop=list(g("cap_drop") or ()),
            privileged=bool(g("privileged")), security_opt=list(g("security_opt") or ()),
            read_only=bool(g("read_only")), memory=_str_or_none(g("mem_limit")),
            memory_swap=_str_or_none(g("memswap_limit")),
            memory_reservation=_str_or_none(g("mem_reservation")),
            cpus=None if nano is None else str(int(nano) / 1e9),
            cpu_shares=_str_or_none(g("cpu_shares")), cpu_period=_str_or_none(g("cpu_period")),
            cpu_quota=_str_or_none(g("cpu_quota")), cpuset_cpus=_str_or_none(g("cpuset_cpus")),
            cpuset_mems=_str_or_none(g("cpuset_mems")), pids_limit=_str_or_none(g("pids_limit")),
            ulimits=_ulimit_specs(g("ulimits")), sysctls=[f"{k}={v}" for k, v in sysctls.items()],
            volumes=_volume_specs(g("volumes")), tmpfs=_tmpfs_specs(g("tmpfs")),
            mounts=_mount_specs(g("mounts")), init=bool(g("init")), init_path=g("init_path"),
            devices=[str(d) for d in g("devices") or ()], shm_size=_str_or_none(g("shm_size")),
            network=network or "none")


def _engine_options(kwargs: dict) -> dict:
    """docker SDK create() keyword arguments -> Engine.create() keyword arguments."""
    kw = dict(kwargs)
    for k in _IGNORED:
        kw.pop(k, None)
    opts = {"name": kw.pop("name", None),
            "entrypoint": _command(kw.pop("entrypoint", None), "entrypoint"),
            "env": _environment(kw.pop("environment", None)),
            "workdir": kw.pop("working_dir", None),
            "hostname": kw.pop("hostname", None),
            "runtime": kw.pop("runtime", None),
            "labels": _labels(kw.pop("labels", None)),
            "remove": bool(kw.pop("auto_remove", False)),
            "stop_signal": kw.pop("stop_signal", None),
            "stop_timeout": kw.pop("stop_timeout", None)}
    user = kw.pop("user", None)
    opts["user"] = None if user in (None, "") else str(user)
    net = _network(kw)
    if net is not None:
        opts["network"] = net
    opts["ports"] = _port_specs(kw.pop("ports", None))
    opts["publish_all"] = bool(kw.pop("publish_all_ports", False))
    opts["dns"] = [str(d) for d in kw.pop("dns", None) or ()]
    opts["dns_search"] = [str(d) for d in kw.pop("dns_search", None) or ()]
    opts["dns_options"] = [str(d) for d in kw.pop("dns_opt", None) or ()]
    opts["add_hosts"] = _extra_hosts(kw.pop("extra_hosts", None))
    opts["run_options"] = _run_options(kw, net)
    bad = sorted(k for k, v in kw.items() if k in _UNSUPPORTED and v not in (None, False, [], {}, (), ""))
    if bad:
        raise InvalidArgument(f"{', '.join(bad)}: not supported by keel's engine yet")
    unknown = sorted(k for k in kw if k not in _UNSUPPORTED)
    if unknown:
        raise TypeError(f"create() got an unexpected keyword argument {unknown[0]!r}")
    return opts


def _epoch(value, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise InvalidArgument(f"{what}: a datetime or a unix time, not {type(value).__name__}")


# -- images -----------------------------------------------------------------------------------

class _Model:
    """Equal when of the same kind with the same id (docker SDK's Model)."""

    def __eq__(self, other):
        return isinstance(other, type(self)) and other.id == self.id

    def __hash__(self):
        return hash(self.id)


class Image(_Model):
    """An image in keel's store (docker SDK's Image)."""

    def __init__(self, client: "Client", img):
        self.client = client
        self._img = img
        self.attrs = None

    def __repr__(self):
        return f"<Image: '{', '.join(self.tags)}'>"

    @property
    def id(self) -> str:
        return self._img.id

    @property
    def short_id(self) -> str:
        return self.id[:17]   # "sha256:" and 10 hex digits, as docker

    @property
    def tags(self) -> list[str]:
        return list(self._img.names)

    @property
    def labels(self) -> dict:
        return dict((self._img.config.get("config") or {}).get("Labels") or {})

    def _attrs(self):
        if self.attrs is None:
            from keel.cli.images import image_inspect

            self.attrs = image_inspect(self._img)
        return self.attrs

    def reload(self):
        self._img = self.client.images._get(self.id)
        self.attrs = None
        self._attrs()

    def tag(self, repository: str, tag: str | None = None, **_force) -> bool:
        name = repository if tag is None else f"{repository}:{tag}"
        with _translated():
            self.client._store().tag(self.id, name)
        self.reload()
        return True

    def history(self) -> list:
        return list(self._img.config.get("history") or [])


class ImageCollection:
    def __init__(self, client: "Client"):
        self.client = client

    def _get(self, name):
        with _translated():
            return self.client._store().get(name)

    def _find(self, name):
        """(store Image, the name that matched), short names looked up as podman does."""
        if not isinstance(name, str) or not name:
            raise ImageNotFound(f"{name!r}: image not found")
        from keel.image.pullpolicy import find_local

        with _translated():
            found = find_local(self.client._store(), name, self.client._conf)
        if found is None:
            raise ImageNotFound(f"{name}: image not found")
        return found

    def get(self, name: str) -> Image:
        """The image with this name or id; ImageNotFound."""
        img = Image(self.client, self._find(name)[0])
        img._attrs()
        return img

    def list(self, name: str | None = None, all: bool = False, filters: dict | None = None) -> list:
        from keel.image import reference

        filters = dict(filters or {})
        want_ref = [name] if name else []
        want_ref += _as_list(filters.pop("reference", None))
        dangling = filters.pop("dangling", None)
        want_labels = _as_list(filters.pop("label", None))
        if filters:
            raise APIError(f"invalid filter {next(iter(filters))!r} (known: reference, dangling, label)", 400)
        out = []
        with _translated():
            imgs = self.client._store().images()
        for img in imgs:
            if dangling is not None and _truthy(dangling) != (not img.names):
                continue
            if want_ref:
                names = set(img.names)
                for n in img.names:
                    r = reference.try_parse(n)
                    if r is not None:
                        fam = r.familiar()
                        names.update((r.name, fam, fam[:-len(r.tag) - 1] if r.tag else fam))
                if not any(w in names or _glob(w, names) for w in want_ref):
                    continue
            image = Image(self.client, img)
            if want_labels and not _all(_label_match(image.labels, w) for w in want_labels):
                continue
            out.append(image)
        return out

    def pull(self, repository: str, tag: str | None = None, all_tags: bool = False, *,
             platform: str | None = None, tls_verify: bool = True, auth_config: dict | None = None,
             **kwargs) -> Image:
        """Pull `repository[:tag]` with registries.conf (aliases, search registries, mirrors)."""
        if all_tags:
            raise InvalidArgument("all_tags: not supported by keel yet (pull one tag at a time)")
        if kwargs:
            raise TypeError(f"pull() got an unexpected keyword argument {next(iter(kwargs))!r}")
        name = repository
        if tag:
            name += ("@" if tag.startswith("sha256:") else ":") + tag
        creds = None
        if auth_config:
            try:
                creds = (auth_config["username"], auth_config["password"])
            except (KeyError, TypeError):
                raise InvalidArgument("auth_config: a dict with username and password") from None
        from keel.image.registry import pull_image

        with _translated():
            img = pull_image(self.client._store(), name, platform=platform or "linux/amd64",
                             tls_verify=tls_verify, credentials=creds, conf=self.client._conf())
        return Image(self.client, img)

    def load(self, data) -> list:
        """Images from an archive (docker-archive, oci-archive): bytes, a file object, or a path."""
        from keel.image import archive

        store = self.client._store()
        if isinstance(data, (str, os.PathLike)):
            with _translated():
                return [Image(self.client, i) for i in archive.load(store, os.fspath(data))]
        import tempfile

        with tempfile.NamedTemporaryFile(dir=store.scratch_dir(), prefix="load-") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            elif hasattr(data, "read"):
                while chunk := data.read(1 << 20):
                    f.write(chunk)
            else:
                for chunk in data:
                    f.write(chunk)
            f.flush()
            with _translated():
                return [Image(self.client, i) for i in archive.load(store, f.name)]

    def remove(self, image: str, force: bool = False, noprune: bool = False) -> list:
        """docker rmi: refused (409) while a container uses the image, unless force."""
        img, matched = self._find(image)
        users = [c for c in self.client._engine().containers() if "sha256:" + c["image_id"] == img.id]
        if users and not force:
            raise APIError(f"conflict: unable to remove {image}: image is being used by container "
                           f"{users[0]['id'][:12]} ({users[0]['name']})", 409)
        with _translated():
            res = self.client._store().remove(matched, force=force)
            if res["deleted"] and not noprune:
                self.client._store().gc()
        return [{"Untagged": n} for n in res["untagged"]] + [{"Deleted": d} for d in res["deleted"]]


def _as_list(v):
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _truthy(v):
    return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")


def _glob(pattern, names):
    import fnmatch

    return any(fnmatch.fnmatchcase(n, pattern) for n in names)


def _label_match(labels: dict, want: str) -> bool:
    k, sep, v = want.partition("=")
    return k in labels and (not sep or labels[k] == v)


# -- containers -------------------------------------------------------------------------------

_DOCKER_STATUS = {"configured": "created", "initialized": "created", "unknown": "running"}


class ExecResult(tuple):
    """(exit_code, output), as docker's exec_run returns it."""

    def __new__(cls, exit_code, output):
        return super().__new__(cls, (exit_code, output))

    exit_code = property(lambda self: self[0])
    output = property(lambda self: self[1])


class Container(_Model):
    """A container (docker SDK's Container); attrs in podman's inspect shape."""

    def __init__(self, client: "Client", rec: dict):
        self.client = client
        self._rec = rec
        self.attrs = self._inspect(rec)

    def __repr__(self):
        return f"<Container: {self.short_id}>"

    def _inspect(self, rec):
        from keel.cli.containers import inspect_entry

        return inspect_entry(self.client._engine(), rec)

    @property
    def id(self) -> str:
        return self._rec["id"]

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def name(self) -> str:
        return self._rec["name"]

    @property
    def status(self) -> str:
        s = self._rec["state"]
        return _DOCKER_STATUS.get(s, s)

    @property
    def labels(self) -> dict:
        return dict(self._rec["labels"] or {})

    @property
    def image(self) -> Image | None:
        try:
            return self.client.images.get("sha256:" + self._rec["image_id"])
        except ImageNotFound:
            return None

    def reload(self) -> None:
        with _translated():
            self._rec = self.client._engine().get(self.id)
        self.attrs = self._inspect(self._rec)

    def start(self) -> None:
        with _translated():
            self._rec = self.client._engine().start(self.id)

    def wait(self, timeout: float | None = None, condition: str | None = None) -> dict:
        """Block until the container exits: {"StatusCode": code, "Error": None}. TimeoutError
        after `timeout` seconds."""
        if condition not in (None, "not-running", "next-exit", "removed"):
            raise InvalidArgument(f"condition {condition!r}: not-running, next-exit or removed")
        eng = self.client._engine()
        with _translated():
            if timeout is not None:
                if eng._wait_exit(self.id, timeout) is None:
                    raise TimeoutError(f"container {self.name} still running after {timeout}s")
            code = eng.wait(self.id)
            if condition == "removed":
                while eng.db.get(self.id) is not None:
                    import time

                    time.sleep(0.05)
        with contextlib.suppress(NotFound):
            self.reload()
        return {"StatusCode": code, "Error": None}

    def logs(self, stdout: bool = True, stderr: bool = True, stream: bool = False,
             timestamps: bool = False, tail="all", since=None, follow: bool | None = None, until=None):
        """The container's output: bytes, or a generator of bytes when stream is true."""
        from keel.engine import logs

        with _translated():
            rec = self.client._engine().get(self.id)
        if tail != "all" and (not isinstance(tail, int) or isinstance(tail, bool) or tail < 0):
            raise InvalidArgument(f"tail {tail!r}: 'all' or a non-negative int")
        since_t, until_t = _epoch(since, "since"), _epoch(until, "until")
        follow = stream if follow is None else follow
        want = {s for s, on in (("stdout", stdout), ("stderr", stderr)) if on}

        def render(entries):
            for e in entries:
                if e.stream not in want:
                    continue
                if (since_t is not None and e.time < since_t) or (until_t is not None and e.time >= until_t):
                    continue
                msg = e.message if e.partial else e.message + b"\n"
                yield (e.timestamp.encode() + b" " + msg) if timestamps else msg

        entries, offset = logs.read_entries(rec["log_path"])
        if tail != "all":
            entries = logs.tail([e for e in entries if e.stream in want], tail)
        if not stream:
            out = b"".join(render(entries))
            if follow:
                out += b"".join(render(logs.follow(rec["log_path"], self._exited, offset)))
            return out

        def gen():
            yield from render(entries)
            if follow:
                yield from render(logs.follow(rec["log_path"], self._exited, offset))
        return gen()

    def _exited(self) -> bool:
        try:
            return self.client._engine().get(self.id)["state"] not in ("initialized", "running")
        except KeelError:
            return True

    def stop(self, timeout: int | None = None) -> None:
        with _translated():
            self.client._engine().stop(self.id, timeout)
        with contextlib.suppress(NotFound):
            self.reload()

    def kill(self, signal=None) -> None:
        with _translated():
            self.client._engine().kill(self.id, "KILL" if signal is None else signal)
        with contextlib.suppress(NotFound):
            self.reload()

    def restart(self, timeout: int | None = None) -> None:
        with _translated():
            self.client._engine().stop(self.id, timeout)
            self._rec = self.client._engine().start(self.id)
        self.reload()

    def exec_run(self, cmd, stdout: bool = True, stderr: bool = True, stdin: bool = False,
                 tty: bool = False, privileged: bool = False, user: str = "", detach: bool = False,
                 stream: bool = False, socket: bool = False, environment=None, workdir=None,
                 demux: bool = False):
        """Run `cmd` in the running container (under its own conmon, as `keel exec`):
        ExecResult(exit_code, output); output is bytes, (stdout, stderr) with demux, a
        generator with stream, and exit_code None with detach or stream."""
        from keel.engine import exec as exec_
        from keel.engine.errors import MonitorFailed, RuntimeFailed

        if stdin or socket:
            raise InvalidArgument("exec_run: stdin/socket: not supported by keel yet")
        argv = _command(cmd, "cmd")
        if not argv:
            raise InvalidArgument("exec_run: an empty command")
        with _translated():
            try:
                sess = exec_.start(self.client._engine(), self.id, argv, tty=tty, detach=detach,
                                   env=_environment(environment), user=str(user) if user else None,
                                   workdir=workdir, privileged=privileged)
            except (MonitorFailed, RuntimeFailed) as e:
                # docker: a command that cannot be run is exit code 126/127, the reason the output
                msg = str(e)
                code = 127 if ("not found" in msg.lower() or "no such file" in msg.lower()) else 126
                out = msg.encode() + b"\n"
                return ExecResult(code, (None, out) if demux else out)
        if detach:
            sess.close()
            return ExecResult(None, (None, None) if demux else b"")
        want = {2} if tty else {k for k, on in ((2, stdout), (3, stderr)) if on}

        def records():
            while True:
                rec = sess.sock.recv(8193)   # one record: a stream byte and up to 8192 bytes
                if not rec:
                    return
                if rec[0] in want:
                    yield rec[0], rec[1:]

        if stream:
            def chunks():
                try:
                    for k, d in records():
                        yield ((d, None) if k == 2 else (None, d)) if demux else d
                finally:
                    with contextlib.suppress(KeelError):
                        sess.wait()   # reaps the session (its directory goes)
            return ExecResult(None, chunks())
        got = list(records())
        with _translated():
            code = sess.wait()
        if demux:
            out = b"".join(d for k, d in got if k == 2)
            err = b"".join(d for k, d in got if k == 3)
            return ExecResult(code, (out or None, err or None))
        return ExecResult(code, b"".join(d for _, d in got))

    def remove(self, v: bool = False, link: bool = False, force: bool = False) -> None:
        if link:
            raise InvalidArgument("link: keel has no legacy links")
        with _translated():
            self.client._engine().remove(self.id, force=force)


class ContainerCollection:
    def __init__(self, client: "Client"):
        self.client = client

    def create(self, image, command=None, **kwargs) -> Container:
        """A created (not started) container; pulls the image when it is missing, as docker's
        run does (platform= picks the platform to pull)."""
        platform = kwargs.pop("platform", None)
        opts = _engine_options(kwargs)
        cmd = _command(command, "command")
        name = self._image(image, platform)
        if opts.pop("publish_all"):   # docker's -P: every port the image exposes, a free host port
            exposed = (self.client._store().get(name).config.get("config") or {}).get("ExposedPorts") or {}
            given = {p.rsplit(":", 1)[-1] for p in opts["ports"]}
            opts["ports"] += [p for p in exposed if p not in given and p.split("/")[0] not in given]
        with _translated():
            rec = self.client._engine().create(name, cmd, **opts)
        return Container(self.client, rec)

    def _image(self, image, platform):
        if isinstance(image, Image):
            return image.id
        if not isinstance(image, str) or not image:
            raise InvalidArgument(f"image: a name or an Image, not {image!r}")
        from keel.image.pullpolicy import ensure

        with _translated():
            _, name = ensure(self.client._store(), image, "missing",
                             registries_conf=self.client.registries_conf,
                             platform=platform or "linux/amd64")
        return name

    def run(self, image, command=None, stdout: bool = True, stderr: bool = False,
            remove: bool = False, **kwargs):
        """docker's containers.run: a detached Container, or the output (bytes) of a foreground
        run; ContainerError when it exits non-zero (the container is removed first when
        remove is true)."""
        detach = kwargs.pop("detach", False)
        stream = kwargs.pop("stream", False)
        if detach and remove:
            kwargs["auto_remove"] = True   # docker: a detached run removes itself on exit
            remove = False
        if stream and detach:
            raise InvalidArgument("stream: only for foreground runs")
        auto = bool(kwargs.pop("auto_remove", False))
        if detach:
            kwargs["auto_remove"] = auto
        container = self.create(image, command, **kwargs)
        removing = (remove or auto) and not detach
        try:
            with _translated():   # a removing foreground run removes the container itself
                container._rec = self.client._engine().start(container.id, attached_rm=removing and not stream)
        except BaseException:
            with contextlib.suppress(KeelError):
                container.remove(force=True)
            raise
        if detach:
            return container
        try:
            if stream:
                return self._stream(container, stdout, stderr, remove or auto)
            if removing:   # the exit code is enough: the removal below deletes the rest
                with _translated():
                    code = self.client._engine()._wait_exit(container.id, None)["exit_code"]
            else:
                code = container.wait()["StatusCode"]
            out = container.logs(stdout=stdout, stderr=stderr)
            err = container.logs(stdout=False, stderr=True) if code != 0 else None
        except BaseException:
            if remove or auto:
                with contextlib.suppress(KeelError):
                    container.remove(force=True)
            raise
        if remove or auto:
            container.remove(force=True)
        if code != 0:
            raise ContainerError(container, code, command, image, err)
        return out

    def _stream(self, container, stdout, stderr, remove):
        """The generator of a stream=True foreground run (removes the container when done)."""
        def gen():
            try:
                yield from container.logs(stdout=stdout, stderr=stderr, stream=True, follow=True)
                code = container.wait()["StatusCode"]
                if code != 0:
                    err = container.logs(stdout=False, stderr=True)
                    raise ContainerError(container, code, None, None, err)
            finally:
                if remove:
                    with contextlib.suppress(KeelError):
                        container.remove(force=True)
        return gen()

    def get(self, container_id: str) -> Container:
        if not isinstance(container_id, str) or not container_id:
            raise NotFound(f"no such container: {container_id!r}")
        with _translated():
            rec = self.client._engine().get(container_id)
        return Container(self.client, rec)

    def list(self, all: bool = False, before=None, filters: dict | None = None, limit: int = -1,
             since=None, sparse: bool = False, ignore_removed: bool = False) -> list:
        """Running containers (all=True: every one), newest first; filters: id, name, label,
        status, ancestor."""
        if before is not None or since is not None:
            raise InvalidArgument("before/since: not supported by keel yet")
        filters = dict(filters or {})
        want = {k: _as_list(filters.pop(k, None)) for k in ("id", "name", "label", "status", "ancestor")}
        if filters:
            raise APIError(f"invalid filter {next(iter(filters))!r} (known: {', '.join(want)})", 400)
        with _translated():
            recs = self.client._engine().containers(all=all or bool(want["status"]))
        recs.sort(key=lambda c: c["created"], reverse=True)
        out = []
        for c in recs:
            if want["id"] and not any(c["id"].startswith(i) for i in want["id"]):
                continue
            if want["name"] and not any(n in c["name"] for n in want["name"]):
                continue
            if want["label"] and not _all(_label_match(c["labels"] or {}, w) for w in want["label"]):
                continue
            if want["status"] and _DOCKER_STATUS.get(c["state"], c["state"]) not in want["status"]:
                continue
            if want["ancestor"] and not any(a in (c["image_name"], c["image_id"], "sha256:" + c["image_id"])
                                            for a in want["ancestor"]):
                continue
            out.append(Container(self.client, c))
            if 0 <= limit <= len(out):
                break
        return out

    def prune(self, filters: dict | None = None) -> dict:
        """Remove every exited or created container."""
        if filters:
            raise InvalidArgument("filters: not supported by prune yet")
        eng = self.client._engine()
        gone = []
        with _translated():
            for c in eng.containers():
                if c["state"] in ("exited", "created", "configured"):
                    with contextlib.suppress(NotFound):
                        with _translated():
                            eng.remove(c["id"])
                        gone.append(c["id"])
        return {"ContainersDeleted": gone, "SpaceReclaimed": 0}


# -- the client -------------------------------------------------------------------------------

class _CloseWithThread:
    """Closes a thread's engine when the thread ends: thread-local values are dropped in the
    ending thread itself, the only one allowed to close its SQLite connections (merely
    freeing them elsewhere leaves their files open)."""

    def __init__(self, eng):
        self.eng = eng

    def __del__(self):
        if self.eng is not None:
            with contextlib.suppress(Exception):
                self.eng.close()


class Client:
    """keel without a daemon: `root` holds images, snapshots and the database (default
    /var/lib/keel, env KEEL_ROOT), `runroot` the run state (default /run/keel, env
    KEEL_RUNROOT); registries_conf: a registries.conf to use instead of the system's;
    network_config_dir: the CNI network configs (`keel network create` writes them there)."""

    def __init__(self, root: str | None = None, runroot: str | None = None, *,
                 registries_conf: str | None = None, network_config_dir: str | None = None):
        self.root = os.path.abspath(root or os.environ.get("KEEL_ROOT") or DEFAULT_ROOT)
        self.runroot = os.path.abspath(runroot or os.environ.get("KEEL_RUNROOT") or DEFAULT_RUNROOT)
        self.registries_conf = registries_conf or os.environ.get("KEEL_REGISTRIES_CONF")
        self.network_config_dir = network_config_dir   # default: env KEEL_NETWORK_CONFIG_DIR, /etc/keel/cni/net.d
        self._local = threading.local()
        self._conf_cache = None
        self.images = ImageCollection(self)
        self.containers = ContainerCollection(self)

    def _engine(self):
        eng = getattr(self._local, "engine", None)
        if eng is None:
            from keel.engine import Engine

            with _translated():
                eng = Engine(self.root, self.runroot, network_config_dir=self.network_config_dir)
            self._local.engine = eng
            self._local.closer = _CloseWithThread(eng)
        return eng

    def _store(self):
        return self._engine().store

    def _conf(self):
        if self._conf_cache is None:
            from keel.image import registries

            with _translated():
                self._conf_cache = (registries.load([self.registries_conf]) if self.registries_conf
                                    else registries.load())
        return self._conf_cache

    def ping(self) -> bool:
        self._engine()
        return True

    def version(self) -> dict:
        from keel import __version__

        return {"Version": __version__, "ApiVersion": "keel", "Os": "linux"}

    def close(self) -> None:
        """Close this thread's engine; other threads' engines are closed as they end (or
        when the client is garbage collected)."""
        eng = getattr(self._local, "engine", None)
        if eng is not None:
            self._local.closer.eng = None
            self._local = threading.local()
            eng.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def from_env(**kwargs) -> Client:
    """A Client on KEEL_ROOT / KEEL_RUNROOT (docker.from_env's spelling)."""
    return Client(**kwargs)
