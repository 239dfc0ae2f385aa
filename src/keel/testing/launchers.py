"""Write fast console scripts into a venv's bin/ (used by the Makefile after pip install).

pip's generated scripts import `re` and run `site` (about 10 ms before keel runs a
line); keel-runtime is called several times per container, so its launcher runs
the venv interpreter with -I -S and puts only keel's own directory on sys.path.
`keel` gets the same launcher, with the venv's site-packages appended (for rich and
the other libraries of the upper layers).
"""

import os
import sys

import keel

# name: (module, whether it needs the venv's site-packages: `keel` may import rich, ...)
SCRIPTS = {"keel-runtime": ("keel.runtime.cli", False), "keel-vm": ("keel.vm.cli", False),
           "keel": ("keel.cli.main", True)}


def write(bindir):
    import sysconfig

    python = os.path.join(os.path.abspath(bindir), "python3")
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(keel.__file__)))
    site_packages = sysconfig.get_paths()["purelib"]
    for name, (module, needs_site) in SCRIPTS.items():
        path = os.path.join(bindir, name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"#!{python} -IS\n"
                    f"import sys\n"
                    f"sys.path.insert(0, {pkg_parent!r})\n"
                    + (f"sys.path.append({site_packages!r})   # without running its .pth files\n"
                       if needs_site else "")
                    + f"from {module} import main\n"
                    f"sys.exit(main())\n")
        os.chmod(tmp, 0o755)
        os.rename(tmp, path)


if __name__ == "__main__":
    write(sys.argv[1])
