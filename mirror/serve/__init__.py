"""`mirror serve`: a bundle answered as a read-only OCI distribution registry (catalog: what
is served under which name; api: the HTTP endpoints; server: listening, TLS, the request log)."""

DEFAULT_LISTEN = "0.0.0.0:5000"  # every address, distribution's port
