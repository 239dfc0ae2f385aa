# keel: `make demo` runs a real container; `make test` runs the whole suite.
# Both install what they need (apt packages, the venv at .venv) on Debian 12 as root.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
HOST_PYTHON := $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
export DEBIAN_FRONTEND := noninteractive

APT_BASE := python3-venv busybox-static libseccomp2 procps iproute2 conmon
# keel-vm: QEMU (virtiofsd ships with it), lz4 to unpack the guest kernel, gcc for the guest agent
APT_VM := qemu-system-x86 lz4 gcc libc6-dev
APT_TEST := $(APT_BASE) runc crun podman containerd conmon catatonit tini uidmap \
	docker-registry skopeo umoci containernetworking-plugins iptables $(APT_VM)

PYTEST_ARGS ?=
ifneq ($(SKIP_VM),)
PYTEST_MARK := -m "not vm"
endif

.PHONY: demo test venv apt-base apt-test bench clean vm-assets

define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get install -y --no-install-recommends $$missing >/dev/null || \
		{ apt-get update >/dev/null && apt-get install -y --no-install-recommends $$missing >/dev/null; }; \
	fi
endef

apt-base:
	$(call apt_install,$(APT_BASE))

apt-test:
	$(call apt_install,$(APT_TEST))

$(VENV)/.installed: pyproject.toml | apt-base
	$(HOST_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	$(PY) -m keel.testing.launchers $(VENV)/bin
	# Byte-compile now: with PYTHONDONTWRITEBYTECODE set, every run would recompile keel.
	$(PY) -m compileall -q src
	touch $@

venv: $(VENV)/.installed

demo: apt-base venv
	$(PY) -m keel.testing.demo

# The guest kernel (apt-get download + dpkg -x into keel's cache, never the host's /boot),
# its modules and the agent's initramfs, built once.
vm-assets: apt-test venv
	$(PY) -m keel.vm.assets

test: apt-test venv $(if $(SKIP_VM),,vm-assets)
	$(PY) -m pytest $(PYTEST_MARK) $(PYTEST_ARGS)

bench: apt-test venv
	$(PY) bench/runtime_start.py
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .demo
