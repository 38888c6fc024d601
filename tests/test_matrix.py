"""The pull/load matrix: every digest a run names is one the loaded registry serves.

For every combination of `--format keep|oci|docker`, platforms (all; a subset as a filtered
index; a subset as a sparse index) and referrers (carried; `--no-referrers`), two sources (a
Docker manifest list and an OCI index, three platforms sharing a layer, each with a cosign
signature tag and an OCI 1.1 SBOM with `subject`; the OCI index also with a BuildKit
attestation) are pulled into a plain bundle (tag 1) and an incremental one (`--base`, after a
tag 2 with a new layer was pushed), loaded in order, and then every digest named by the pull
reports, the lock files and `mirror inspect --json` must be served by the target (a manifest
as a manifest, a config or layer as a blob, in the image's own repository) unless it is
labelled as a source digest (then the source must serve it), and every tag in the bundle must
resolve at the target to the digest the bundle gives it.

What cannot work by design is asserted to fail with its exit code and message: a sparse
index refused by the registry (distribution's default), a sparse index that a conversion
would have to change (exit 2), `--format docker` with a BuildKit attestation (exit 9). Pulls
use `--keep-going`, so the other image still goes through (exit 13).

Each pair of bundles is loaded twice, without a prefix and with one. The container (`.tar` /
`.tar.zst`) and the base (the previous bundle / its lock file) vary across the 18 pull
settings, so that each format meets each pair of values (not the full product: four times
the pulls). The settings run three at a time; each has its own cache and its own target
registry. The whole matrix takes about two minutes on two busy cores.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import imagegen as ig
from tests.support.oracle import check_layout, error_line, run_mirror
from tests.support.pusher import PushError, blob_exists, get_manifest, push_image
from tests.support.referrers import push_sbom, push_signature
from tests.support.registry import Registry

pytestmark = pytest.mark.slow  # the whole pull/load matrix: minutes

FORMATS = ("keep", "oci", "docker")
PLATFORMS = ("all", "filter", "sparse")
SUBSET = "linux/amd64,linux/arm64"
PARTIAL, USAGE, REGISTRY, UNSUPPORTED = 13, 2, 3, 9


@dataclass(frozen=True)
class Setting:
    fmt: str
    platforms: str
    referrers: bool
    n: int  # its place in the matrix: picks the container, the prefix and the base

    @property
    def id(self) -> str:
        return f"{self.fmt}-{self.platforms}-{'refs' if self.referrers else 'norefs'}"

    @property
    def zst(self) -> bool:  # not n % 2: that would tie .tar.zst to referrers
        return (self.n + self.n // 2) % 2 == 0

    @property
    def base_is_lock(self) -> bool:
        return bool(self.n // 2 % 2)

    def flags(self) -> list[str]:
        out = ["--format", self.fmt, "--keep-going"]
        if self.platforms != "all":
            out += ["--platform", SUBSET, "--index", self.platforms]
        return out + ([] if self.referrers else ["--no-referrers"])


SETTINGS = [Setting(f, p, r, n) for n, (f, p, r) in
            enumerate(itertools.product(FORMATS, PLATFORMS, (True, False)))]


@dataclass
class Source:
    reg: Registry
    docker: str  # repository of the Docker manifest list
    oci: str  # repository of the OCI index (with an in-index attestation)

    def refs(self, *tags: str) -> list[str]:
        return [f"{self.reg.host}/{repo}:{t}" for repo in (self.docker, self.oci) for t in tags]


def _seed_one(reg: Registry, repo: str, rng: random.Random, key, fmt: ig.Fmt,
              own: int = 2000) -> None:
    """Tag 1: three platforms sharing a layer, signed (cosign tag on the index), an SBOM of
    the arm64 manifest; tag 2: amd64 gains a new layer, the rest unchanged. Each platform's
    own layer holds `own` random bytes."""
    shared = ig.make_layer(rng, 3000, fmt=fmt)
    imgs = [ig.make_image(rng, p, fmt, layers=[shared, ig.make_layer(rng, own, fmt=fmt)])
            for p in (ig.AMD64, ig.ARM64, ig.ARM_V7)]
    attest = fmt == "oci"
    one = ig.make_index(imgs, fmt, attestation=attest, rng=rng)
    push_image(reg.url, repo, one, ["1"])
    push_signature(reg.url, repo, key, one.digest)
    push_sbom(reg.url, repo, imgs[1].manifest)
    newer = ig.make_image(rng, ig.AMD64, fmt, layers=[shared, ig.make_layer(rng, own, fmt=fmt)])
    push_image(reg.url, repo, ig.make_index([newer, *imgs[1:]], fmt, attestation=attest,
                                            rng=rng), ["2"])


def seed_source(reg: Registry, name: str, own: int = 2000) -> Source:
    """NAME/list-TAG and NAME/index-TAG, each as _seed_one pushes them."""
    rng = random.Random(name)
    key = ec.generate_private_key(ec.SECP256R1())
    tag = f"{rng.getrandbits(32):08x}"
    src = Source(reg, f"{name}/list-{tag}", f"{name}/index-{tag}")
    _seed_one(reg, src.docker, rng, key, "docker", own)
    _seed_one(reg, src.oci, rng, key, "oci", own)
    return src


@pytest.fixture(scope="module")
def source(src_registry: Registry) -> Source:
    return seed_source(src_registry, "matrix")


# -- what each setting is expected to do, image by image -----------------------------------

def expected_failure(s: Setting, oci_source: bool) -> tuple[int, str] | None:
    """(exit code, message part) for an image the pull must refuse; None when it goes in."""
    if s.platforms == "sparse" and s.fmt != "keep" and (s.fmt == "oci") != oci_source:
        return USAGE, "--index sparse keeps the source index byte for byte"
    if s.fmt == "docker" and oci_source and s.referrers:
        return UNSUPPORTED, "is an attestation"
    return None


# -- looking at the target --------------------------------------------------------------------

def _repo(ref: str) -> str:
    """host/repo:tag, host/repo@digest -> repo."""
    path = ref.split("/", 1)[1]
    return path.split("@", 1)[0] if "@" in path else path.rsplit(":", 1)[0]


def served(blob: dict[str, Any]) -> bool:
    """Whether the target serves a blob inspect shows: not when the bundle leaves it out on
    purpose (a skipped foreign layer, a sparse index's other platforms); yes when it is left
    to the base of an incremental bundle, loaded before it."""
    return blob.get("absent") in (None, "base")


class Checker:
    """Collects every digest a run names and whether the registry that must serve it does."""

    def __init__(self, src: Registry, dst: Registry, prefix: str) -> None:
        self.src, self.dst, self.prefix = src, dst, prefix
        self.problems: list[str] = []
        self.checked = 0
        self._seen: set[tuple[str, str, str, str]] = set()

    def at(self, repo: str) -> str:
        return f"{self.prefix}/{repo}" if self.prefix else repo

    def manifest(self, repo: str, digest: str, what: str, *, source: bool = False) -> None:
        reg, path = (self.src, repo) if source else (self.dst, self.at(repo))
        if (reg.url, path, digest, "m") in self._seen:
            return
        self._seen.add((reg.url, path, digest, "m"))
        self.checked += 1
        try:
            body, _, _ = get_manifest(reg.url, path, digest)
        except PushError as e:
            self.problems.append(f"{what}: manifest {digest} not served by "
                                 f"{'source' if source else 'target'} {path}: {e}"[:300])
            return
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            self.problems.append(f"{what}: {path}@{digest} serves other bytes")

    def blob(self, repo: str, digest: str, what: str) -> None:
        path = self.at(repo)
        if (self.dst.url, path, digest, "b") in self._seen:
            return
        self._seen.add((self.dst.url, path, digest, "b"))
        self.checked += 1
        if not blob_exists(self.dst.url, path, digest):
            self.problems.append(f"{what}: blob {digest} not served by target {path}")

    def tag(self, repo: str, tag: str, digest: str, what: str) -> None:
        self.checked += 1
        try:
            body, _, _ = get_manifest(self.dst.url, self.at(repo), tag)
        except PushError as e:
            self.problems.append(f"{what}: tag {self.at(repo)}:{tag} does not resolve: {e}"[:300])
            return
        got = "sha256:" + hashlib.sha256(body).hexdigest()
        if got != digest:
            self.problems.append(f"{what}: tag {self.at(repo)}:{tag} is {got}, not {digest}")

    def report_image(self, img: dict[str, Any], what: str) -> None:
        """A pull report's image, or a lock file's entry (its own key names)."""
        repo = _repo(img["reference"])
        report = "platform_digests" in img
        platforms = img["platform_digests" if report else "platforms"]
        named = [img["digest"], *img["manifests"], *platforms.values(),
                 *img["conversions"].values()]
        for d in named:
            self.manifest(repo, d, what)
        sources = [img["source_digest" if report else "sourceDigest"],
                   *img["source_platform_digests" if report else "sourcePlatforms"].values(),
                   *img["conversions"]]
        for d in sources:
            self.manifest(repo, d, f"{what} (labelled source)", source=True)

    def inspected(self, doc: dict[str, Any], repo: str, what: str) -> None:
        """One `mirror inspect --json` document (or a manifest inside it), recursively."""
        self.manifest(repo, doc["digest"], what)
        for key in ("referrerOf", "attestationFor"):
            if doc.get(key):
                self.manifest(repo, doc[key], f"{what} {key}")
        for key in ("sourceDigest", "convertedFrom", "referrerOfSource"):
            if doc.get(key):
                self.manifest(repo, doc[key], f"{what} {key} (labelled source)", source=True)
        if doc.get("config") and served(doc["config"]):
            self.blob(repo, doc["config"]["digest"], f"{what} config")
        for layer in doc.get("layers") or []:
            if served(layer):
                self.blob(repo, layer["digest"], f"{what} layer")
        for m in doc.get("manifests") or []:
            if not m.get("absent"):
                self.inspected(m, repo, f"{what} > {m.get('platform')}")


# -- one setting, start to end -------------------------------------------------------------

@dataclass
class Outcome:
    setting: Setting
    problems: list[str] = field(default_factory=list)
    checked: int = 0


def _pull(s: Setting, src: Source, work: Path, name: str, tags: tuple[str, ...],
          *extra: object) -> tuple[Path, dict[str, Any], Any]:
    cfg = work / f"{name}.yaml"
    cfg.write_text("version: 1\nimages:\n" + "".join(f"  - {r}\n" for r in src.refs(*tags)))
    bundle = work / f"{name}.tar{'.zst' if s.zst else ''}"
    proc = run_mirror("pull", "-f", cfg, "-o", bundle, "--cache", work / "cache", "-q",
                      "--report", work / f"{name}.json", *s.flags(), *extra)
    return bundle, json.loads((work / f"{name}.json").read_text()), proc


def _expect_pull(s: Setting, proc: Any, report: dict[str, Any], out: Outcome) -> None:
    failures = 0
    for img in report["images"]:
        want = expected_failure(s, "/index-" in img["reference"])
        if want is None and img["error"]:
            out.problems.append(f"{img['reference']}: failed: {img['error']}")
        elif want is not None:
            failures += 1
            code, part = want
            if img["error_code"] != code or part not in (img["error"] or ""):
                out.problems.append(f"{img['reference']}: expected exit {code} ({part!r}), "
                                    f"got {img['error_code']}: {img['error']}")
    code = PARTIAL if failures else 0
    if proc.returncode != code:
        out.problems.append(f"pull exited {proc.returncode}, expected {code}: {proc.stderr}")


def _check(chk: Checker, bundle: Path, report: dict[str, Any], lock: dict[str, Any],
           name: str) -> None:
    inspect = run_mirror("inspect", bundle, "--json")
    if inspect.returncode:
        chk.problems.append(f"inspect {name}: exit {inspect.returncode}: {inspect.stderr}")
        return
    blob_repo: dict[str, str] = {}
    for doc in json.loads(inspect.stdout):
        ref, repo = doc["reference"], _repo(doc["reference"])
        chk.inspected(doc, repo, f"inspect {name} {ref}")
        tail = ref.split("/", 1)[1]
        if "@" not in tail:
            chk.tag(repo, tail.rsplit(":", 1)[1], doc["digest"], f"inspect {name}")
        for m in [doc, *(doc.get("manifests") or [])]:
            for b in [m.get("config") or {}, *(m.get("layers") or [])]:
                if b and served(b):
                    blob_repo.setdefault(b["digest"], repo)
    for img in report["images"]:
        if not img["error"]:
            chk.report_image(img, f"report {name} {img['reference']}")
    for ref, entry in lock["images"].items():
        chk.report_image({"reference": ref, **entry}, f"lock {name} {ref}")
    for digest in lock["blobs"]:
        if digest not in blob_repo:
            chk.problems.append(f"lock {name}: blob {digest} belongs to no image inspect shows")
        else:
            chk.blob(blob_repo[digest], digest, f"lock {name} blob")


def run_setting(s: Setting, src: Source, work: Path) -> Outcome:
    out = Outcome(s)
    work.mkdir(parents=True)
    b1, r1, p1 = _pull(s, src, work, "one", ("1",), "--lock-file", work / "one.lock")
    _expect_pull(s, p1, r1, out)
    check_layout(b1)
    base = work / "one.lock" if s.base_is_lock else b1
    b2, r2, p2 = _pull(s, src, work, "two", ("1", "2"), "--lock-file", work / "two.lock",
                       "--base", base)
    _expect_pull(s, p2, r2, out)
    check_layout(b2)
    with Registry() as dst:
        for prefix in ("", "mx"):  # HOST/<source path>, HOST/mx/<source path>
            chk = Checker(src.reg, dst, prefix)
            to = f"{dst.host}/{prefix}" if prefix else dst.host
            for bundle, report, lock in ((b1, r1, "one.lock"), (b2, r2, "two.lock")):
                load = run_mirror("load", bundle, "--to", to, "-q", "--retries", "0")
                what = f"load {bundle.name} --to {to}"
                if s.platforms == "sparse":  # distribution refuses an index missing children
                    if load.returncode != REGISTRY or "sparse index" not in load.stderr:
                        out.problems.append(f"{what}: expected exit 3 (sparse index), got "
                                            f"{load.returncode}: {load.stderr}")
                    else:
                        error_line(load)
                    continue
                if load.returncode:
                    out.problems.append(f"{what}: exit {load.returncode}: {load.stderr}")
                    continue
                _check(chk, bundle, report, json.loads((work / lock).read_text()),
                       f"{bundle.name} at {to}")
            out.problems += chk.problems
            out.checked += chk.checked
    return out


def run_settings(settings: list[Any], run: Callable[[Any, Source, Path], Any], src: Source,
                 root: Path) -> dict[str, Any]:
    """`run(setting, src, root / setting.id)` for each setting, three at a time: the outcomes
    by setting id."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = pool.map(lambda s: run(s, src, root / s.id), settings)
        return {o.setting.id: o for o in done}


@pytest.fixture(scope="module")
def outcomes(source: Source, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    return run_settings(SETTINGS, run_setting, source, tmp_path_factory.mktemp("matrix"))


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.id)
def test_every_named_digest_is_served(outcomes: dict[str, Outcome], setting: Setting) -> None:
    out = outcomes[setting.id]
    assert not out.problems, "\n".join(out.problems)
    assert out.checked > 0 or setting.platforms == "sparse"
