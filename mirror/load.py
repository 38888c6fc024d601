"""The load engine: bundle -> registry, in the order that never leaves a tag on a half image.

1. Scan the bundle (layout files and every manifest, digests checked) and plan, for each
   index.json entry, the target repository `HOST/PREFIX/<source repository>` and its tag.
2. Check, before pushing anything, that every blob the manifests need is in the bundle at the
   right size, or absent on purpose (a foreign layer; an incremental bundle's blobs, which must
   then already be at the target, in some repository of it: mirror.elsewhere finds them).
3. Push blobs (HEAD skips those present; a blob already pushed to another repository of the
   target is mounted), streamed out of the tar and hashed on the way.
4. Push child manifests by digest, then each root by tag, byte for byte; the registry's
   Docker-Content-Digest must equal ours.
A load that fails or is stopped cancels the upload sessions it has open at the target.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from mirror.aio import gather_or_cancel
from mirror.bundle.layout import IMAGE_NAME, REF_NAME
from mirror.bundle.reader import Bundle, Contents
from mirror.digest import verified_sync
from mirror.elsewhere import find_elsewhere
from mirror.errors import (
    AuthError,
    BundleError,
    IncompleteBase,
    InvalidReference,
    NotFound,
    RateLimited,
    RegistryError,
    UsageError,
)
from mirror.fileobj import Readable
from mirror.manifest import Descriptor, RawManifest
from mirror.merge import merged, other_platforms, platforms
from mirror.progress import NullProgress, Progress
from mirror.reference import Reference, _is_registry, normalize_registry, registry_problem
from mirror.referrers import A_SUBJECT, Finder, in_fallback, push_fallback
from mirror.registry.client import Client
from mirror.registry.upload import restartable

CHUNK = 1 << 20
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass
class Target:
    registry: str
    prefix: str

    @classmethod
    def parse(cls, text: str) -> Target:
        text = text.strip().rstrip("/")
        if not text or "://" in text or "@" in text:
            raise UsageError(f"invalid --to {text!r}: expected HOST[:PORT][/PREFIX]")
        host, _, prefix = text.partition("/")
        why = registry_problem(host)
        if why is not None:
            raise UsageError(f"invalid --to {text!r}: {why} ({host!r}); expected "
                             "HOST[:PORT][/PREFIX]")
        try:
            if prefix:
                Reference.parse(f"{host}/{prefix}")
        except InvalidReference as e:
            raise UsageError(f"invalid --to {text!r}: {e}") from None
        if ":" in prefix:  # parsed as a tag: each image keeps its own
            raise UsageError(f"invalid --to {text!r}: the prefix is a repository path, "
                             "not a tag (each image is pushed with its own tag)")
        return cls(normalize_registry(host), prefix)


@dataclass
class PushImage:
    name: str  # the bundle's name for it
    repository: str  # target repository
    tag: str | None
    root: RawManifest
    manifests: list[RawManifest]  # children first, root last
    blobs: list[Descriptor]
    referrer_of: str | None = None  # a signature, SBOM or attestation: its subject digest
    unnamed: bool = False  # an entry with no ref name (skopeo's oci-archive:FILE): by digest


@dataclass
class LoadResult:
    images: list[PushImage] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)  # target@digest of images without a tag
    blobs_pushed: int = 0
    blobs_mounted: int = 0
    blobs_present: int = 0
    bytes_pushed: int = 0
    manifests_pushed: int = 0
    manifests_present: int = 0
    tags: list[str] = field(default_factory=list)
    untagged: list[str] = field(default_factory=list)  # HOST/REPO@DIGEST of unnamed entries
    dry_run: list[str] = field(default_factory=list)
    started: bool = False  # the target answered what it holds: the counts mean something


def _entry_target(entry: dict, target: Target, bundle: str) -> tuple[str, str | None]:
    ann = entry.get("annotations") or {}
    name = ann.get(IMAGE_NAME) or ann.get(REF_NAME)
    if not name:
        if not target.prefix:
            raise BundleError(f"{bundle}: index.json entry {entry.get('digest')} has no ref "
                              f"name ({REF_NAME}) and --to has no repository to put it in",
                              hint="give the repository with --to HOST/REPO (it is pushed "
                              "there by digest)")
        return target.prefix, None
    if _TAG.match(name) and "/" not in name and ":" not in name:
        if not target.prefix:  # a bare tag, as skopeo writes for oci-archive:FILE:TAG
            raise BundleError(f"{bundle}: entry {name!r} names a tag but no repository",
                              hint="give the repository with --to HOST/REPO")
        return target.prefix, name
    try:
        ref = Reference.parse(name)
    except InvalidReference as e:
        raise BundleError(f"{bundle}: index.json entry name {name!r}: {e}") from None
    first = name.split("/", 1)[0]
    if "/" in name and _is_registry(first):
        path = ref.repository
    else:  # no registry in the name: keep the path as written (no docker.io/library/)
        path = name.split("@")[0]
        if ":" in path.rsplit("/", 1)[-1]:
            path = path.rsplit(":", 1)[0]
    repo = f"{target.prefix}/{path}" if target.prefix else path
    return repo, ref.tag


def plan_load(contents: Contents, target: Target, bundle: str) -> list[PushImage]:
    images = []
    for entry in contents.index["manifests"]:
        desc = Descriptor.from_dict(entry, f"{bundle} index.json")
        root = contents.manifests.get(desc.digest)
        if root is None:
            raise BundleError(f"{bundle}: manifest {desc.digest} is missing")
        repo, tag = _entry_target(entry, target, bundle)
        order: list[RawManifest] = []
        blobs: dict[str, Descriptor] = {}
        seen: set[str] = set()

        def visit(raw: RawManifest, order: list = order, blobs: dict = blobs,
                  seen: set = seen) -> None:
            if raw.digest in seen:
                return
            seen.add(raw.digest)
            for child in raw.children:
                sub = contents.manifests.get(child.digest)
                if sub is not None:
                    visit(sub)
            for d in raw.blobs():
                blobs.setdefault(d.digest, d)
            order.append(raw)

        visit(root)
        ann = entry.get("annotations") or {}
        subject = ann.get(A_SUBJECT) or (root.subject.digest if root.subject else None)
        name = ann.get(IMAGE_NAME) or ann.get(REF_NAME)
        images.append(PushImage(str(name or f"{bundle}: index.json entry {desc.digest}"),
                                repo, tag, root, order, list(blobs.values()), subject,
                                unnamed=not name))
    targets: dict[tuple[str, str], PushImage] = {}
    for img in images:  # ghcr.io/org/app:1 and docker.io/org/app:1 both land on org/app:1
        if img.tag is None:
            continue
        other = targets.setdefault((img.repository, img.tag), img)
        if other.root.digest != img.root.digest:
            raise BundleError(
                f"{bundle}: {other.name} and {img.name} would both be pushed as "
                f"{target.registry}/{img.repository}:{img.tag}; nothing was pushed",
                hint="load them with different --to prefixes (one bundle per source registry)")
    # referrers go after every image, so their subjects are at the target first
    return sorted(images, key=lambda i: i.referrer_of is not None)


def check_complete(images: list[PushImage], contents: Contents, bundle: str) -> dict[str, str]:
    """Raise BundleError listing blobs that are neither in the bundle nor absent on purpose;
    return the absent-on-purpose ones (digest -> reason)."""
    absent = dict(contents.inventory.absent) if contents.inventory else {}
    missing: list[str] = []
    for img in images:
        for d in img.blobs:
            size = contents.members.get(d.digest)
            if size is None:
                if d.digest in absent or d.is_foreign:
                    absent.setdefault(d.digest, "foreign")
                    continue
                missing.append(f"{d.digest} ({img.name})")
            elif size != d.size:
                raise BundleError(f"{bundle}: blob {d.digest} has {size} bytes, its manifest "
                                  f"says {d.size} ({img.name})")
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise BundleError(f"{bundle}: {len(missing)} blob(s) missing: "
                          f"{', '.join(missing[:5])}{more}; nothing was pushed")
    return absent


def _base_repositories(contents: Contents, target: Target, bundle: str) -> list[str]:
    """Where the base's images went if it was loaded with the same --to."""
    names = contents.inventory.base_images if contents.inventory else []
    repos = []
    for name in names:
        try:
            repos.append(_entry_target({"annotations": {REF_NAME: name}}, target, bundle)[0])
        except BundleError:
            continue
    return repos


