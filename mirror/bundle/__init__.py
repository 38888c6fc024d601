"""The bundle: an OCI image-layout tar (optionally zstd-compressed), written and read."""
