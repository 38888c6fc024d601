"""What `mirror serve` serves: each repository's tags, manifests, blobs and referrers, named
as `mirror load --to HOST/PREFIX` would push them (the same plan, so the two cannot disagree).

Only the bundle's index is held: the member offsets of the plain tar (or a layout
directory's files) and its manifests; blobs are read from the file per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mirror.bundle.members import Member
from mirror.bundle.reader import Bundle
from mirror.errors import BundleError, InvalidReference, UsageError
from mirror.load import Target, check_complete, plan_load
from mirror.manifest import RawManifest
from mirror.mapping import Layout, unmatched
from mirror.reference import Reference


@dataclass
class Repository:
    name: str
    tags: dict[str, str] = field(default_factory=dict)  # tag -> manifest digest
    manifests: dict[str, RawManifest] = field(default_factory=dict)
    blobs: set[str] = field(default_factory=set)  # digests the bundle holds for it
    referrers: dict[str, list[RawManifest]] = field(default_factory=dict)  # subject -> them


@dataclass
class Catalog:
    bundle: Bundle
    repositories: dict[str, Repository]
    # blobs the images name that the bundle does not hold (left out on purpose): why, as a
    # client asking for one is told (`left_out`)
    absent: dict[str, str] = field(default_factory=dict)
    base: str = ""  # an incremental bundle's base bundle, `name, sha256:...`
    notes: list[str] = field(default_factory=list)  # a docker-archive's new manifests
    unmatched: list[str] = field(default_factory=list)  # --map rules that moved nothing

    def blob(self, digest: str) -> Member | None:
        return self.bundle.blob_at(digest)

    def left_out(self, digest: str) -> str:
        """Why the bundle does not hold blob `digest` its images name, for the client that
        asks for it ("" for a digest they do not name): a sync from this server to where
        the base was not loaded fails on it, naming the bundle to load first."""
        why = self.absent.get(digest)
        if why == "base":
            return (f"the bundle served leaves it to its base bundle ({self.base}): load that "
                    "bundle first, where these images go, or mirror load this one (which "
                    "finds the base's blobs anywhere in its target)")
        if why is not None:
            return (f"the bundle served does not carry it ({why}: a foreign layer is "
                    "fetched from the urls its manifest gives)")
        return ""

    @property
    def tags(self) -> int:
        return sum(len(r.tags) for r in self.repositories.values())


def check_prefix(prefix: str) -> str:
    """--prefix: a repository path (as load's --to HOST/PREFIX takes it), or empty."""
    prefix = prefix.strip().strip("/")
    if not prefix:
        return ""
    try:
        Reference.parse(f"localhost/{prefix}")
    except InvalidReference as e:
        raise UsageError(f"invalid --prefix {prefix!r}: {e}") from None
    if ":" in prefix or "@" in prefix:
        raise UsageError(f"invalid --prefix {prefix!r}: a repository path, not a tag or digest "
                         "(each image is served with its own tags)")
    return prefix


def refuse_compressed(path: Path, parts_of: Path | None = None) -> None:
    """A .tar.zst cannot be read at an offset: say what to do rather than decompress per
    request. `parts_of`: the set's base name when `path` names parts (then the command
    decompresses their concatenation, not the first part alone)."""
    name = str(path)
    whole = str(parts_of) if parts_of is not None else name
    tar = f"{whole.removesuffix('.zst').removesuffix('.tzst')}" \
        f"{'' if whole.endswith('.tar.zst') else '.tar'}"
    command = f"cat {whole}.0* | zstd -d -o {tar}" if parts_of is not None else \
        f"zstd -d {name} -o {tar}"
    raise BundleError(f"{name}: a .tar.zst cannot be read at random, and mirror serve reads "
                      "each blob at its offset in the tar",
                      hint=f"decompress it once to a .tar (`{command}`) and serve that, or "
                      "pull with -o NAME.tar (no compression)")


def open_catalog(path: Path, prefix: str, registry: str, layout: Layout | None = None
                 ) -> Catalog:
    """Scan the bundle (the checks load makes before pushing) and plan it as load would for
    `--to REGISTRY/PREFIX` with `layout` (load's --map, --max-depth, ...). Sync: run it off
    the event loop."""
    target = Target(registry, prefix, layout or Layout())
    target.check_room(f"--prefix {prefix!r}")
    bundle = Bundle(path)
    if bundle.compressed:
        refuse_compressed(path, bundle.volumes.base if bundle.volumes is not None else None)
    contents = bundle.scan()
    images = plan_load(contents, target, bundle.name)
    absent = check_complete(images, contents, bundle.name)
    repos: dict[str, Repository] = {}
    for img in images:
        repo = repos.setdefault(img.repository, Repository(img.repository))
        for m in img.manifests:
            repo.manifests[m.digest] = m
        if img.tag is not None:
            repo.tags[img.tag] = img.root.digest
        repo.blobs.update(d.digest for d in img.blobs if d.digest in contents.members)
        if img.root.subject is not None:  # an OCI referrer: listed by the referrers API
            found = repo.referrers.setdefault(img.root.subject.digest, [])
            if img.root not in found:
                found.append(img.root)
    names = (i.image.reference.name for i in images if i.image.reference is not None)
    return Catalog(bundle, repos, absent, notes=contents.notes,
                   unmatched=unmatched(target.layout.rules, names),
                   base=contents.inventory.base_named if contents.inventory else "")
