"""The values each per-image setting takes, in images.yaml (mirror.config) and on the command
line (mirror.cli_args) alike: here, so the parser names them without importing the config reader
(and yaml with it)."""

INDEX_MODES = ("filter", "sparse")
FORMATS = ("keep", "oci", "docker")
FOREIGN_POLICIES = ("skip", "include", "rewrite")
