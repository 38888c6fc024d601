"""The sync matrix: every digest a `mirror sync` names is served by the target that holds it.

Over `--format keep|oci|docker`, platforms (all; a subset as a filtered index; a subset as a
sparse index), referrers (carried; `--no-referrers`), the destination (another registry
under a prefix; `--map` rules; the source's own registry under a prefix, where blobs are
mounted; two `--to` at once: the source's own registry and another), `--cache DIR` or
none, and the images named as references (two tags of one image among them) or by an
images.yaml tag rule (`semver:`, `latest:`). Each setting has sources of its own (a Docker
manifest list and an OCI index, three platforms sharing a layer, a cosign signature tag on
the index, an OCI 1.1 SBOM with `subject` on the arm64 manifest, a BuildKit attestation in
the OCI index; a nested OCI index), its own target registry and cache dir, and runs three
syncs: cold; a rerun with nothing new, whose report's `requests` are held to what README
says a rerun asks (of the target one manifest HEAD per image, with referrers carried at
least, and one per manifest below an index not read there, no blob HEAD, nothing pushed; of the source no blob; through `--cache` no manifest
GET at either end but the referrers', the source one HEAD per tag; without it, nothing
converted or filtered, the source one GET per tag; each blob fetched into the cache once,
every run); then a third, once 1.1.0 names another image upstream (the list's and the
nested index's with a new amd64 image beside their other platforms, the OCI index's all
new), pushed by tests/support.

After each run, every digest the report names (and the lock file the sync writes) is
served by each target that the report's `placement` says holds the image (a manifest as a
manifest: its body's sha256 and Docker-Content-Digest are the digest; a config or layer as
a blob, its bytes hashed), each tag resolves there to the digest the report gives it (read
by skopeo too, an oracle of its own) and at the source to its `source_digest`, a manifest
the sync did not convert is one the source serves (the same digest: the same bytes), a
converted one is reported old -> new and has the format's media type, the signatures and
SBOMs are at the target exactly when referrers are carried, and a target on the source's
registry had every blob mounted, none uploaded.

What cannot work by design is asserted with its exit code and message, as test_matrix does:
a sparse index the target refuses (distribution does: exit 3, the hint naming the sparse
index; each alone, named in the target's `failed`, as --keep-going fails a manifest a target
refuses), a sparse index a conversion would have to change (exit 2), `--format docker` of an
index with a BuildKit attestation or of a nested index (exit 9); syncs use `--keep-going`,
so the other images still go through (exit 13).

The settings are a covering design, not the full product: the twelve pairs of destination
and format each once, platforms (all/filter), referrers, cache and rule set so that every
two factors meet in every pair of values; one sparse setting per format (its sync fails:
one run); and five more with referrers carried where a target is the source's registry or
the index is filtered. They run three at a time: about a minute and a half on two busy
cores.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import imagegen as ig
from tests.support.oracle import run_mirror
from tests.support.pusher import (
    PushError,
    get_blob,
    get_manifest,
    push_image,
    push_raw_manifest,
)
from tests.support.referrers import fallback_tag, push_sbom, push_signature
from tests.support.registry import Registry

pytestmark = pytest.mark.slow  # the whole sync matrix: minutes

FORMATS = ("keep", "oci", "docker")
DESTS = ("prefix", "map", "own", "two")
SUBSET = "linux/amd64,linux/arm64"
PARTIAL, USAGE, REGISTRY, UNSUPPORTED = 13, 2, 3, 9
KINDS = ("list", "index", "nested")  # a Docker list, an OCI index, a nested OCI index
INDEX_TYPES = {"keep": None, "oci": ig.OCI_INDEX, "docker": ig.DOCKER_LIST}
MANIFEST_TYPES = {"keep": None, "oci": ig.OCI_MANIFEST, "docker": ig.DOCKER_MANIFEST}

# (destination, format, filtered, referrers, cache, rule): every pair of factors meets in
# every pair of values (a mixed covering array of strength 2, 4 x 3 x 2^4 in 12 rows)
_DESIGN = [(0, 0, 0, 1, 1, 1), (0, 1, 0, 0, 1, 0), (0, 2, 1, 0, 0, 0), (1, 0, 0, 0, 0, 0),
           (1, 1, 0, 0, 1, 1), (1, 2, 1, 1, 0, 1), (2, 0, 0, 0, 1, 1), (2, 1, 1, 0, 1, 0),
           (2, 2, 1, 1, 0, 0), (3, 0, 1, 0, 0, 1), (3, 1, 0, 1, 0, 1), (3, 2, 0, 1, 1, 0)]


@dataclass(frozen=True)
class Setting:
    fmt: str
    platforms: str  # all, filter, sparse
    referrers: bool
    dest: str
    cache: bool
    rule: bool  # images.yaml tag rules instead of references
    n: int

    @property
    def id(self) -> str:
        return "-".join([self.fmt, self.platforms, "refs" if self.referrers else "norefs",
                         self.dest, "cache" if self.cache else "nocache",
                         "rule" if self.rule else "tags"])

    @property
    def name(self) -> str:  # a repository component of this setting's own
        return f"s{self.n:02d}"

    def flags(self) -> list[str]:
        out = ["--format", self.fmt, "--keep-going", "--retries", "1"]
        if self.platforms != "all":
            out += ["--platform", SUBSET, "--index", self.platforms]
        return out + ([] if self.referrers else ["--no-referrers"])


SETTINGS = [Setting(FORMATS[f], ("all", "filter")[p], bool(r), DESTS[d], bool(c), bool(y), n)
            for n, (d, f, p, r, c, y) in enumerate(_DESIGN)] + \
           [Setting(f, "sparse", i != 1, "prefix", i == 1, i == 2, 12 + i)
            for i, f in enumerate(FORMATS)] + \
           [Setting("keep", "all", True, "own", False, False, 15),
            Setting("keep", "filter", True, "map", True, True, 16),
            Setting("oci", "filter", True, "two", True, False, 17),
            Setting("keep", "filter", True, "own", True, False, 18),
            Setting("oci", "all", True, "own", True, True, 19)]
assert len({s.id for s in SETTINGS}) == len(SETTINGS)


# -- the sources, a set per setting (the third run moves a tag of its own) -------------------

@dataclass
class Source:
    reg: Registry
    root: str  # smx/<setting>: its repositories are root/list, root/index, root/nested
    imgs: dict[str, list[ig.Image]] = field(default_factory=dict)  # kind -> tag 1.0.0's
    sboms: dict[str, ig.Blob] = field(default_factory=dict)  # kind -> the arm64 SBOM
    subjects: dict[str, str] = field(default_factory=dict)  # kind -> the SBOM's subject

    def repo(self, kind: str) -> str:
        return f"{self.root}/{kind}"


def _images(rng: random.Random, kind: str, shared: ig.Layer) -> list[ig.Image]:
    fmt: ig.Fmt = "docker" if kind == "list" else "oci"
    return [ig.make_image(rng, p, fmt, layers=[shared, ig.make_layer(rng, 2000, fmt=fmt)])
            for p in (ig.AMD64, ig.ARM64, ig.ARM_V7)]


def _push(src: Source, kind: str, imgs: list[ig.Image], rng: random.Random,
          tags: list[str]) -> str:
    """The kind's index over `imgs` (the OCI index with an attestation; the nested one an
    index of one index) under `tags`: the digest the tags name."""
    repo = src.repo(kind)
    index = ig.make_index(imgs, "docker" if kind == "list" else "oci",
                          attestation=kind == "index", rng=rng)
    push_image(src.reg.url, repo, index, tags=[] if kind == "nested" else tags)
    if kind != "nested":
        return index.digest
    outer = ig.dump_json({"schemaVersion": 2, "mediaType": ig.OCI_INDEX,
                          "manifests": [index.manifest.descriptor()]})
    for t in tags:
        push_raw_manifest(src.reg.url, repo, t, outer, ig.OCI_INDEX)
    return ig.sha256_digest(outer)


def seed(src: Source, rng: random.Random, key: ec.EllipticCurvePrivateKey) -> None:
    """Tags 1.0.0 and 1.1.0 of each kind name one image (the list and the index signed,
    an SBOM of their arm64 manifest)."""
    for kind in KINDS:
        imgs = _images(rng, kind, ig.make_layer(rng, 3000, fmt="docker" if kind == "list"
                                                else "oci"))
        src.imgs[kind] = imgs
        digest = _push(src, kind, imgs, rng, ["1.0.0", "1.1.0"])
        if kind != "nested":
            push_signature(src.reg.url, src.repo(kind), key, digest)
            src.sboms[kind] = push_sbom(src.reg.url, src.repo(kind), imgs[1].manifest)
            src.subjects[kind] = imgs[1].digest


def move(src: Source, rng: random.Random, key: ec.EllipticCurvePrivateKey) -> None:
    """Upstream, 1.1.0 of each kind now names another image: the list's and the nested
    index's with a new amd64 image, their other platforms as they were (the list signed
    anew); the OCI index's all new."""
    for kind in KINDS:
        old = src.imgs[kind]
        fmt: ig.Fmt = "docker" if kind == "list" else "oci"
        amd64 = ig.make_image(rng, ig.AMD64, fmt, layers=[old[0].layers[0],
                                                           ig.make_layer(rng, 2500, fmt=fmt)])
        imgs = _images(rng, kind, old[0].layers[0]) if kind == "index" else [amd64, *old[1:]]
        digest = _push(src, kind, imgs, rng, ["1.1.0"])
        if kind == "list":
            push_signature(src.reg.url, src.repo(kind), key, digest)