def _source_paths(images: list[PushImage], contents: Contents) -> list[str]:
    """Repository paths of this bundle's and its base's images, as the source names them
    (what a catalog's repository under any prefix ends with)."""
    names = [i.name for i in images if not i.unnamed]
    names += contents.inventory.base_images if contents.inventory else []
    paths = []
    for name in names:
        try:
            paths.append(Reference.parse(name).repository)
        except InvalidReference:
            continue
    return sorted(set(paths))


async def _aiter_thread(gen: Iterator[bytes]) -> AsyncIterator[bytes]:
    while True:
        chunk = await asyncio.to_thread(next, gen, None)
        if chunk is None:
            return
        yield chunk


async def load(client: Client, bundle: Bundle, target: Target, *, jobs: int = 4,
               dry_run: bool = False, progress: Progress | None = None,
               result: LoadResult | None = None, merge: bool = False) -> LoadResult:
    """`result`, when given, is filled in as the load goes: after a failure it holds what
    was done (a report's counts). `merge`: a tag holding another index keeps its other
    platforms (mirror.merge). A load that fails or is stopped (Ctrl-C, SIGTERM: a
    cancellation) first cancels the upload sessions it left open, within a few seconds."""
    progress = progress or NullProgress()
    result = result if result is not None else LoadResult()
    try:
        return await _load(client, bundle, target, jobs, dry_run, progress, result, merge)
    except BaseException:
        await client.cancel_open_uploads()
        raise


