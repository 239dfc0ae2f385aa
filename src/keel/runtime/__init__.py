"""keel-runtime: an OCI runtime with runc's command line (one module per verb)."""