# -- what each setting is expected to do, image by image -------------------------------------

def expected_failure(s: Setting, kind: str) -> tuple[int, str] | None:
    """(exit code, message part) for an image the sync must refuse; None when it goes in."""
    oci_source = kind != "list"
    if s.fmt == "docker" and kind == "nested":
        return UNSUPPORTED, "is a nested index; a Docker manifest list holds only image"
    if s.platforms == "sparse" and s.fmt != "keep" and (s.fmt == "oci") != oci_source:
        return USAGE, "--index sparse keeps the source index byte for byte"
    if s.fmt == "docker" and kind == "index" and s.referrers:
        return UNSUPPORTED, "is an attestation"
    if s.platforms == "sparse":  # distribution refuses an index missing children
        return REGISTRY, "HTTP 400 MANIFEST_BLOB_UNKNOWN"
    return None


# -- looking at the registries ---------------------------------------------------------------

def _repo(ref: str) -> str:
    """host/repo:tag, host/repo@digest -> repo."""
    path = ref.split("/", 1)[1]
    return path.split("@", 1)[0] if "@" in path else path.rsplit(":", 1)[0]


def _kind(repo: str) -> str:
    """smx/<setting>/list -> list"""
    return repo.rsplit("/", 1)[1]


def _sha(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


class Checker:
    """Every digest a run names, asked of the registry that must serve it."""

    def __init__(self, s: Setting, src: Source, what: str) -> None:
        self.s, self.src, self.what = s, src, what
        self.problems: list[str] = []
        self.checked = 0
        self._seen: dict[tuple[str, str, str], bytes | None] = {}

    def say(self, line: str) -> None:
        self.problems.append(f"{self.what}: {line}"[:400])

    def manifest(self, url: str, repo: str, digest: str, what: str) -> bytes | None:
        """GET by digest: the body's sha256 and Docker-Content-Digest must be the digest."""
        if (url, repo, digest) in self._seen:
            return self._seen[(url, repo, digest)]
        self.checked += 1
        body: bytes | None = None
        try:
            got, _, headers = get_manifest(url, repo, digest)
        except PushError as e:
            self.say(f"{what}: manifest {digest} not served by {url}/{repo}: {e}")
        else:
            said = headers.get("Docker-Content-Digest")
            if _sha(got) != digest or said != digest:
                self.say(f"{what}: {url}/{repo}@{digest} serves {_sha(got)} (says {said})")
            else:
                body = got
        self._seen[(url, repo, digest)] = body
        return body

    def blobs(self, url: str, repo: str, body: bytes, what: str) -> None:
        """A manifest's config and layers, each as a blob whose bytes hash to its digest;
        an index's children, each as a manifest."""
        doc = json.loads(body)
        for child in doc.get("manifests") or []:
            got = self.manifest(url, repo, child["digest"], f"{what} > child")
            if got is not None:
                self.blobs(url, repo, got, f"{what} > {child['digest'][:19]}")
        for desc in [doc.get("config") or {}, *(doc.get("layers") or [])]:
            if not desc or (url, repo, desc["digest"]) in self._seen:
                continue
            self._seen[(url, repo, desc["digest"])] = None
            self.checked += 1
            try:
                data = get_blob(url, repo, desc["digest"])
            except PushError as e:
                self.say(f"{what}: blob {desc['digest']} not served by {url}/{repo}: {e}")
                continue
            if _sha(data) != desc["digest"] or len(data) != desc["size"]:
                self.say(f"{what}: blob {url}/{repo}@{desc['digest']} serves other bytes")

    def tag(self, url: str, repo: str, tag: str, digest: str | None, what: str,
            skopeo: bool = False) -> str | None:
        """The digest the tag resolves to (GET, and skopeo's raw read when asked); a
        problem when it is not `digest` (any digest will do when None)."""
        self.checked += 1
        try:
            body, _, headers = get_manifest(url, repo, tag)
        except PushError as e:
            self.say(f"{what}: tag {url}/{repo}:{tag} does not resolve: {e}")
            return None
        got = _sha(body)
        if headers.get("Docker-Content-Digest") != got or (digest and got != digest):
            self.say(f"{what}: tag {url}/{repo}:{tag} is {got} (says "
                     f"{headers.get('Docker-Content-Digest')}), not {digest}")
        if skopeo:
            host = url.split("://", 1)[1]
            proc = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                   f"docker://{host}/{repo}:{tag}"], capture_output=True,
                                  timeout=120)
            if proc.returncode or _sha(proc.stdout) != got:
                self.say(f"{what}: skopeo reads {host}/{repo}:{tag} as "
                         f"{_sha(proc.stdout)}, not {got}: {proc.stderr[-300:]!r}")
        return got

    # -- the report's image at one target ----------------------------------------------------
    def image(self, img: dict[str, Any], url: str, place: dict[str, Any], what: str) -> None:
        repo, src_repo = place["repository"], _repo(img["reference"])
        if place["digest"] != img["digest"]:
            self.say(f"{what}: placement digest {place['digest']} is not the image's "
                     f"{img['digest']}")
        converted = set(img["conversions"].values())
        filtered_root = img["mode"] == "filter" and img["digest"] != img["source_digest"]
        named = [img["digest"], *img["manifests"], *img["platform_digests"].values(),
                 *converted]
        for d in dict.fromkeys(named):
            body = self.manifest(url, repo, d, what)
            if body is not None and d == img["digest"]:
                self.blobs(url, repo, body, what)
                self._media_type(body, what)
            if d in converted or (filtered_root and d == img["digest"]):
                continue  # made by the sync: no source serves it
            self.manifest(self.src.reg.url, src_repo, d, f"{what} (not converted: the "
                          f"source's bytes)")
        for d in [img["source_digest"], *img["source_platform_digests"].values(),
                  *img["conversions"]]:
            self.manifest(self.src.reg.url, src_repo, d, f"{what} (labelled source)")
        for p, new in img["platform_digests"].items():
            old = img["source_platform_digests"].get(p)
            if old != new and img["conversions"].get(old) != new:
                self.say(f"{what}: {p} {old} -> {new} not reported as a conversion")
        if (img["digest"] != img["source_digest"] and not filtered_root
                and img["conversions"].get(img["source_digest"]) != img["digest"]):
            self.say(f"{what}: root {img['source_digest']} -> {img['digest']} not reported")
        for t in place["tags"]:
            self.tag(url, repo, t, img["digest"], what, skopeo=True)

    def _media_type(self, body: bytes, what: str) -> None:
        doc = json.loads(body)
        want = (INDEX_TYPES if "manifests" in doc else MANIFEST_TYPES)[self.s.fmt]
        if want and doc.get("mediaType") != want:
            self.say(f"{what}: --format {self.s.fmt} left a {doc.get('mediaType')}")
        for child in doc.get("manifests") or []:
            kind = (child.get("annotations") or {}).get("vnd.docker.reference.type")
            ctype = child["mediaType"]
            want = (INDEX_TYPES if "index" in ctype or "list" in ctype
                    else MANIFEST_TYPES)[self.s.fmt]
            if want and not kind and ctype != want:
                self.say(f"{what}: --format {self.s.fmt} left a child {ctype}")

    def lock_entry(self, ref: str, entry: dict[str, Any], url: str, repo: str,
                   what: str) -> None:
        for d in [entry["digest"], *entry["manifests"], *entry["platforms"].values(),
                  *entry["conversions"].values()]:
            self.manifest(url, repo, d, what)
        for d in [entry["sourceDigest"], *entry["sourcePlatforms"].values(),
                  *entry["conversions"]]:
            self.manifest(self.src.reg.url, _repo(ref), d, f"{what} (labelled source)")


