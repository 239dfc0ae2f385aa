"""A CNI runtime: runs the real CNI plugin binaries as the CNI spec (1.0) says, as libcni does.

A plugin is an executable named by the `type` of its config, looked up in the plugin dirs
(CNI_PATH). It gets CNI_COMMAND (ADD, DEL, CHECK, VERSION), CNI_CONTAINERID, CNI_NETNS (a path),
CNI_IFNAME and CNI_PATH in its environment and its config as JSON on stdin, and prints a result
(ADD) or an error object `{"code", "msg", "details"}` on stdout with a non-zero exit.

A network config list (`.conflist`) chains plugins: ADD runs them in order, each one getting the
previous result as `prevResult`; DEL runs them in reverse, each getting the cached ADD result;
CHECK runs them in order with it. Runtime arguments (`runtimeConfig`, e.g. portMappings) reach
only the plugins that declare that capability in their `capabilities` map.
"""

import json
import os
import subprocess

from keel.engine.errors import EngineError

DEFAULT_PLUGIN_DIRS = ("/usr/lib/cni", "/usr/libexec/cni", "/opt/cni/bin")
PLUGIN_TIMEOUT = 60.0
# The plugins run iptables and friends by name: make sure the sbin dirs are searched even when
# keel runs with a user's PATH (conmon's exit command inherits whatever keel had).
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin")


class CNIError(EngineError):
    """A CNI plugin failed (its error message), or could not be run."""


def plugin_dirs() -> list[str]:
    env = os.environ.get("KEEL_CNI_PLUGIN_DIRS")
    return [d for d in env.split(":") if d] if env else list(DEFAULT_PLUGIN_DIRS)


def find_plugin(kind: str, dirs: list[str]) -> str:
    if not kind or "/" in kind or kind in (".", ".."):
        raise CNIError(f"cni plugin type {kind!r}: not a plugin name")
    for d in dirs:
        path = os.path.join(d, kind)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise CNIError(f"cni plugin {kind!r} not found in {':'.join(dirs)}: "
                   "install containernetworking-plugins (or set KEEL_CNI_PLUGIN_DIRS)")


def _environ(command, container_id, netns, ifname, dirs, args):
    env = dict(os.environ)
    path = [p for p in env.get("PATH", "").split(":") if p]
    env["PATH"] = ":".join(path + [p for p in _SBIN if p not in path])
    env.update(CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_NETNS=netns or "",
               CNI_IFNAME=ifname, CNI_PATH=":".join(dirs))
    if args:
        env["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in args.items())
    return env


def exec_plugin(conf: dict, command: str, container_id: str, netns: str, ifname: str,
                dirs: list[str] | None = None, args: dict | None = None) -> dict | None:
    """Run one plugin; its parsed result (ADD, VERSION) or None (DEL, CHECK)."""
    dirs = dirs or plugin_dirs()
    kind = conf.get("type", "")
    path = find_plugin(kind, dirs)
    try:
        p = subprocess.run([path], input=json.dumps(conf).encode(), capture_output=True,
                           env=_environ(command, container_id, netns, ifname, dirs, args),
                           timeout=PLUGIN_TIMEOUT, close_fds=True, cwd="/")
    except subprocess.TimeoutExpired:
        raise CNIError(f"cni plugin {kind} {command}: no answer in {PLUGIN_TIMEOUT:.0f}s") from None
    except OSError as e:
        raise CNIError(f"cni plugin {path}: {(e.strerror or str(e)).lower()}") from None
    out = p.stdout.strip()
    if p.returncode != 0:
        raise CNIError(f"cni plugin {kind} {command} ({conf.get('name', '?')}): {_error_text(out, p.stderr)}")
    if not out:
        return None
    try:
        return json.loads(out)
    except ValueError:
        raise CNIError(f"cni plugin {kind} {command}: output is not JSON: {out[:200]!r}") from None


def _error_text(out: bytes, err: bytes) -> str:
    try:
        e = json.loads(out)
        msg = e.get("msg") or f"error code {e.get('code')}"
        if e.get("details"):
            msg += f": {e['details']}"
        return " ".join(str(msg).split())
    except (ValueError, AttributeError):
        text = (out or err or b"failed").decode(errors="replace").strip().splitlines()
        return text[-1] if text else "failed"


def plugin_config(netconf: dict, plugin: dict, prev_result: dict | None,
                  runtime_config: dict | None) -> dict:
    """The config one plugin of a list gets: its own, plus the list's name and version, the
    previous result, and the runtime arguments of the capabilities it declares."""
    conf = dict(plugin)
    conf["name"] = netconf["name"]
    conf["cniVersion"] = netconf.get("cniVersion", "1.0.0")
    if prev_result is not None:
        conf["prevResult"] = prev_result
    caps = plugin.get("capabilities") or {}
    rc = {k: v for k, v in (runtime_config or {}).items() if caps.get(k)}
    if rc:
        conf["runtimeConfig"] = rc
    else:
        conf.pop("runtimeConfig", None)
    return conf


def add_network_list(netconf: dict, container_id: str, netns: str, ifname: str,
                     runtime_config: dict | None = None, dirs: list[str] | None = None,
                     progress=None) -> dict:
    """ADD through every plugin of the list; the last result. On failure nothing is undone
    here: the caller runs DEL (the spec's answer to a failed ADD). `progress(result)` is called
    after each plugin, so a caller killed half-way has kept what DEL needs (the addresses)."""
    result = None
    for plugin in netconf["plugins"]:
        conf = plugin_config(netconf, plugin, result, runtime_config)
        result = exec_plugin(conf, "ADD", container_id, netns, ifname, dirs) or result
        if progress is not None and result is not None:
            progress(result)
    return result or {}


def del_network_list(netconf: dict, container_id: str, netns: str, ifname: str,
                     runtime_config: dict | None = None, prev_result: dict | None = None,
                     dirs: list[str] | None = None) -> list[str]:
    """DEL through every plugin of the list in reverse; every plugin is tried, the errors are
    returned (a DEL must get as far as it can)."""
    errors = []
    for plugin in reversed(netconf["plugins"]):
        conf = plugin_config(netconf, plugin, prev_result, runtime_config)
        try:
            exec_plugin(conf, "DEL", container_id, netns, ifname, dirs)
        except CNIError as e:
            errors.append(str(e))
    return errors


def check_network_list(netconf: dict, container_id: str, netns: str, ifname: str,
                       prev_result: dict, runtime_config: dict | None = None,
                       dirs: list[str] | None = None) -> None:
    """CHECK through every plugin of the list; raises CNIError for the first that fails."""
    for plugin in netconf["plugins"]:
        conf = plugin_config(netconf, plugin, prev_result, runtime_config)
        exec_plugin(conf, "CHECK", container_id, netns, ifname, dirs)