async def _load(client: Client, bundle: Bundle, target: Target, jobs: int, dry_run: bool,
                progress: Progress, result: LoadResult, merge: bool) -> LoadResult:
    contents = await asyncio.to_thread(bundle.scan)
    for note in contents.notes:  # a docker-archive's new manifests (conversions)
        progress.info(note)
    images = plan_load(contents, target, bundle.name)
    absent = check_complete(images, contents, bundle.name)
    reg = target.registry
    result.images = images
    sem = asyncio.Semaphore(jobs)

    # which blobs each repository still needs
    need: dict[str, dict[str, Descriptor]] = {}
    for img in images:
        for d in img.blobs:
            need.setdefault(img.repository, {})[d.digest] = d

    async def present(repo: str, d: Descriptor) -> bool:
        async with sem:
            return await client.has_blob(reg, repo, d)

    checks = [(repo, d) for repo, ds in need.items() for d in ds.values()]
    flags = await gather_or_cancel(present(r, d) for r, d in checks)
    todo: dict[str, list[tuple[str, Descriptor]]] = {}
    missing_base: list[str] = []
    present_in: dict[str, str] = {}  # digest -> a target repository that already has it
    for (repo, d), ok in zip(checks, flags, strict=True):
        if ok:
            present_in.setdefault(d.digest, repo)
    lost = {d.digest: d for (repo, d), ok in zip(checks, flags, strict=True)
            if not ok and d.digest not in present_in and d.digest not in contents.members
            and absent.get(d.digest) == "base"}
    searched = 0
    if lost:  # the base may have put them in other repositories: mount from there
        found, searched = await find_elsewhere(
            client, reg, lost, _base_repositories(contents, target, bundle.name)
            + list(need), _source_paths(images, contents), jobs)
        present_in.update(found)
    result.started = True
    mounts: list[tuple[str, Descriptor, str]] = []  # from an earlier load into another repo
    for (repo, d), ok in zip(checks, flags, strict=True):
        if ok:
            result.blobs_present += 1
            continue
        reason = absent.get(d.digest) if d.digest not in contents.members else None
        if d.digest in present_in and reason in (None, "base"):  # not foreign: never needed
            mounts.append((repo, d, present_in[d.digest]))
            continue
        if reason == "base":
            missing_base.append(f"{d.digest} ({repo})")
        elif reason is None:
            todo.setdefault(d.digest, []).append((repo, d))
    if missing_base:
        base = contents.inventory.base_name if contents.inventory else None
        more = f" and {len(missing_base) - 5} more" if len(missing_base) > 5 else ""
        raise IncompleteBase(
            f"{bundle.name}: incremental bundle: {len(missing_base)} blob(s) it does not carry "
            f"are not in {reg} (looked in {searched} repositories): "
            f"{', '.join(missing_base[:5])}{more}; nothing was pushed",
            hint="load first the bundle(s) made before this one"
                 + (f" (it was made against {base})" if base else ""))
    if dry_run:
        for repo, d, src in mounts:
            result.dry_run.append(f"blob {d.digest} -> {repo} (mount from {src})")
        for digest, where in sorted(todo.items()):
            result.dry_run.append(f"blob {digest} -> {', '.join(r for r, _ in where)}")
        finder = Finder(client)
        seen: set[tuple[str, str]] = set()  # as _push_manifests: each (repository, ref) once
        for img in images:
            for m in img.manifests:
                ref = img.tag if (m is img.root and img.tag) else m.digest
                if (img.repository, ref) in seen:
                    continue
                seen.add((img.repository, ref))
                if await _there(client, reg, img.repository, ref, m):
                    result.manifests_present += 1  # counted as the load counts it
                    if not (m is img.root and img.tag is None and
                            await _fallback_missing(client, finder, reg, img.repository, m)):
                        continue  # already there: the load would not push it
                elif m is img.root and img.tag:
                    # what the tag would get: the bundle's root, or it merged with the index
                    # the tag holds (`_over` warns as the load would)
                    m = await _over(client, reg, img, merge, progress)
                    if m is not img.root and await _there(client, reg, img.repository,
                                                          ref, m):
                        result.manifests_present += 1  # merged before, the same way
                        continue
                result.dry_run.append(f"manifest {m.digest} -> {reg}/{img.repository}:{ref}"
                                      if not ref.startswith("sha256:") else
                                      f"manifest {m.digest} -> {reg}/{img.repository}@{ref}")
        return result
    progress.total(sum(ws[0][1].size for ws in todo.values()))

    async def push_one(digest: str, where: list[tuple[str, Descriptor]],
                       stream: Iterator[bytes] | None = None
                       ) -> list[tuple[str, Descriptor]]:
        """Upload to the first repository, mount into the others; return those where the
        registry would not mount (a stream cannot be read twice: the caller passes again).
        `stream` is a plain iterator over a compressed bundle's member."""
        first_repo, d = where[0]
        src = f"{bundle.name}: blob {digest}"

        def from_tar(off: int) -> AsyncIterator[bytes]:
            # hashed in the reading thread, not on the event loop; a resumed upload (off > 0)
            # is checked by the registry against the digest in the final PUT
            chunks = bundle.open_blob(digest, off)
            return _aiter_thread(verified_sync(chunks, digest, d.size, src) if off == 0
                                 else chunks)

        if stream is not None:
            await client.upload_blob(reg, first_repo, d, lambda off: _aiter_thread(
                verified_sync(stream, digest, d.size, src)), seekable=False)
        else:
            await client.upload_blob(reg, first_repo, d, from_tar, seekable=True)
        result.blobs_pushed += 1
        result.bytes_pushed += d.size
        progress.advanced(d.size)
        left = []
        for repo, desc in where[1:]:
            loc = await client.mount_blob(reg, repo, d, first_repo)
            if loc is None:
                result.blobs_mounted += 1
            elif stream is not None:
                await client.cancel_upload(reg, repo, loc)  # the next pass opens its own
                left.append((repo, desc))
            else:
                await client.upload_blob(reg, repo, d, from_tar, seekable=True, location=loc)
                result.blobs_pushed += 1
                result.bytes_pushed += d.size
        return left

    for repo, d, src in mounts:
        loc = await client.mount_blob(reg, repo, d, src)
        if loc is None:
            result.blobs_mounted += 1
        elif d.digest in contents.members:
            await client.cancel_upload(reg, repo, loc)  # pushed below, in a session of its own
            todo.setdefault(d.digest, []).append((repo, d))
        else:
            await client.cancel_upload(reg, repo, loc)
            raise IncompleteBase(f"{bundle.name}: {reg} would not mount {d.digest} from {src} "
                                 f"into {repo}, and the bundle does not carry it")

    if bundle.compressed:
        # one pass over the stream; again for blobs a mount did not take, and for uploads
        # that failed with a cause worth another try (a stream can't be re-sent: the blob
        # waits for the next pass, up to the retry policy's tries)
        failures: dict[str, int] = {}
        policy = client.t.policy
        # a failed upload may leave a read of its member running in a thread: the stream
        # moves on to the next member only once that read is over
        reading = threading.Lock()

        def read(f: Readable) -> bytes:
            with reading:
                return f.read(CHUNK)

        while todo:
            again: dict[str, list[tuple[str, Descriptor]]] = {}
            stream = bundle.members()
            try:  # a push that fails closes the bundle's file now, not when collected
                while True:
                    with reading:
                        item = next(stream, None)
                    if item is None:
                        break
                    name, _size, f = item
                    digest = name.replace("blobs/", "", 1).replace("/", ":", 1)
                    if digest in todo and f is not None:
                        where = todo.pop(digest)
                        try:
                            left = await push_one(digest, where,
                                                  iter(functools.partial(read, f), b""))
                        except RegistryError as e:
                            failures[digest] = failures.get(digest, 0) + 1
                            if not restartable(e) or failures[digest] >= policy.tries:
                                raise
                            client.t.count_retry()
                            client.t.debug(f"retry upload of blob {digest} on the next pass over "
                                           f"{bundle.name}: {e}; try {failures[digest] + 1} of "
                                           f"{policy.tries}")
                            left = where
                        if left:
                            again[digest] = left
            finally:
                stream.close()
            if todo:
                raise BundleError(f"{bundle.name}: blob(s) missing from the stream: "
                                  f"{', '.join(sorted(todo)[:5])}")
            todo = again
            if failures and todo:
                await asyncio.sleep(policy.delay(max(failures.values())))
    else:
        async def guarded(digest: str, where: list[tuple[str, Descriptor]]) -> None:
            async with sem:
                await push_one(digest, where)

        await gather_or_cancel(guarded(dg, w) for dg, w in todo.items())

    pushed: set[tuple[str, str]] = set()
    finder = Finder(client)
    plain = [i for i in images if i.referrer_of is None]
    await _push_manifests(client, finder, reg, plain, pushed, result, progress, merge)
    await _push_manifests(client, finder, reg,
                          [i for i in images if i.referrer_of is not None],
                          pushed, result, progress)
    return result