# -- one setting, start to end ---------------------------------------------------------------

@dataclass
class Outcome:
    setting: Setting
    problems: list[str] = field(default_factory=list)
    checked: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """Where a setting's syncs go: `--to` and `--map` flags, each target's URL and the
    repository each source repository lands in there."""
    to: list[str]
    flags: list[str]
    urls: dict[str, str]  # the report's target (HOST[/PREFIX]) -> the registry's URL
    lands: dict[str, dict[str, str]]  # target -> {source repository: target repository}


def plan(s: Setting, src: Source, dsts: list[Registry]) -> Plan:
    kinds = [src.repo(k) for k in KINDS]
    if s.dest == "prefix":
        to = [f"{dsts[0].host}/mx"]
        lands = {to[0]: {r: f"mx/{r}" for r in kinds}}
        return Plan(to, [], {to[0]: dsts[0].url}, lands)
    if s.dest == "map":  # every repository of the setting under mapped-<n>/, no prefix
        to = [dsts[0].host]
        rule = f"{src.reg.host}/{src.root}/*=mapped-{s.name}/*"
        lands = {to[0]: {r: f"mapped-{s.name}/{_kind(r)}" for r in kinds}}
        return Plan(to, ["--map", rule], {to[0]: dsts[0].url}, lands)
    if s.dest == "own":  # the source's registry, under a prefix: blobs mounted
        to = [f"{src.reg.host}/own-{s.name}"]
        lands = {to[0]: {r: f"own-{s.name}/{r}" for r in kinds}}
        return Plan(to, [], {to[0]: src.reg.url}, lands)
    # two at once: the source's own registry (mounts) and another, without a prefix
    to = [f"{src.reg.host}/two-{s.name}", dsts[0].host]
    lands = {to[0]: {r: f"two-{s.name}/{r}" for r in kinds}, to[1]: {r: r for r in kinds}}
    return Plan(to, [], {to[0]: src.reg.url, to[1]: dsts[0].url}, lands)


