"""The `keel` command (podman/docker habits)."""
