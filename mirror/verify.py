"""`mirror verify`: check a bundle offline and list every problem found."""

from __future__ import annotations

from pathlib import Path

from mirror.bundle.reader import Bundle, _blob_digest
from mirror.digest import Digest, Verifier
from mirror.errors import IntegrityError, MirrorError

CHUNK = 4 << 20


def verify_bundle(path: Path) -> tuple[list[str], bool]:
    """Return the problems (empty when the bundle is sound) and whether any is structural (an
    unreadable tar or layout, a missing blob) rather than bytes that do not match their digest.
    Checks: a readable tar with an OCI layout; index.json well formed; every blob's size and
    sha256; every manifest's config, layers and children present, or absent on purpose."""
    problems: list[str] = []
    try:
        bundle = Bundle(path)
        contents = bundle.scan()
    except MirrorError as e:  # unreadable (structural), or a manifest with wrong bytes
        return [str(e).removeprefix(f"{path}: ")], not isinstance(e, IntegrityError)
    try:
        _check_blobs(bundle, path, problems)
    except MirrorError as e:  # a stream that breaks off (truncated .tar.zst)
        return [*problems, str(e).removeprefix(f"{path}: ")], True
    structural = False
    absent = contents.inventory.absent if contents.inventory else {}
    for raw in contents.manifests.values():
        needed = list(raw.blobs()) + [c for c in raw.children
                                      if c.digest not in contents.manifests]
        for d in needed:
            if d.digest in contents.members:
                if contents.members[d.digest] != d.size:
                    problems.append(f"blob {d.digest}: {contents.members[d.digest]} bytes, "
                                    f"manifest {raw.digest} says {d.size}")
            elif d.digest not in absent:
                problems.append(f"blob {d.digest} is missing (needed by {raw.digest})")
                structural = True
    return problems, structural


def _check_blobs(bundle: Bundle, path: Path, problems: list[str]) -> None:
    """Hash every blob member against its name."""
    for name, size, f in bundle.members():
        digest = _blob_digest(name)
        if digest is None:
            continue
        try:
            Digest.parse(digest)
        except MirrorError:
            problems.append(f"{name}: not a valid blob name")
            continue
        v = Verifier(digest, size, name)
        try:
            if f is None:
                for chunk in bundle.open_blob(digest):
                    v.update(chunk)
            else:
                while chunk := f.read(CHUNK):
                    v.update(chunk)
            v.finish()
        except MirrorError as e:
            problems.append(f"blob {digest}: {str(e).removeprefix(f'{path}: ')}")
