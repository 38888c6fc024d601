"""`mirror verify`: check a bundle offline and list every problem found."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

from mirror.bundle import consistency
from mirror.bundle.reader import Bundle, _blob_digest
from mirror.digest import Digest, Verifier
from mirror.errors import IntegrityError, MirrorError

CHUNK = 4 << 20
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def verify_bundle(path: Path, note: Callable[[str], None] | None = None
                  ) -> tuple[list[str], bool]:
    """Return the problems (empty when the bundle is sound) and whether any is structural (an
    unreadable tar or layout, trailing data, a missing blob, an inventory that does not match
    the bundle) rather than bytes that do not match their digest.
    Checks: the file against `BUNDLE.sha256` when there is one; a readable tar (nothing but
    zeros after its end; in a .tar.zst, nothing after the last zstd frame) with an OCI layout;
    index.json and every digest in it well formed; every blob's size and sha256; the mirror.json
    inventory against the bundle (mirror.bundle.consistency); every manifest's config, layers
    and children present, or absent on purpose."""
    problems: list[str] = []
    side = _sidecar_problem(Path(path), note or (lambda _: None))
    if side:
        problems.append(side)
    try:
        bundle = Bundle(path)
        contents = bundle.scan(check=False)
    except MirrorError as e:  # unreadable (structural), or a manifest with wrong bytes
        return [*problems, _own(e, path)], not isinstance(e, IntegrityError)
    try:
        _check_blobs(bundle, path, problems)
    except MirrorError as e:  # a stream that breaks off (truncated .tar.zst)
        return [*problems, _own(e, path)], True
    found = consistency.problems(contents)
    for raw in contents.manifests.values():
        for d in raw.blobs():
            have = contents.members.get(d.digest)
            if have is not None and have != d.size:
                problems.append(f"blob {d.digest}: {have} bytes, manifest {raw.digest} says "
                                f"{d.size}")
    return problems + found, bool(found)


def _own(e: MirrorError, path: Path) -> str:
    return str(e).removeprefix(f"{path}: ")


def _sidecar_problem(path: Path, note: Callable[[str], None]) -> str | None:
    """`BUNDLE.sha256` (sha256sum's format, written by pull) against the file: None when it
    matches or there is none. What `sha256sum -c` says, without leaving the directory."""
    side = path.with_name(path.name + ".sha256")
    try:
        text = side.read_text(errors="replace")
    except FileNotFoundError:
        note(f"{path}: no {side.name} beside it; the file's own sha256 is not checked")
        return None
    except OSError as e:
        return f"cannot read {side}: {e.strerror}"
    want = text.split()[0] if text.split() else ""
    if not _HEX.match(want):
        return f"{side} is not a sha256sum line (expected '<64 hex>  {path.name}')"
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    except OSError:
        return None  # the bundle itself cannot be read: the reader says so
    if h.hexdigest() != want.lower():
        return (f"sha256 {h.hexdigest()} does not match {side} (which says {want.lower()}): "
                "the file changed after it was written")
    note(f"{path}: matches {side.name}")
    return None


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
            problems.append(f"blob {digest}: {_own(e, path)}")
