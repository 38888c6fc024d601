"""`python -m tests.support.damage HEX ARGS...`: `mirror ARGS`, the manifest sha256:HEX
damaged in the cache's store of manifests (a byte added: another digest) at the moment the
run first reads it back after storing it (mirror.store.manifests.ManifestStore.get after its
put): where the run sends no request between the two for a test to hold
(tests.support.oracle.damaging), the damage lands there. Exits as mirror does."""

from __future__ import annotations

import sys

from mirror.store.manifests import ManifestStore


def damage_on_read_back(digest: str) -> None:
    """ManifestStore, from now on, damages `digest`'s file once, as it is first read after a
    put of it (by then every Client bound to a store reads through the class's get)."""
    get, put = ManifestStore.get, ManifestStore.put
    state = {"stored": False, "damaged": False}

    def put_(self: ManifestStore, d: str, data: bytes) -> bool:
        kept = put(self, d, data)
        state["stored"] = state["stored"] or d == digest
        return kept

    def get_(self: ManifestStore, d: str) -> bytes | None:
        if d == digest and state["stored"] and not state["damaged"]:
            state["damaged"] = True
            path = self.by_digest / digest.split(":", 1)[1]
            path.write_bytes(path.read_bytes().replace(b"{", b" {", 1))
        return get(self, d)

    ManifestStore.put, ManifestStore.get = put_, get_  # type: ignore[method-assign]


if __name__ == "__main__":
    damage_on_read_back(f"sha256:{sys.argv[1]}")
    from mirror.cli import main

    sys.exit(main(sys.argv[2:]))
