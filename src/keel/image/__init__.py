"""keel.image: content store, registry client, layer unpack, snapshots, archives.

The containerd-content-store-plus-skopeo layer. Modules: reference (names),
digest, store (blobs + SQLite metadata), registry (OCI distribution client),
auth / registries (credentials and registries.conf), unpack (safe layer
application), snapshot (overlay snapshots by chain id), bundle (OCI bundle from an
image), archive (OCI layout and docker-archive import/export).
"""