def images_args(s: Setting, src: Source, work: Path) -> list[object]:
    if not s.rule:  # references: each kind's 1.1.0, and the list's 1.0.0 beside it
        return [f"{src.reg.host}/{src.repo(k)}:1.1.0" for k in KINDS] + \
            [f"{src.reg.host}/{src.repo('list')}:1.0.0"]
    rule = '{semver: ">=1.0.0"}' if s.n % 2 == 0 else "{latest: 1}"
    cfg = work / "images.yaml"
    cfg.write_text("version: 1\nimages:\n" + "".join(
        f"  - repository: {src.reg.host}/{src.repo(k)}\n    tags: [{rule}]\n" for k in KINDS))
    return ["-f", cfg]


def sync(s: Setting, src: Source, p: Plan, work: Path, name: str
         ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    report = work / f"{name}.json"
    to = [a for t in p.to for a in ("--to", t)]
    cache = ["--cache", work / "cache"] if s.cache else []
    proc = run_mirror("sync", *images_args(s, src, work), *to, *p.flags, *cache, "-q",
                      "--lock-file", work / "images.lock", "--report", report, *s.flags())
    return proc, json.loads(report.read_text())


def expect_exit(s: Setting, proc: subprocess.CompletedProcess[str], report: dict[str, Any],
                chk: Checker) -> None:
    """Each image fails as designed (or not at all), and the run exits as that says."""
    failures = 0
    refused = []  # at the targets: each alone
    for img in report["images"]:
        want = expected_failure(s, _kind(_repo(img["reference"])))
        if want is None and img["error"]:
            chk.say(f"{img['reference']}: failed: {img['error_code']} {img['error']}")
        elif want is not None:
            failures += 1
            code, part = want
            if img["error_code"] != code or part not in (img["error"] or ""):
                chk.say(f"{img['reference']}: expected exit {code} ({part!r}), got "
                        f"{img['error_code']}: {img['error']}")
            if code == REGISTRY:
                refused.append(img["reference"])
                if "sparse index" not in (img["hint"] or ""):
                    chk.say(f"{img['reference']}: the hint does not name the sparse index: "
                            f"{img['hint']}")
    for t in report["targets"]:
        if [f["source"] for f in t["failed"]] != refused:
            chk.say(f"{t['target']} failed {t['failed']}, not the images refused {refused}")
    if s.platforms == "sparse":
        chk.checked += len(report["images"])
        for t in report["targets"]:
            if t["placement"]:
                chk.say(f"a sparse index's target holds {t['placement']}")
    code = PARTIAL if failures else 0
    if proc.returncode != code or report["exit_code"] != code:
        chk.say(f"sync exited {proc.returncode} (report {report['exit_code']}), expected "
                f"{code}: {proc.stderr[-1500:]}")


def check_run(s: Setting, src: Source, p: Plan, report: dict[str, Any], lock: dict[str, Any],
              chk: Checker) -> None:
    """Every digest the report and the lock file name, at every target holding it."""
    if [t["target"] for t in report["targets"]] != p.to:
        chk.say(f"targets {[t['target'] for t in report['targets']]}, not {p.to}")
        return
    ok = [img for img in report["images"] if not img["error"]]
    for t in report["targets"]:
        url, lands = p.urls[t["target"]], p.lands[t["target"]]
        places = {pl["source"]: pl for pl in t["placement"]}
        if set(places) != {img["reference"] for img in ok}:
            chk.say(f"{t['target']} places {sorted(places)}, the images synced are "
                    f"{sorted(img['reference'] for img in ok)}")
        for img in ok:
            place = places.get(img["reference"])
            if place is None:
                continue
            want = lands[_repo(img["reference"])]
            if place["repository"] != want:
                chk.say(f"{img['reference']} lands in {place['repository']}, not {want}")
            chk.image(img, url, place, f"report {img['reference']} at {t['target']}")
            entry = lock["images"].get(img["reference"])
            if entry is None:
                chk.say(f"lock file: no entry for {img['reference']}")
            else:
                chk.lock_entry(img["reference"], entry, url, place["repository"],
                               f"lock {img['reference']} at {t['target']}")
        check_referrers(s, src, report, t, url, lands, chk)
        placed = {f"{t['target'].split('/', 1)[0]}/{pl['repository']}:{tag}"
                  for pl in t["placement"] for tag in pl["tags"]}
        for ref in t["tags"]:
            if ref not in placed and not ref.endswith(".sig"):
                chk.say(f"{t['target']} was given {ref}, which no placement names")
    for img in ok:  # what the source's tag names now: the moved tag seen
        path = img["reference"].split("/", 1)[1]
        if "@" not in path:
            repo, tag = path.rsplit(":", 1)
            chk.tag(src.reg.url, repo, tag, img["source_digest"], f"source {path}")


def check_referrers(s: Setting, src: Source, report: dict[str, Any], t: dict[str, Any],
                    url: str, lands: dict[str, str], chk: Checker) -> None:
    """The cosign tags and SBOMs are at the target exactly when referrers are carried:
    each signature tag the target has names the source's signature (never converted), each
    SBOM is served as the source's bytes and listed in its subject's fallback index."""
    sigs = [r for r in t["tags"] if r.endswith(".sig")]
    if sigs and not s.referrers:
        chk.say(f"--no-referrers, yet {t['target']} was given {sigs}")
    for ref in sigs:
        repo, tag = ref.split("/", 1)[1].rsplit(":", 1)
        source = next((k for k, v in lands.items() if v == repo), None)
        if source is None:
            chk.say(f"signature tag {ref} in a repository no image landed in")
            continue
        want = chk.tag(src.reg.url, source, tag, None, f"source signature {tag}")
        chk.tag(url, repo, tag, want, f"signature {ref}")
    for kind, sbom in src.sboms.items():
        carried = [img for img in report["images"] if not img["error"]
                   and _repo(img["reference"]) == src.repo(kind)
                   and src.subjects[kind] in img["source_platform_digests"].values()]
        if not carried:
            continue
        repo = lands[src.repo(kind)]
        if s.referrers:
            chk.manifest(url, repo, sbom.digest, f"SBOM of {kind} at {t['target']}")
            try:
                index, _, _ = get_manifest(url, repo, fallback_tag(src.subjects[kind]))
            except PushError as e:
                chk.say(f"SBOM of {kind}: no fallback index at {t['target']}: {e}")
                continue
            if sbom.digest not in [m["digest"] for m in json.loads(index)["manifests"]]:
                chk.say(f"SBOM of {kind}: the fallback index at {t['target']} leaves it out")
        else:
            try:
                get_manifest(url, repo, sbom.digest)
            except PushError:
                continue
            chk.say(f"--no-referrers, yet {t['target']} serves the SBOM of {kind}")


def check_rerun(s: Setting, src: Source, p: Plan, report: dict[str, Any],
                chk: Checker) -> None:
    """A rerun with nothing new (README: a rerun of a sync with nothing new asks the target
    one manifest HEAD per image and tag (and the referrers' questions) and one per manifest
    below an index it did not read there (through --cache, each), no blob HEAD, and
    pushes nothing; the source little more than each tag: no blob, and through --cache no
    manifest but the referrers' questions: `source_asked`)."""
    requests = report["requests"]
    tags = 0
    for t in report["targets"]:
        pushed = {k: t[k] for k in ("blobs_pushed", "blobs_mounted", "bytes_pushed",
                                    "manifests_pushed")}
        if any(pushed.values()):
            chk.say(f"rerun pushed to {t['target']}: {pushed}")
        tags = sum(len(pl["tags"]) for pl in t["placement"])
        asked = requests.get(t["target"].split("/", 1)[0], {})
        for kind in ("manifest PUT", "upload", "blob HEAD"):
            if asked.get(kind):
                chk.say(f"rerun asked {t['target']} {asked[kind]} {kind}: {asked}")
        target_heads(s, src, report, t, tags, chk)
    asked = requests.get(src.reg.host, {})
    if asked.get("blob GET"):
        chk.say(f"rerun read {asked['blob GET']} blob(s) from the source: {asked}")
    if s.referrers:  # the referrers' questions, of source and target
        return
    if s.cache:  # every manifest in the cache's store: none read, of the targets either
        for host in {src.reg.host, *(t["target"].split("/", 1)[0] for t in report["targets"])}:
            if requests.get(host, {}).get("manifest GET"):
                chk.say(f"rerun through --cache read manifests from {host}: {requests}")
    if s.dest not in ("own", "two"):  # there the source's requests and a target's are one
        source_asked(s, asked, tags, report["images"], chk)


def source_asked(s: Setting, asked: dict[str, int], tags: int, images: list[dict[str, Any]],
                 chk: Checker) -> None:
    """A rerun's manifest requests of the source (no referrer carried, no target on its
    registry): through --cache a HEAD per tag; without it, of images carried as they are
    (but for the attestations --no-referrers leaves behind), a HEAD per tag too, the
    target's copy of the root taken, and the GET of a tag whose index is pushed filtered of
    its attestations (another digest at the target)."""
    if s.cache:
        if asked.get("manifest HEAD") != tags:
            chk.say(f"rerun through --cache asked the source more than a HEAD per tag "
                    f"({tags}): {asked}")
        return
    filtered = sum(1 for e in images if e["mode"] == "filter")
    if s.fmt == "keep" and s.platforms == "all" and \
            (asked.get("manifest HEAD") != tags or asked.get("manifest GET", 0) != filtered):
        chk.say(f"rerun asked the source more than a HEAD per tag ({tags}) and a GET per "
                f"tag filtered of its attestations ({filtered}): {asked}")


def target_heads(s: Setting, src: Source, report: dict[str, Any], t: dict[str, Any],
                 tags: int, chk: Checker) -> None:
    """A rerun's manifest HEADs at target `t`: one per tag at least; where no referrer is
    carried and the target is not the source's registry (whose requests are the source's
    too), one per image and one per manifest below an index it did not read there: each
    through --cache, none without it of an image carried as it is or filtered (read there
    as it resolved), with one target (of two, the first that holds it is read)."""
    asked = report["requests"].get(t["target"].split("/", 1)[0], {})
    heads, images, below = asked.get("manifest HEAD", 0), len(report["images"]), \
        _below(report, t)
    if heads < tags:
        chk.say(f"rerun asked {t['target']} fewer manifest HEADs than its {tags} "
                f"tags: {asked}")
    elif s.referrers or t["target"].split("/", 1)[0] == src.reg.host:
        return
    elif not images <= heads <= images + below:
        chk.say(f"rerun asked {t['target']} {heads} manifest HEADs, not one per image "
                f"({images}) and at most one per manifest below ({below}): {asked}")
    elif s.cache and heads != images + below:  # the target's manifests never read
        chk.say(f"rerun through --cache asked {t['target']} {heads} manifest HEADs, not "
                f"one per image ({images}) and per manifest below ({below}): {asked}")
    elif not s.cache and s.fmt == "keep" and s.dest != "two" and heads != images:
        chk.say(f"rerun asked {t['target']} {heads} manifest HEADs, not one per image "
                f"({images}): the manifests below were read there: {asked}")


def _below(report: dict[str, Any], target: dict[str, Any]) -> int:
    """The manifests below the roots of the images `target` holds, one per repository: a
    rerun's step 0 asks each there (a HEAD) where it did not read it there as the image
    resolved (README)."""
    where = {pl["source"]: pl["repository"] for pl in target["placement"]}
    return len({(where[img["reference"]], d) for img in report["images"]
                if img["reference"] in where for d in img["manifests"] if d != img["digest"]})


def mounted(report: dict[str, Any], chk: Checker) -> None:
    """A target on the source's own registry gets every blob it lacks mounted from the
    source repository: none uploaded."""
    done = report["targets"][0]
    if done["blobs_pushed"] or done["bytes_pushed"] or not done["blobs_mounted"]:
        chk.say(f"within the source's registry blobs were uploaded, not mounted: {done}")


def cached(work: Path) -> set[str]:
    """The blobs in a setting's cache."""
    where = work / "cache" / "blobs" / "sha256"
    return {p.name for p in where.iterdir()} if where.is_dir() else set()


def run_setting(s: Setting, src: Source, work: Path, key: ec.EllipticCurvePrivateKey
                ) -> Outcome:
    out = Outcome(s)
    work.mkdir(parents=True)
    dsts = [Registry().start() for _ in range(0 if s.dest == "own" else 1)]
    try:
        p = plan(s, src, dsts)
        runs = ("cold", "rerun", "moved") if s.platforms != "sparse" else ("cold",)
        for name in runs:
            if name == "moved":
                move(src, random.Random(f"{s.id} moved"), key)
            chk = Checker(s, src, f"{s.id} {name}")
            before = cached(work)
            proc, report = sync(s, src, p, work, name)
            expect_exit(s, proc, report, chk)
            if s.cache:  # each blob fetched once, into the cache, pushed from there
                got = report["requests"].get(src.reg.host, {}).get("blob GET", 0)
                if got != len(cached(work) - before):
                    chk.say(f"{got} blob GETs at the source for "
                            f"{len(cached(work) - before)} blobs new in the cache")
            if s.platforms != "sparse":
                lock = json.loads((work / "images.lock").read_text())
                check_run(s, src, p, report, lock, chk)
                if s.dest in ("own", "two") and name != "rerun":
                    mounted(report, chk)
                if name == "rerun":
                    check_rerun(s, src, p, report, chk)
                out.notes.append(f"{name}: {report['requests']}")
            out.problems += chk.problems
            out.checked += chk.checked
    finally:
        for d in dsts:
            d.stop()
    return out


def start(s: Setting, reg: Registry, key: ec.EllipticCurvePrivateKey, root: Path) -> Outcome:
    src = Source(reg, f"smx/{s.name}")
    seed(src, random.Random(s.id), key)
    return run_setting(s, src, root / s.id, key)


@pytest.fixture(scope="module")
def outcomes(src_registry: Registry, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("sync-matrix")
    key = ec.generate_private_key(ec.SECP256R1())
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = pool.map(lambda s: start(s, src_registry, key, root), SETTINGS)
        return {o.setting.id: o for o in done}


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.id)
def test_every_digest_a_sync_names_is_served_by_its_target(
        outcomes: dict[str, Outcome], setting: Setting) -> None:
    out = outcomes[setting.id]
    assert not out.problems, "\n".join([*out.problems, "requests:", *out.notes])
    assert out.checked > 0
