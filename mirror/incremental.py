"""The base of an incremental pull (`--base`): what an earlier bundle, or the lock file written
with it, says was carried across already: its blobs (left out of the new bundle), the earlier
bundle's digest and name (recorded in the new bundle's inventory: a lock file's are those of
the bundle it names, which the far side holds) and its images (a load looks for the blobs in
their repositories at the target). An output that is the base itself is refused."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from mirror.bundle import volumes
from mirror.digest import sha256_file
from mirror.errors import BundleError, IntegrityError, UsageError
from mirror.lockfile import Lock, is_lock_file


def read_base(path: Path, out: Path, *, dry_run: bool) -> dict[str, Any]:
    """PullOptions' base_* fields for `--base path` (mirror.pull_run asks only with one), for
    a pull writing `out` (nothing is written with `dry_run`, so nothing can be written over)."""
    parts = volumes.base_of(path)  # a set of parts: its base name (mirror.bundle.volumes)
    if not path.exists() and parts is None:
        raise UsageError(f"--base {path}: no such file")
    if not dry_run and (out.exists() and os.path.samefile(out, parts or path) or
                        parts is not None and out.absolute() == parts.absolute()):
        raise UsageError(f"-o {out} is --base {path} (the same file): the new bundle would "
                         "replace the base it leaves out",
                         hint="write the incremental bundle to a file of its own")
    if is_lock_file(path):
        return _from_lock(path, None if dry_run else out)
    return _from_bundle(path)


def _from_lock(path: Path, out: Path | None) -> dict[str, Any]:
    """A lock file's blobs; `out` (None: nothing is written) must not be the bundle the lock
    was written with: the far side may still need it."""
    lock = Lock.read(path)
    if out is not None and lock.bundle and out.exists() and \
            lock.bundle["name"] in (out.name, out.resolve().name) and \
            sha256_file(out) == lock.bundle["digest"]:
        raise UsageError(
            f"-o {out} is the bundle --base {path} was written with "
            f"({lock.bundle['digest']}): the far side may still need it",
            hint="write the incremental bundle to a file of its own (a name per run)")
    if not lock.blobs:  # else every blob would go in again, silently: not incremental at all
        raise UsageError(f"--base {path}: the lock file lists no blobs",
                         hint="give the lock file `mirror pull` wrote with the earlier "
                         "bundle, or that bundle itself")
    if not lock.bundle:  # `mirror lock`'s or a sync's: its blobs were never carried across
        raise UsageError(f"--base {path}: the lock file names no bundle (`mirror lock` or a "
                         "sync wrote it): it says what the tags named, not what was carried",
                         hint="give the lock file a pull wrote with the last bundle carried "
                         "(a --locked pull writes none), or that bundle itself")
    # the bundle the lock was written with is the base the far side holds (the lock file
    # itself stays on this side): the new bundle names it, as with that bundle as --base
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", lock.bundle["digest"]):  # edited by hand
        raise UsageError(f"--base {path}: the bundle it names ({lock.bundle['name']}) has "
                         f"no sha256 digest: {lock.bundle['digest']!r}",
                         hint="give that bundle itself as --base")
    return {"base_blobs": lock.blobs, "base_digest": lock.bundle["digest"],
            "base_name": lock.bundle["name"], "base_images": tuple(sorted(lock.images))}


def _from_bundle(path: Path) -> dict[str, Any]:
    """A bundle's members, the images its index names and those its own base carried (a chain
    of incremental bundles); its digest, hashed (a plain tar is read once more for it, a
    tar.zst as it is scanned) and checked against the checksum file beside it
    (`_check_sidecar`): the far side looks for the bundle by that digest."""
    from mirror.bundle.layout import REF_NAME
    from mirror.bundle.reader import Bundle

    whole = hashlib.sha256()  # a tar.zst's every byte, as the scan reads it: no second pass
    try:
        bundle = Bundle(path)  # a set of parts: checked against its sidecar here
        contents = bundle.scan(tap=whole.update)
    except BundleError as e:  # `--base images.yaml`, meant: images.lock
        raise BundleError(f"--base {path}: neither a lock file nor a readable bundle: {e}",
                          hint="give the earlier bundle (.tar, .tar.zst) or its lock file "
                          "(images.lock)") from None
    if bundle.volumes is not None:  # the whole file's name and sha256, not a part's
        path, digest = bundle.volumes.base, "sha256:" + bundle.volumes.sha256
    else:
        digest = ("sha256:" + whole.hexdigest()) if bundle.compressed else sha256_file(path)
        _check_sidecar(path, digest)
    names = {str(n) for e in contents.index["manifests"]
             for n in [(e.get("annotations") or {}).get(REF_NAME)] if n}
    blobs = dict(contents.members)
    if contents.inventory:  # an incremental bundle: what it left to its own base was carried
        inv = contents.inventory
        names.update(inv.base_images)
        blobs.update((d, inv.blobs[d]) for d, why in inv.absent.items()
                     if why == "base" and d in inv.blobs)
    return {"base_blobs": blobs, "base_digest": digest,
            "base_name": path.name, "base_images": tuple(sorted(names))}


def _check_sidecar(path: Path, digest: str) -> None:
    """The base's `BUNDLE.sha256`, when there is one, says the digest hashed from the base:
    else the base or its checksum file is damaged (or one was replaced without the other),
    and the new bundle would name as its base a file the far side may not have."""
    side = path.with_name(path.name + ".sha256")
    try:
        said = side.read_text(errors="replace").split()[:1]
    except FileNotFoundError:
        return
    except OSError as e:
        raise UsageError(f"--base {path}: cannot read {side}: {e.strerror}") from None
    if said != [digest.removeprefix("sha256:")]:
        told = said[0] if said else "nothing"
        raise IntegrityError(
            f"--base {path}: the base's sha256 is {digest.removeprefix('sha256:')}, but "
            f"{side} says {told[:80]}: the base or its checksum file is damaged",
            hint=f"`mirror verify {path}` says which; give the bundle the far side loaded as "
            "--base (or its lock file)")
