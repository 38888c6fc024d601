"""mirror: carry multi-arch container images into air-gapped networks as verified OCI bundles."""

__version__ = "0.1.0"