async def _push_manifests(client: Client, finder: Finder, reg: str, images: list[PushImage],
                          pushed: set[tuple[str, str]], result: LoadResult,
                          progress: Progress, merge: bool = False) -> None:
    """Children by digest for every image, then digest-only roots, then tags; a referrer
    whose registry has no referrers API is added to its subject's fallback tag index. What
    the target already serves (HEAD), a referrer's fallback entry included, is not pushed."""
    for img in images:
        for m in img.manifests:
            if m is img.root or (img.repository, m.digest) in pushed:
                continue
            pushed.add((img.repository, m.digest))
            if await _there(client, reg, img.repository, m.digest, m):
                result.manifests_present += 1
                continue
            await _put(client, reg, img, m.digest, m)
            result.manifests_pushed += 1
    for img in images:
        if img.tag is None and (img.repository, img.root.digest) not in pushed:
            pushed.add((img.repository, img.root.digest))
            if await _there(client, reg, img.repository, img.root.digest, img.root):
                result.manifests_present += 1
                if await _fallback_missing(client, finder, reg, img.repository, img.root):
                    await push_fallback(client, reg, img.repository, img.root)
            else:
                subject = await _put(client, reg, img, img.root.digest, img.root)
                result.manifests_pushed += 1
                if img.root.subject is not None and not subject:
                    await push_fallback(client, reg, img.repository, img.root)
            if img.referrer_of is None and not img.unnamed:  # pinned by digest: named
                at = f"{reg}/{img.repository}@{img.root.digest}"
                result.pinned.append(at)
                progress.info(f"{img.name} -> {at}")
    for img in images:
        if img.unnamed:  # put where the user did not name: say where
            where = f"{reg}/{img.repository}@{img.root.digest}"
            result.untagged.append(where)
            progress.info(f"{img.name} has no ref name: pushed as {where} (no tag)")
    for img in images:
        if img.tag is not None:
            root = img.root
            if await _there(client, reg, img.repository, img.tag, img.root):
                result.manifests_present += 1  # a re-run: the tag already names these bytes
            else:
                root = await _over(client, reg, img, merge, progress)
                if root is not img.root and await _there(client, reg, img.repository,
                                                         img.tag, root):
                    result.manifests_present += 1  # merged before, the same way
                else:
                    await _put(client, reg, img, img.tag, root)
                    result.manifests_pushed += 1
            result.tags.append(f"{reg}/{img.repository}:{img.tag}")
            progress.info(f"{img.name} -> {reg}/{img.repository}:{img.tag} {root.digest}")


