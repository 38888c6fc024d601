"""An OCI image layout as a directory (a bundle unpacked, `skopeo copy oci:DIR`, an extracted
`ctr export`): its files as the reader's members, with the checks a tar's get (regular files
only, inside the directory; a link is refused, as in a tar)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mirror.bundle.members import Member
from mirror.errors import BundleError


def index(root: Path, bundle: str) -> dict[str, Member]:
    """name (relative, `/`-separated) -> Member(offset 0, `path` the file)."""
    members: dict[str, Member] = {}
    try:
        for top, dirs, files in os.walk(root, onerror=_raise):
            dirs.sort()
            for f in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
                path = Path(top, f)
                name = path.relative_to(root).as_posix()
                st = path.lstat()
                if stat.S_ISLNK(st.st_mode):
                    raise BundleError(f"{bundle}: {name!r} is a link; a layout holds only "
                                      "files")
                if not stat.S_ISREG(st.st_mode):
                    raise BundleError(f"{bundle}: {name!r} is a device or special file; a "
                                      "layout holds only files")
                members[name] = Member(name, st.st_size, 0, path)
    except OSError as e:
        raise BundleError(f"{bundle}: cannot read the layout directory: "
                          f"{e.strerror or e}") from None
    return members


def _raise(e: OSError) -> None:
    raise e
