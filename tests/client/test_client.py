"""keel.Client, the docker-SDK-shaped Python API, on real containers (keel-runtime and runc)."""

import io
import os
import subprocess
import sys
import threading
import time

import pytest

import keel
from engine_helpers import RUNTIMES
from registry_fixtures import skopeo_push

IMAGE = "localhost/busybox:latest"


def keel_cli(roots, *args):
    return subprocess.run([sys.executable, "-m", "keel.cli.main", "--root", roots[0], "--runroot", roots[1],
                           *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_import_keel_stays_cheap():
    code = "import sys, keel; keel.__version__; print(sorted(m for m in sys.modules if m.startswith('keel')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['keel']"
    code = "import sys, keel; keel.Client; print('keel.engine' in sys.modules, 'sqlite3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]   # the engine loads on first use, not on import
    assert set(keel.__all__) >= {"Client", "ContainerError", "ImageNotFound", "NotFound", "APIError"}
    assert issubclass(keel.ImageNotFound, keel.NotFound) and issubclass(keel.NotFound, keel.APIError)
    assert issubclass(keel.APIError, keel.KeelError) and issubclass(keel.ContainerError, keel.KeelError)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_run_returns_output_and_removes(client, runtime):
    out = client.containers.run("busybox", ["sh", "-c", "echo hi; echo err >&2"], remove=True, runtime=runtime)
    assert out == b"hi\n"
    assert client.containers.list(all=True) == []
    out = client.containers.run(IMAGE, "sh -c 'echo a; echo b >&2'", stdout=True, stderr=True, remove=True,
                                runtime=runtime)
    assert sorted(out.split()) == [b"a", b"b"]
    assert client.containers.run(IMAGE, "echo x", stdout=False, stderr=True, remove=True, runtime=runtime) == b""


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_non_zero_exit_raises_container_error(client, runtime):
    with pytest.raises(keel.ContainerError) as ei:
        client.containers.run(IMAGE, ["sh", "-c", "echo out; echo boom >&2; exit 7"], remove=True,
                              runtime=runtime)
    e = ei.value
    assert e.exit_status == 7 and e.stderr == b"boom\n" and e.image == IMAGE
    assert e.command == ["sh", "-c", "echo out; echo boom >&2; exit 7"]
    assert "returned non-zero exit status 7: boom" in str(e)
    assert client.containers.list(all=True) == []   # remove=True removes a failed one too
    # without remove the container stays, exited, for inspection
    with pytest.raises(keel.ContainerError) as ei:
        client.containers.run(IMAGE, "false", name="failing", runtime=runtime)
    c = client.containers.get("failing")
    assert ei.value.container == c and c.status == "exited" and c.attrs["State"]["ExitCode"] == 1


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_missing_executable_is_an_error_and_leaves_nothing(client, runtime):
    with pytest.raises(keel.APIError):
        client.containers.run(IMAGE, ["/no/such/binary"], remove=True, runtime=runtime)
    assert client.containers.list(all=True) == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_detached_container_lifecycle(client, roots, runtime):
    c = client.containers.run(IMAGE, ["sh", "-c", "echo started; trap 'echo bye; exit 0' TERM; "
                                      "while :; do sleep 0.1; done"],
                              detach=True, name="web", labels={"app": "demo"}, runtime=runtime,
                              environment={"GREETING": "hello"}, working_dir="/tmp", user="1:1",
                              hostname="box")
    assert isinstance(c, keel.client.Container)
    assert len(c.id) == 64 and c.short_id == c.id[:12] and c.name == "web" and c.status == "running"
    assert c.labels == {"app": "demo"} and c.attrs["Config"]["Labels"] == {"app": "demo"}
    assert c.attrs["Config"]["WorkingDir"] == "/tmp" and "GREETING=hello" in c.attrs["Config"]["Env"]
    assert c.image.id.startswith("sha256:") and IMAGE in c.image.tags
    # the keel command sees the same container
    assert "web" in keel_cli(roots, "ps").stdout
    deadline = time.monotonic() + 10
    while b"started" not in c.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c.logs() == b"started\n"
    assert [x.id for x in client.containers.list()] == [c.id]
    assert [x.name for x in client.containers.list(filters={"label": "app=demo"})] == ["web"]
    assert client.containers.list(filters={"label": "app=other"}) == []
    assert client.containers.list(filters={"status": "exited"}) == []
    with pytest.raises(keel.APIError) as ei:
        client.containers.run(IMAGE, "true", name="web", runtime=runtime)
    assert ei.value.status_code == 409 and "already in use" in str(ei.value)
    with pytest.raises(keel.APIError) as ei:
        c.remove()
    assert ei.value.status_code == 409
    c.stop(timeout=5)
    assert c.status == "exited"
    assert c.wait() == {"StatusCode": 0, "Error": None}
    assert c.logs() == b"started\nbye\n"
    assert c.logs(tail=1) == b"bye\n"
    stamped = c.logs(timestamps=True).splitlines()
    assert [ln.split(b" ", 1)[1] for ln in stamped] == [b"started", b"bye"] and stamped[0][:2] == b"20"
    assert [x.id for x in client.containers.list(filters={"status": "exited"})] == [c.id]
    c.remove()
    with pytest.raises(keel.NotFound):
        c.reload()
    with pytest.raises(keel.NotFound):
        client.containers.get("web")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_kill_wait_and_exit_code(client, runtime):
    c = client.containers.run(IMAGE, ["sh", "-c", "trap 'exit 5' USR1; while :; do sleep 0.1; done"],
                              detach=True, runtime=runtime)
    with pytest.raises(TimeoutError):
        c.wait(timeout=0.3)
    c.kill(signal="USR1")
    assert c.wait(timeout=20)["StatusCode"] == 5
    c.reload()
    assert c.status == "exited" and c.attrs["State"]["ExitCode"] == 5
    c.start()
    assert c.status == "running"
    c.kill()
    assert c.wait()["StatusCode"] == 137
    c.remove()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_detach_with_remove_removes_itself(client, runtime):
    c = client.containers.run(IMAGE, ["sh", "-c", "exit 3"], detach=True, remove=True, runtime=runtime)
    assert c.wait(condition="removed")["StatusCode"] == 3
    with pytest.raises(keel.NotFound):
        client.containers.get(c.id)


def test_create_then_start_and_stream_logs(client):
    c = client.containers.create(IMAGE, ["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.1; done"])
    assert c.status == "created"
    c.start()
    assert list(c.logs(stream=True)) == [b"1\n", b"2\n", b"3\n"]
    c.remove()
    gen = client.containers.run(IMAGE, ["sh", "-c", "echo a; sleep 0.2; echo b"], stream=True, remove=True)
    assert b"".join(gen) == b"a\nb\n"
    assert client.containers.list(all=True) == []


def test_network_modes(client):
    out = client.containers.run(IMAGE, "ls /sys/class/net", network_mode="none", remove=True)
    assert out.split() == [b"lo"]
    host_links = sorted(os.listdir("/sys/class/net"))
    out = client.containers.run(IMAGE, "ls /sys/class/net", network_mode="host", remove=True)
    assert set(out.split()) >= {n.encode() for n in host_links if n in ("lo",)}
    with pytest.raises(keel.InvalidArgument, match="network_mode 'none' and network 'host'"):
        client.containers.run(IMAGE, "true", network_mode="none", network="host")


def test_unsupported_options_are_refused_by_name(client):
    with pytest.raises(keel.InvalidArgument, match="mac_address: not supported"):
        client.containers.run(IMAGE, "true", mac_address="02:42:ac:11:00:02")
    with pytest.raises(keel.InvalidArgument, match="ports"):
        client.containers.run(IMAGE, "true", ports={"80/tcp": object()})
    with pytest.raises(keel.InvalidArgument, match="stdin_open, tty: not supported"):
        client.containers.create(IMAGE, "true", tty=True, stdin_open=True)
    with pytest.raises(keel.InvalidArgument, match="restart_policy"):
        client.containers.run(IMAGE, "true", restart_policy={"Name": "always"})
    with pytest.raises(TypeError, match="no_such_option"):
        client.containers.run(IMAGE, "true", no_such_option=1)
    # empty values of such options ask for nothing and are accepted, as docker accepts them
    assert client.containers.run(IMAGE, "echo ok", ports={}, volumes=None, cap_add=[], remove=True) == b"ok\n"
    with pytest.raises(keel.InvalidArgument, match="environment"):
        client.containers.run(IMAGE, "true", environment="A=1")
    with pytest.raises(keel.InvalidArgument, match="command"):
        client.containers.run(IMAGE, 42)
    with pytest.raises(keel.APIError, match="invalid container name"):
        client.containers.run(IMAGE, "true", name="-bad")
    with pytest.raises(keel.APIError, match="no user"):
        client.containers.run(IMAGE, "true", user="nobody-here")
    with pytest.raises(keel.APIError, match="no such OCI runtime"):
        client.containers.run(IMAGE, "true", runtime="no-such-runtime")
    with pytest.raises(keel.APIError, match="--memory") as ei:
        client.containers.run(IMAGE, "true", mem_limit="lots")
    assert ei.value.status_code == 400
    with pytest.raises(keel.APIError, match="--cap-add"):
        client.containers.run(IMAGE, "true", cap_add=["NOT_A_CAP"])
    with pytest.raises(keel.InvalidArgument, match="volumes"):
        client.containers.run(IMAGE, "true", volumes={"/tmp": {"mode": "ro"}})
    assert client.containers.list(all=True) == []
    assert client._engine().snapshotter.snapshots() == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_security_resource_and_storage_options(client, runtime, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("from the host\n")
    run = lambda cmd, **kw: client.containers.run(IMAGE, ["sh", "-c", cmd], remove=True, runtime=runtime, **kw)
    assert run("grep CapEff /proc/self/status", cap_drop=["ALL"]).split()[1] == b"0000000000000000"
    assert run("ulimit -n", ulimits=[{"Name": "nofile", "Soft": 1024, "Hard": 2048}]) == b"1024\n"
    assert run("cat /data/f", volumes={str(data): {"bind": "/data", "mode": "ro"}}) == b"from the host\n"
    with pytest.raises(keel.ContainerError) as ei:
        run("echo x > /data/g", volumes=[f"{data}:/data:ro"])
    assert b"Read-only file system" in ei.value.stderr and not (data / "g").exists()
    with pytest.raises(keel.ContainerError):
        run("touch /x", read_only=True)
    out = run("grep ' /scratch ' /proc/mounts", tmpfs={"/scratch": "size=1m"})
    assert out.startswith(b"tmpfs /scratch tmpfs") and b"size=1024k" in out
    c = client.containers.create(IMAGE, "true", runtime=runtime, mem_limit="64m", pids_limit=50,
                                 nano_cpus=500_000_000)
    res = c._rec["config"]["linux"]["resources"]
    assert res["memory"]["limit"] == 64 << 20 and res["pids"]["limit"] == 50
    assert res["cpu"]["quota"] == 50000 and res["cpu"]["period"] == 100000
    c.remove()


def test_not_found_errors(client):
    with pytest.raises(keel.NotFound):
        client.containers.get("nope")
    with pytest.raises(keel.ImageNotFound):
        client.images.get("localhost/nope:1")
    with pytest.raises(keel.ImageNotFound):
        client.images.remove("localhost/nope:1")
    # a missing image is pulled; a registry that does not exist is a clear error, no container
    with pytest.raises(keel.APIError):
        client.containers.run("127.0.0.1:1/nope:1", "true")
    assert client.containers.list(all=True) == []


def test_images_pull_list_get_remove_load(client, registry, oci_busybox, tmp_path):
    ref = skopeo_push(oci_busybox, f"{registry.host}/client/busybox:1")
    img = client.images.pull(f"{registry.host}/client/busybox", tag="1", tls_verify=False)
    assert isinstance(img, keel.client.Image) and ref in img.tags and img.short_id == img.id[:17]
    assert client.images.get(ref) == img
    assert {i.id for i in client.images.list()} == {img.id}   # same image as localhost/busybox
    assert [i.id for i in client.images.list(name=f"{registry.host}/client/busybox")] == [img.id]
    assert client.images.list(name="localhost/other") == []
    with pytest.raises(keel.APIError, match="invalid filter"):
        client.images.list(filters={"bogus": 1})
    with pytest.raises(keel.ImageNotFound):
        client.images.pull(f"{registry.host}/client/absent", tag="1", tls_verify=False)
    with pytest.raises(keel.APIError):
        client.images.pull(f"{registry.host}/client/busybox", tag="1")   # https to a plain-http registry
    # in use by a container: refused unless forced
    c = client.containers.create(ref, "true")
    with pytest.raises(keel.APIError) as ei:
        client.images.remove(img.id)
    assert ei.value.status_code == 409 and c.short_id in str(ei.value)
    c.remove()
    assert {"Untagged": ref} in client.images.remove(ref)
    client.images.remove(IMAGE)
    assert client.images.list() == []
    # load from bytes and from a file object (an oci-archive written by `keel save`)
    archive = tmp_path / "img.tar"
    other = keel.Client(root=str(tmp_path / "other"), runroot=str(tmp_path / "other-run"))
    try:
        other.images.load(oci_busybox)
        imgs = other.images.list()
        r = keel_cli((other.root, other.runroot), "save", "--format", "oci-archive", "-o", str(archive),
                     imgs[0].id)
        assert r.returncode == 0, r.stderr
    finally:
        other.close()
    loaded = client.images.load(archive.read_bytes())
    assert [i.id for i in loaded] == [img.id]
    client.images.remove(img.id, force=True)
    with open(archive, "rb") as f:
        assert [i.id for i in client.images.load(io.BufferedReader(f))] == [img.id]
    assert client.containers.run(img.id, "echo loaded", remove=True) == b"loaded\n"


def test_run_pulls_a_missing_image(client, registry, oci_busybox):
    ref = skopeo_push(oci_busybox, f"{registry.host}/client/pulled:1")
    conf = os.path.join(os.path.dirname(client.root), "registries.conf")
    with open(conf, "w") as f:
        f.write(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    client._conf_cache = None
    with pytest.raises(keel.ImageNotFound):
        client.images.get(ref)
    assert client.containers.run(ref, "echo pulled", remove=True) == b"pulled\n"
    assert ref in client.images.get(ref).tags


def test_client_is_usable_from_threads(client):
    outs, errors = [], []

    def one(i):
        try:
            outs.append(client.containers.run(IMAGE, ["echo", str(i)], remove=True))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and sorted(outs) == [b"0\n", b"1\n", b"2\n", b"3\n"]


def test_prune_and_context_manager(roots):
    with keel.Client(root=roots[0], runroot=roots[1]) as c:
        a = c.containers.create(IMAGE, "true")
        b = c.containers.run(IMAGE, "sleep 60", detach=True)
        assert c.containers.prune()["ContainersDeleted"] == [a.id]
        b.remove(force=True)
        assert c.containers.list(all=True) == []
        assert c.ping() and c.version()["Version"] == keel.__version__


def test_hostile_arguments_are_clear_errors(client):
    with pytest.raises(keel.InvalidArgument, match="image"):
        client.containers.run(None, "true")
    with pytest.raises(keel.NotFound):
        client.containers.get("")
    with pytest.raises(keel.ImageNotFound):
        client.images.get("")
    with pytest.raises(keel.APIError) as ei:
        client.images.pull("UPPER//case")
    assert ei.value.status_code == 400
    with pytest.raises(keel.InvalidArgument, match="invalid variable name"):
        client.containers.run(IMAGE, "true", environment={"A=B": "1"})
    with pytest.raises(keel.InvalidArgument, match="No closing quotation"):
        client.containers.run(IMAGE, "echo 'unterminated")
    with pytest.raises(keel.InvalidArgument, match="all_tags"):
        client.images.pull("localhost/x", all_tags=True)
    c = client.containers.create(IMAGE, "true")
    with pytest.raises(keel.InvalidArgument, match="tail"):
        c.logs(tail=-1)
    with pytest.raises(keel.InvalidArgument, match="since"):
        c.logs(since="yesterday")
    with pytest.raises(keel.InvalidArgument, match="condition"):
        c.wait(condition="bogus")
    with pytest.raises(keel.APIError, match="invalid signal"):
        client.containers.run(IMAGE, "sleep 5", detach=True).kill(signal="SIGNOPE")
    for x in client.containers.list(all=True):
        x.remove(force=True)
    assert client.containers.list(all=True) == [] and client._engine().snapshotter.snapshots() == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_exec_run(client, runtime):
    c = client.containers.run(IMAGE, "sleep 60", detach=True, runtime=runtime)
    r = c.exec_run("echo hi")
    assert r == (0, b"hi\n") and r.exit_code == 0 and r.output == b"hi\n"
    assert c.exec_run(["sh", "-c", "echo out; echo err >&2; exit 3"], demux=True) == (3, (b"out\n", b"err\n"))
    assert c.exec_run(["sh", "-c", "echo err >&2"], stderr=False) == (0, b"")
    assert c.exec_run("id -u", user="1") == (0, b"1\n")
    assert c.exec_run("sh -c 'echo $X; pwd'", environment={"X": "y"}, workdir="/tmp") == (0, b"y\n/tmp\n")
    code, out = c.exec_run("/no/such/binary")
    assert code in (126, 127) and out
    code, gen = c.exec_run(["sh", "-c", "echo 1; sleep 0.1; echo 2"], stream=True)
    assert code is None and b"".join(gen) == b"1\n2\n"
    assert c.exec_run("touch /tmp/detached", detach=True) == (None, b"")
    deadline = time.monotonic() + 10
    while c.exec_run("ls /tmp/detached")[0] != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert c.exec_run("ls /tmp/detached") == (0, b"/tmp/detached\n")
    with pytest.raises(keel.InvalidArgument, match="stdin"):
        c.exec_run("cat", stdin=True)
    c.kill()
    c.wait()
    with pytest.raises(keel.APIError) as ei:
        c.exec_run("true")
    assert ei.value.status_code == 409
    c.remove()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_networks_published_ports_and_hosts(roots, tmp_path, runtime):
    from net_helpers import free_port, http_get, links

    netdir = tmp_path / "net.d"
    tag = os.urandom(4).hex()
    name, bridge = f"kl-{tag}", f"kl{tag}"
    env = dict(os.environ, KEEL_NETWORK_CONFIG_DIR=str(netdir))
    r = subprocess.run([sys.executable, "-m", "keel.cli.main", "--root", roots[0], "--runroot", roots[1],
                        "network", "create", "--interface-name", bridge, "-o", "masquerade=false", name],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    c = keel.Client(root=roots[0], runroot=roots[1], network_config_dir=str(netdir))
    try:
        port = free_port()
        web = c.containers.run(IMAGE, ["sh", "-c", "echo hello from keel > /tmp/index.html && "
                                       "exec httpd -f -p 80 -h /tmp"], detach=True, runtime=runtime,
                               network=name, ports={"80/tcp": ("127.0.0.1", port)})
        assert http_get(f"http://127.0.0.1:{port}/index.html", timeout=20) == "hello from keel\n"
        out = c.containers.run(IMAGE, "cat /etc/hosts /etc/resolv.conf", remove=True, runtime=runtime,
                               network_mode="none", extra_hosts={"db.example": "10.1.2.3"},
                               dns=["10.0.0.53"], dns_search=["example.org"])
        assert b"10.1.2.3" in out and b"db.example" in out and b"10.0.0.53" in out and b"example.org" in out
        web.remove(force=True)
        assert c.containers.list(all=True) == []
    finally:
        for x in c.containers.list(all=True):
            x.remove(force=True)
        c.close()
        subprocess.run([sys.executable, "-m", "keel.cli.main", "--root", roots[0], "--runroot", roots[1],
                        "network", "rm", "-f", name], capture_output=True, env=env, timeout=60)
    assert not [ln["ifname"] for ln in links() if ln["ifname"] == bridge or ln.get("master") == bridge]
