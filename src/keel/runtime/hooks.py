"""OCI hooks: run each with the container state on stdin, honouring its timeout."""

from keel.oci import fastjson
from keel.runtime import log
from keel.runtime.errors import RuntimeError_


class HookError(RuntimeError_):
    pass


def run(hooks, kind, state):
    """Run every hook of `kind` in order; the first failure raises HookError."""
    entries = (hooks or {}).get(kind) or ()
    if not entries:
        return
    import subprocess

    data = fastjson.dumps(state).encode()
    for i, h in enumerate(entries):
        args = h.get("args") or [h["path"]]
        log.debug(f"running {kind} hook {i}: {args}")
        try:
            p = subprocess.run(args, executable=h["path"], input=data, env=_env(h.get("env")),
                               capture_output=True, timeout=h.get("timeout"), close_fds=True)
        except subprocess.TimeoutExpired:
            raise HookError(f"{kind} hook #{i} ({h['path']}) timed out after {h['timeout']}s") from None
        except OSError as e:
            raise HookError(f"{kind} hook #{i} ({h['path']}): {e.strerror.lower()}") from None
        if p.returncode != 0:
            detail = (p.stderr or p.stdout).decode(errors="replace").strip().splitlines()
            why = f": {detail[-1]}" if detail else ""
            code = p.returncode if p.returncode >= 0 else f"signal {-p.returncode}"
            raise HookError(f"{kind} hook #{i} ({h['path']}) failed with exit status {code}{why}")


def run_warn(hooks, kind, state):
    """Hooks whose failure the spec says to log and go on from (poststart, poststop)."""
    entries = (hooks or {}).get(kind) or ()
    for i in range(len(entries)):
        try:
            run({kind: [entries[i]]}, kind, state)
        except HookError as e:
            log.warn(str(e).replace(f"#{0}", f"#{i}", 1))


def _env(env):
    out = {}
    for e in env or ():
        k, _, v = e.partition("=")
        out[k] = v
    return out