async def _over(client: Client, reg: str, img: PushImage, merge: bool, progress: Progress
                ) -> RawManifest:
    """What to push as the tag: the bundle's root, or, when the tag holds another index
    with platforms the root lacks and `merge` is asked, the two merged (mirror.merge). Says
    so either way: a tag never loses platforms silently."""
    if img.tag is None or not (img.root.is_index or img.root.is_image):
        return img.root
    try:
        old = await client.get_manifest(reg, img.repository, img.tag)
    except NotFound:
        return img.root
    except RegistryError:
        return img.root  # no answer worth trusting: push, as before
    where = f"{reg}/{img.repository}:{img.tag}"
    if not img.root.is_index:
        # one image manifest (a docker-archive's, a single-platform image) over a multi-arch
        # tag: the tag becomes that one image; --merge merges indexes only
        held = [d for d in old.children if d.platform is not None and
                not d.platform.is_unknown] if old.is_index else []
        if len(held) > 1:
            progress.warn(f"{where} held index {old.digest} with {platforms(held)}; "
                          f"{img.name} is one image manifest ({img.root.digest}), not an "
                          "index: replaced, the tag is no longer multi-arch")
        return img.root
    keep = other_platforms(img.root, old) if old.is_index else []
    if not keep:
        return img.root
    if not merge:
        progress.warn(f"{where} held index {old.digest} with {platforms(keep)}, which "
                      f"{img.name} ({img.root.digest}) does not have: replaced, those "
                      "platforms are no longer tagged (`mirror load --merge` keeps them)")
        return img.root
    new = merged(img.root, old, keep)
    if new.digest == old.digest:
        return new  # merged so before (a re-run): nothing changes, nothing to say
    progress.warn(f"{where}: merged {img.root.digest} with {platforms(keep)} from the index "
                  f"it held ({old.digest}): {img.root.digest} -> {new.digest}")
    return new


