"""keel-vm: the VM-isolated OCI runtime (each container in its own QEMU microVM)."""
