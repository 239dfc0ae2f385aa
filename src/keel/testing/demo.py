"""`make demo`: build an OCI bundle from busybox-static offline and run it with keel-runtime."""

import json
import os
import shutil
import subprocess
import sys

from keel.testing.rootfs import make_rootfs

SCRIPT = r"""
echo "== inside a keel-runtime container =="
echo "hostname:     $(hostname)"
echo "my pid:       $$  (pid 1 of its own pid namespace)"
echo "processes:    $(ps -o pid= | wc -l) visible"
echo "uid:          $(id)"
echo "mount table:  (its own mount namespace)"
sed 's/^/    /' /proc/self/mounts
echo "network:      $(ls /sys/class/net | tr '\n' ' ')(its own network namespace)"
"""


def main():
    here = os.path.abspath(".demo")
    shutil.rmtree(here, ignore_errors=True)
    bundle = os.path.join(here, "bundle")
    os.makedirs(bundle)
    make_rootfs(os.path.join(bundle, "rootfs"))
    runtime = os.path.join(os.path.dirname(sys.executable), "keel-runtime")
    subprocess.run([runtime, "spec", "--bundle", bundle], check=True)
    with open(os.path.join(bundle, "config.json")) as f:
        config = json.load(f)
    config["process"]["terminal"] = False
    config["process"]["args"] = ["sh", "-c", SCRIPT]
    config["hostname"] = "keel-demo"
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    cid = f"keel-demo-{os.getpid()}"
    print(f"$ keel-runtime --root {here}/state run --bundle {bundle} {cid}", flush=True)
    code = subprocess.call([runtime, "--root", os.path.join(here, "state"), "run", "--bundle", bundle, cid])
    shutil.rmtree(here, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