async def _fallback_missing(client: Client, finder: Finder, reg: str, repo: str,
                            m: RawManifest) -> bool:
    """`m` is a referrer (it has a `subject`), the target has no referrers API, and the
    subject's fallback tag index does not list it (yet): the index has to be merged."""
    if m.subject is None or await finder.has_api(reg, repo, m.subject.digest):
        return False
    return not await in_fallback(client, reg, repo, m)


async def _there(client: Client, reg: str, repo: str, ref: str, m: RawManifest) -> bool:
    """The target already serves `m` as `ref` (a tag naming the same digest, or the digest):
    nothing to push (a re-run pushes nothing, and a registry with immutable tags is not
    asked to rewrite one)."""
    try:
        head = await client.head_manifest(reg, repo, ref)
    except (AuthError, RateLimited):
        raise
    except RegistryError:
        return False  # no answer worth trusting: push, as before
    return head is not None and head.digest == m.digest


async def _put(client: Client, reg: str, img: PushImage, ref: str, m: RawManifest
               ) -> str | None:
    """Push one manifest; when the registry refuses it, say what in it registries refuse."""
    try:
        return await client.put_manifest(reg, img.repository, ref, m)
    except RegistryError as e:
        hint = None
        if any(d.urls for d in m.layers):
            hint = ("this registry refuses manifests whose layers carry `urls` (foreign "
                    "layers): pull with `--foreign-layers rewrite`, or allow them on the "
                    "registry (distribution: validation.manifests.urls.allow)")
        elif m.is_index and any((img.repository, c.digest) not in _present_children(img)
                                for c in m.children):
            hint = ("this is a sparse index (`index: sparse`): the registry refuses an index "
                    "whose platforms are not all present; pull with `index: filter`, or turn "
                    "that validation off on the registry")
        if hint is None or e.hint:
            raise
        raise type(e)(str(e), registry=e.registry, repository=e.repository, status=e.status,
                      codes=e.codes, hint=hint) from e


def _present_children(img: PushImage) -> set[tuple[str, str]]:
    return {(img.repository, m.digest) for m in img.manifests}
