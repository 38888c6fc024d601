"""A set of parts checked (mirror.bundle.volumes): one line per part that is missing, cut
short or too long, damaged (its sha256) or extra, said before a reader opens the set
(`check`), by `mirror verify` from its one pass over the bundle (`PartHasher`), and by a
rerun that finds the set unchanged (mirror.bundle.writer)."""

from __future__ import annotations

import hashlib
import threading

from mirror.bundle.volumes import CHUNK, Part, VolumeSet, numbered, own_bundle
from mirror.errors import BundleError, MirrorError


def problems(vs: VolumeSet, *, hashes: bool, stop: threading.Event | None = None
             ) -> list[str]:
    """One line per part that is missing, too short or too long, damaged (its sha256), or
    there but not in the set (an extra part: `site.tar.004` of a larger, older set). With
    `hashes`, every part is read once (the whole file's sha256 too, from the same reads)."""
    found: list[str] = []
    whole = hashlib.sha256()
    whole_ok = True
    listed = {p.path.name for p in vs.parts}
    for p in vs.parts:
        try:
            size = p.path.stat().st_size
        except FileNotFoundError:
            found.append(f"part {p.path.name}: missing (expected {p.size} bytes, sha256 {p.sha256}): "
                         "copy it again")
            whole_ok = False
            continue
        except OSError as e:
            found.append(f"part {p.path.name}: cannot read: {e.strerror}: copy it again")
            whole_ok = False
            continue
        if size != p.size:
            cut = "truncated" if size < p.size else "too long"
            found.append(f"part {p.path.name}: {cut}: {size} bytes, expected {p.size}: copy it again")
            whole_ok = False
            continue
        if not hashes:
            continue
        h = hashlib.sha256()
        with open(p.path, "rb") as f:
            while chunk := f.read(CHUNK):
                if stop is not None and stop.is_set():
                    raise MirrorError("interrupted while checking the parts")
                h.update(chunk)
                whole.update(chunk)
        if h.hexdigest() != p.sha256:
            found.append(_damaged(vs, p, h.hexdigest()))
            whole_ok = False
    for extra in numbered(vs.base):
        if extra.name not in listed and not own_bundle(extra):
            found.append(f"part {extra.name}: not a part of this set ({vs.sidecar.name} lists "
                         f"{len(vs.parts)}): an extra part, from another set; remove it")
    if hashes and whole_ok and whole.hexdigest() != vs.sha256:
        found.append(f"{vs.sidecar.name}: the parts' concatenation has sha256 "
                     f"{whole.hexdigest()}, the sidecar says {vs.sha256}")
    return found


def _damaged(vs: VolumeSet, p: Part, got: str) -> str:
    return (f"part {p.path.name}: damaged: sha256 {got}, expected {p.sha256} (from "
            f"{vs.sidecar.name}; a part renamed, or bytes changed): copy it again")


class PartHasher:
    """Each part's sha256 from reads of the whole file in order (verify's one pass over the
    bundle), so the parts need not be read again to say which one is damaged."""

    def __init__(self, vs: VolumeSet) -> None:
        self.vs = vs
        self._i = 0
        self._left = vs.parts[0].size if vs.parts else 0
        self._h = hashlib.sha256()
        self._got: list[str] = []

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while len(view) and self._i < len(self.vs.parts):
            n = min(self._left, len(view))
            self._h.update(view[:n])
            view = view[n:]
            self._left -= n
            if self._left == 0:
                self._got.append(self._h.hexdigest())
                self._h = hashlib.sha256()
                self._i += 1
                self._left = self.vs.parts[self._i].size if self._i < len(self.vs.parts) else 0

    def problems(self, stop: threading.Event | None = None) -> list[str]:
        """One line per damaged part; when the reads stopped short of the end (a bundle that
        cannot be read to its end), the parts are read again for their sha256."""
        if len(self._got) < len(self.vs.parts):
            return problems(self.vs, hashes=True, stop=stop)
        return [_damaged(self.vs, p, got) for p, got in zip(self.vs.parts, self._got,
                                                              strict=True) if got != p.sha256]


def check(vs: VolumeSet, name: str, *, hashes: bool) -> None:
    """Raise BundleError (exit 10) naming the first part wrong, before anything is read."""
    found = problems(vs, hashes=hashes)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise BundleError(f"{name}: {found[0]}{more}", hint=f"`mirror verify {vs.sidecar}` says which "
                          "parts to copy again" if more else None)
