#!/usr/bin/env python3
"""Benchmark `mirror` against skopeo and against the machine's own limit (issue 6).

    scripts/bench.py                      full run (data sets A and B, about 2.5 GiB)
    scripts/bench.py --scale 0.01         smoke run: every layer at 1% of its size
    scripts/bench.py --only B --repeat 3  one data set, median of three runs
    scripts/bench.py --only S --scale 0.25
                                          the scale set (run only when asked): 0.25 x 400
                                          references; --scale 5 for the issue's 2,000
    scripts/bench.py --json out.json      also write every measurement as JSON
    scripts/bench.py --profile DIR        then one more cold `mirror pull` per data set under
                                          cProfile (DIR/pull-A.prof, DIR/pull-B.prof; untimed)

Starts its own registries (Debian `docker-registry`, via tests/support/registry.py), seeds them
with tests/support/pusher.py, and runs, for each data set, side by side:

  limit   `curl -o` of every unique blob the pull needs (one curl, one connection), then
          `openssl dgst -sha256` of those files; the limit is the larger of the two (download
          and hashing perfectly overlapped), the sum (no overlap) is shown too
  pull    `skopeo copy --all` per image into one `oci:` layout (blobs shared between images),
          or `--override-arch` for a one-platform pull, vs one `mirror pull` of every image
  warm    the same `mirror pull` again (same -o) with the cache the first one filled, the
          issue's "warm-cache rerun"; then once more into a new output file (informative: what
          writing the bundle from the cache costs)
  load    `skopeo copy --all oci-archive:IMAGE.tar docker://...` per image, summed, vs one
          `mirror load` of the bundle the cold pull wrote; each into a fresh registry
  sync    registry to registry, no bundle: one `skopeo sync --src yaml` of every image (`--all`,
          or `--override-arch` for a one-platform sync) vs one `mirror sync` (no cache: blobs
          stream from the source into the target); each into a fresh registry
  serve   the bundle's largest blob read from the file (`dd` at its offset: the limit), vs
          `curl` of it from `mirror serve BUNDLE` and from `docker-registry` after a `mirror
          load` of the same bundle; then 1000 small requests (every manifest and config of the
          bundle by digest, over and over) with one `curl -K`, from each (issue 17)

Data set A: 20 images x 3 platforms (linux/amd64, linux/arm64/v8, linux/arm/v7), OCI indexes;
per platform two base layers shared by every image and one of four "runtime" layers shared by
a group of five images, plus three layers of each image's own: about 1.3 GiB of unique blobs.
Data set B: one OCI index, linux/amd64 with one 1 GiB layer (and a 1 MiB linux/arm64/v8
sibling the one-platform pull leaves out).
Data set S (issue 18; only with --only S, whose --scale scales the number of repositories):
50 repositories x 8 tags (1.0.0 ... 1.7.0) = 400 two-platform references (amd64, arm64/v8;
OCI indexes and Docker lists, half each), every image on two base layers shared by all
(256 + 64 KiB per platform), one 128 KiB layer per repository and one of its own (4-32 KiB).
Rows: `skopeo sync --all --src yaml --dest dir` of every reference vs one `mirror pull`,
each cold and then again with nothing new (skopeo refuses to write over its directories and
keeps no cache: its rerun is a new directory); then the same for one repository in five
(80 references) through tests/support/faultproxy.py holding every request 50 ms (one round
trip per request; no `tc netem` here: the kernel has no sch_netem), mirror at -j 4 and -j 16.
The loopback rerun, Python's start-up and the rerun's requests alone are each timed
S_RERUNS (5) times in a repetition, their median kept: each takes half a second, and their
targets are a tenth of that. Every row counts the requests the registry answered, by kind,
from its access log; a mirror run whose report counts otherwise stops the benchmark. Layers are tars of random bytes wrapped in gzip
level 0 (stored blocks), so they are incompressible and seeding stays fast; everything derives
from fixed seeds, so every run sees the same digests.

Every command is timed as a whole with `/usr/bin/time -f '%e %U %S %M'` (wall, user and
system CPU seconds, peak RSS in KiB; for several commands, walls and CPU are summed and the
largest RSS kept). MB/s is the data set's unique blob bytes (10^6 bytes) per wall second, for
every row. The targets are those of issue 6; a FAIL does not change the exit status (1 means a
command failed or a data check went wrong, 2 a usage error).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import pstats
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mirror.registry.ratelimit import request_kind  # noqa: E402
from tests.support.faultproxy import Fault, FaultProxy  # noqa: E402
from tests.support.imagegen import (  # noqa: E402
    AMD64,
    ARM64_V8,
    ARM_V7,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    Blob,
    Fmt,
    Image,
    Index,
    Layer,
    dump_json,
    make_image,
    make_index,
    sha256_digest,
)
from tests.support.pusher import push_blob, push_image  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
TIME = "/usr/bin/time"
TAG = "v1"
MIN_LAYER = 512  # payload bytes of the smallest layer, whatever the scale
_FIXED_MTIME = 1704067200

# issue 6 targets
T_PULL_A_SKOPEO = 0.4
T_PULL_LIMIT = 2.0
T_RSS_MIB = 64
T_WARM = 0.1
T_LOAD_A_SKOPEO = 0.6
# issue 18 targets (data set S)
T_S_SKOPEO = 0.3
T_S_WARM_ABOVE = 0.5  # seconds above Python's start-up


class BenchError(RuntimeError):
    """A command failed or a result did not check out: the benchmark itself is broken."""


# -- data sets ----------------------------------------------------------------------------------
class _Layer(Layer):
    """A Layer that hashes its (large) bytes once."""

    @cached_property
    def digest(self) -> str:  # type: ignore[override]
        return sha256_digest(self.data)


def _random_bytes(rng: random.Random, n: int) -> bytearray:
    out = bytearray()
    while len(out) < n:  # Random.randbytes overflows above 256 MiB at once
        out += rng.randbytes(min(8 * MiB, n - len(out)))
    return out


def make_big_layer(rng: random.Random, size: int) -> _Layer:
    """A tar holding one file of `size` random bytes, in gzip level 0 (stored, incompressible)."""
    info = tarfile.TarInfo(f"data/blob-{rng.getrandbits(32):08x}.bin")
    info.size, info.mtime, info.mode = size, _FIXED_MTIME, 0o644
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    raw = b"".join([header, _random_bytes(rng, size), b"\0" * ((512 - size % 512) % 512),
                    b"\0" * 1024])
    diff_id = sha256_digest(raw)
    return _Layer(gzip.compress(raw, compresslevel=0, mtime=0), OCI_LAYER_GZIP, diff_id)


@dataclass
class DataSet:
    name: str
    description: str
    images: list[tuple[str, str, Index]]  # (repository, tag, what is pushed as that tag)
    platform: str | None  # None: every platform (skopeo --all); else the one to pull
    pulled: dict[str, tuple[str, int]]  # unique blobs a pull needs: digest -> (repo, size)
    archives: list[tuple[str, Image | Index]]  # what skopeo loads, per image
    issue: int = 6  # whose targets the checks are

    @property
    def repos(self) -> int:
        return len({repo for repo, _, _ in self.images})

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.pulled.values())

    def refs(self, host: str) -> list[str]:
        return [f"{host}/{repo}:{tag}" for repo, tag, _ in self.images]


def _scaled(n: int, scale: float) -> int:
    return max(MIN_LAYER, int(n * scale))


def dataset_a(scale: float) -> DataSet:
    rng = random.Random("mirror-bench-A-v1")
    plats = [AMD64, ARM64_V8, ARM_V7]
    base = [[make_big_layer(rng, _scaled(s, scale)) for s in (24 * MiB, 8 * MiB)]
            for _ in plats]
    runtime = [[make_big_layer(rng, _scaled(12 * MiB, scale)) for _ in plats] for _ in range(4)]
    images: list[tuple[str, str, Index]] = []
    for i in range(20):
        per_platform = []
        for p, plat in enumerate(plats):
            sizes = (rng.randint(8 * MiB, 24 * MiB), rng.randint(1 * MiB, 4 * MiB),
                     rng.randint(4 * KiB, 64 * KiB))
            own = [make_big_layer(rng, _scaled(s, scale)) for s in sizes]
            layers = [*base[p], runtime[i % 4][p], *own]
            per_platform.append(make_image(rng, plat, "oci", layers=layers))
        images.append((f"bench/a{i:02d}", TAG, make_index(per_platform, "oci")))
    return DataSet("A", "20 images x 3 platforms (amd64, arm64/v8, arm/v7), shared base layers",
                   images, None, _unique_blobs(images),
                   [(repo, idx) for repo, _, idx in images])


def _unique_blobs(images: list[tuple[str, str, Index]]) -> dict[str, tuple[str, int]]:
    pulled: dict[str, tuple[str, int]] = {}
    for repo, _, idx in images:
        for blob in idx.all_blobs():
            pulled.setdefault(blob.digest, (repo, blob.size))
    return pulled


def dataset_b(scale: float) -> DataSet:
    rng = random.Random("mirror-bench-B-v1")
    big = make_big_layer(rng, _scaled(GiB, scale))
    amd = make_image(rng, AMD64, "oci", layers=[big])
    arm = make_image(rng, ARM64_V8, "oci", layers=[make_big_layer(rng, _scaled(MiB, scale))])
    repo = "bench/b"
    idx = make_index([amd, arm], "oci")
    pulled = {b.digest: (repo, b.size) for b in amd.all_blobs()}
    return DataSet("B", "1 image, one 1 GiB layer; pull linux/amd64 out of amd64 + arm64/v8",
                   [(repo, TAG, idx)], "linux/amd64", pulled, [(repo, amd)])


S_REPOS, S_TAGS = 50, 8  # data set S at scale 1: 400 references
S_WAN_SHARE = 5  # the 50 ms rows pull one repository in five (80 references at scale 1)
# loopback reruns with nothing new (and Python's start-up, and the requests alone) timed this
# many times in each repetition, their median taken: each is half a second, and this machine's
# noise is a tenth of that from one to the next
S_RERUNS = 5
WAN_RTT = 0.05  # seconds the delaying proxy holds each request


def s_repos(scale: float) -> int:
    return max(2, round(S_REPOS * scale))


def dataset_s(scale: float) -> DataSet:
    """Many small two-platform images: `--scale` scales the number of repositories (50 at
    scale 1, 250 at scale 5: 2,000 references), not the layer sizes."""
    rng = random.Random("mirror-bench-S-v1")
    plats = [AMD64, ARM64_V8]
    base = [[make_big_layer(rng, n) for n in (256 * KiB, 64 * KiB)] for _ in plats]
    images: list[tuple[str, str, Index]] = []
    for r in range(s_repos(scale)):
        fmt: Fmt = "oci" if r % 2 == 0 else "docker"  # OCI indexes and Docker lists
        runtime = [make_big_layer(rng, 128 * KiB) for _ in plats]
        for t in range(S_TAGS):
            per_platform = [
                make_image(rng, plat, fmt, layers=[*base[p], runtime[p], make_big_layer(
                    rng, rng.randint(4 * KiB, 32 * KiB))]) for p, plat in enumerate(plats)]
            images.append((f"bench/s{r:03d}", f"1.{t}.0", make_index(per_platform, fmt)))
    return DataSet("S", f"{len(images)} references ({len(images) // S_TAGS} repositories x "
                   f"{S_TAGS} tags), 2 platforms (amd64, arm64/v8), shared base layers",
                   images, None, _unique_blobs(images), [], issue=18)


def write_oci_archive(path: Path, obj: Image | Index) -> None:
    """An OCI layout tar holding one image (what skopeo's `oci-archive:` reads)."""
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [obj.manifest.descriptor(
                 annotations={"org.opencontainers.image.ref.name": TAG})]}
    members: list[tuple[str, bytes]] = [
        ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), ("index.json", dump_json(index))]
    seen: set[str] = set()
    blobs: list[Blob] = [*obj.all_manifests(), *obj.all_blobs()]
    for blob in blobs:
        if blob.digest not in seen:
            seen.add(blob.digest)
            members.append((f"blobs/sha256/{blob.digest.split(':', 1)[1]}", blob.data))
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, _FIXED_MTIME
            tar.addfile(info, io.BytesIO(data))


# -- timing -------------------------------------------------------------------------------------
@dataclass
class Run:
    wall: float
    user: float
    sys: float
    rss_kib: int
    commands: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    @staticmethod
    def total(runs: list[Run]) -> Run:
        return Run(sum(r.wall for r in runs), sum(r.user for r in runs),
                   sum(r.sys for r in runs), max(r.rss_kib for r in runs),
                   sum(r.commands for r in runs))

    @staticmethod
    def median(runs: list[Run]) -> Run:
        extra: dict[str, Any] = {}
        for r in runs:  # counts: the worst repeat (a warm run that fetched anything shows)
            for k, v in r.extra.items():
                extra[k] = max(extra[k], v) if k in extra else v
        return Run(statistics.median(r.wall for r in runs),
                   statistics.median(r.user for r in runs),
                   statistics.median(r.sys for r in runs),
                   int(statistics.median(r.rss_kib for r in runs)),
                   runs[0].commands, extra)


class Bench:
    def __init__(self, work: Path, verbose: bool) -> None:
        self.work = work
        self.verbose = verbose
        self.env = dict(os.environ, TMPDIR=str(work), PYTHONPATH=str(REPO))
        self.env.pop("PYTHONSTARTUP", None)
        # mirror as installed: `pip install` compiles the bytecode once. Where the environment
        # forbids writing it (PYTHONDONTWRITEBYTECODE=1, as on these machines), every run
        # compiled mirror's modules from source again (~60 ms); keep it in the work dir.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "mirror")],
                       env=self.env, check=True, stdout=subprocess.DEVNULL)

    def timed(self, cmd: list[str], what: str) -> Run:
        out = self.work / "time.out"
        if self.verbose:
            print(f"  $ {' '.join(cmd)}", file=sys.stderr)
        # every command starts with nothing dirty in the page cache: none pays for the
        # writeback of what the one before it wrote (skopeo's 1 GiB, say)
        os.sync()
        proc = subprocess.run([TIME, "-f", "%e %U %S %M", "-o", str(out), *cmd], cwd=REPO,
                              env=self.env, stdin=subprocess.DEVNULL, capture_output=True)
        if proc.returncode != 0:
            tail = (proc.stderr or b"").decode(errors="replace")[-2000:]
            raise BenchError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
        fields = out.read_text().strip().splitlines()[-1].split()
        wall, user, sys_, rss = fields
        return Run(float(wall), float(user), float(sys_), int(rss))

    def mirror(self, *args: str, profile: Path | None = None) -> list[str]:
        prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
        return [sys.executable, *prof, "-m", "mirror", *args]


def _rm(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


# -- the steps ----------------------------------------------------------------------------------
def limit(b: Bench, ds: DataSet, src: Registry) -> tuple[Run, Run]:
    """One curl downloading every unique blob to its own file, then openssl hashing them."""
    d = b.work / f"limit-{ds.name}"
    d.mkdir()
    cfg = b.work / f"curl-{ds.name}.cfg"
    lines = []
    for digest, (repo, _) in ds.pulled.items():
        lines.append(f'url = "{src.url}/v2/{repo}/blobs/{digest}"\n'
                     f'output = "{d}/{digest.split(":", 1)[1]}"\n')
    cfg.write_text("".join(lines))
    try:
        curl = b.timed(["curl", "-sS", "--fail", "-K", str(cfg)], "curl")
        files = sorted(d.iterdir())
        got = sum(f.stat().st_size for f in files)
        if len(files) != len(ds.pulled) or got != ds.bytes:
            raise BenchError(f"curl wrote {len(files)} files, {got} bytes; expected "
                             f"{len(ds.pulled)}, {ds.bytes}")
        out = b.work / "dgst.out"
        sha = b.timed(["sh", "-c", 'exec openssl dgst -sha256 "$@" > "$0"', str(out),
                       *map(str, files)], "openssl dgst")
        for line in out.read_text().splitlines():  # SHA2-256(/path/<hex>)= <hex>
            name, _, hexd = line.partition("= ")
            if not name.rstrip(")").endswith(hexd.strip()):
                raise BenchError(f"openssl: {line!r}: digest does not match the file name")
        return curl, sha
    finally:
        _rm(d, cfg)


def skopeo_pull(b: Bench, ds: DataSet, src: Registry) -> Run:
    layout = b.work / f"skopeo-oci-{ds.name}"
    arch: list[str] = []
    if ds.platform:
        os_, arch_, *variant = ds.platform.split("/")
        arch = ["--override-os", os_, "--override-arch", arch_]
        arch += ["--override-variant", variant[0]] if variant else []
    runs = []
    try:
        for repo, tag, _ in ds.images:
            cmd = ["skopeo", "--insecure-policy", *arch, "copy", "-q",
                   *([] if ds.platform else ["--all"]), "--src-tls-verify=false",
                   f"docker://{src.host}/{repo}:{tag}", f"oci:{layout}:{repo.rsplit('/', 1)[1]}"]
            runs.append(b.timed(cmd, "skopeo copy (pull)"))
        return Run.total(runs)
    finally:
        _rm(layout)


def mirror_pull(b: Bench, ds: DataSet, refs: list[str], out: Path, cache: Path, *args: str,
                profile: Path | None = None) -> Run:
    report = b.work / f"report-{ds.name}.json"
    plat = ["--platform", ds.platform] if ds.platform else []
    run = b.timed(b.mirror("pull", "-q", *refs, *plat, *args, "-o", str(out),
                           "--cache", str(cache), "--report", str(report), profile=profile),
                  "mirror pull")
    doc = json.loads(report.read_text())
    report.unlink()
    run.extra = {"bytes_fetched": doc["bytes_fetched"], "blobs_fetched": doc["blobs_fetched"],
                 "bytes_reused": doc["bytes_reused"],
                 "bundle_unchanged": bool(doc.get("bundle_unchanged")),
                 "report_requests": sum(n for kinds in doc["requests"].values()
                                        for n in kinds.values())}
    return run


# The registries' Go collector. Each is a process on this machine beside the tool being timed,
# standing in for a registry on a machine of its own. With Go's default (GOGC=100) and a live
# heap of 4 MiB, docker-registry 2.8 collected 230 times in 2,000 tag HEADs (GODEBUG=gctrace=1:
# every 9 requests), and on 2 cores that CPU is taken from the client: a conditional tag HEAD
# cost the registry 1.0-1.4 ms of CPU, 0.6-0.7 ms with GOGC=800 (2,000 HEADs each way, access
# log off, 3 alternated runs). Every tool timed here, skopeo included, talks to registries
# started with this setting.
REGISTRY_ENV = {"GOGC": "800"}


def _registry(**kw: Any) -> Registry:
    return Registry(env=REGISTRY_ENV, **kw)


def skopeo_load(b: Bench, ds: DataSet, archives: list[tuple[str, Path]]) -> Run:
    with _registry() as dst:
        runs = [b.timed(["skopeo", "--insecure-policy", "copy", "-q", "--all",
                         "--dest-tls-verify=false", f"oci-archive:{path}",
                         f"docker://{dst.host}/{repo}:{TAG}"], "skopeo copy (load)")
                for repo, path in archives]
    return Run.total(runs)


def mirror_load(b: Bench, ds: DataSet, bundle: Path) -> Run:
    report = b.work / f"load-{ds.name}.json"
    with _registry() as dst:
        run = b.timed(b.mirror("load", "-q", str(bundle), "--to", dst.host,
                               "--report", str(report)), "mirror load")
    doc = json.loads(report.read_text())
    report.unlink()
    run.extra = {"bytes_pushed": doc["bytes_pushed"], "blobs_pushed": doc["blobs_pushed"],
                 "blobs_mounted": doc["blobs_mounted"]}
    return run


def _sync_yaml(b: Bench, name: str, host: str, images: list[tuple[str, str, Index]]) -> Path:
    """skopeo sync's YAML source naming every image (tags quoted: 1.10 is no number)."""
    by_repo: dict[str, list[str]] = {}
    for repo, tag, _ in images:
        by_repo.setdefault(repo, []).append(tag)
    cfg = b.work / f"skopeo-sync-{name}.yaml"
    lines = [f"{host}:", "  tls-verify: false", "  images:"]
    lines += [f"    {repo}: {json.dumps(tags)}" for repo, tags in by_repo.items()]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def skopeo_sync(b: Bench, ds: DataSet, src: Registry) -> Run:
    """One `skopeo sync` of every image, registry to registry (its YAML source names them)."""
    cfg = _sync_yaml(b, ds.name, src.host, ds.images)
    arch: list[str] = []
    if ds.platform:
        os_, arch_, *variant = ds.platform.split("/")
        arch = ["--override-os", os_, "--override-arch", arch_]
        arch += ["--override-variant", variant[0]] if variant else []
    try:
        with _registry() as dst:
            return b.timed(["skopeo", "--insecure-policy", *arch, "sync",
                            *([] if ds.platform else ["--all"]), "--src", "yaml", "--dest",
                            "docker", "--dest-tls-verify=false", str(cfg), f"{dst.host}/s"],
                           "skopeo sync")
    finally:
        _rm(cfg)


def mirror_sync(b: Bench, ds: DataSet, src: Registry) -> Run:
    report = b.work / f"sync-{ds.name}.json"
    plat = ["--platform", ds.platform] if ds.platform else []
    with _registry() as dst:
        run = b.timed(b.mirror("sync", "-q", *ds.refs(src.host), *plat, "--to",
                               f"{dst.host}/s", "--report", str(report)), "mirror sync")
    doc = json.loads(report.read_text())
    report.unlink()
    (target,) = doc["targets"]
    run.extra = {"bytes_pushed": target["bytes_pushed"], "blobs_pushed": target["blobs_pushed"],
                 "blobs_mounted": target["blobs_mounted"]}
    return run


SMALL_REQUESTS = 1000


def _largest_blob(bundle: Path) -> tuple[str, int, int]:
    """The bundle's largest blob: digest, data offset in the tar, size."""
    with tarfile.open(bundle) as tf:
        best = max((m for m in tf if m.isfile() and m.name.startswith("blobs/")),
                   key=lambda m: m.size)
    return "sha256:" + best.name.rsplit("/", 1)[1], best.offset_data, best.size


def _small_paths(bundle: Path) -> list[str]:
    """/v2/ paths of every manifest and image config in the bundle, by digest: what a
    client's pull asks for besides the layers."""
    with tarfile.open(bundle) as tf:
        files = {m.name: m for m in tf if m.isfile()}

        def read(name: str) -> Any:
            f = tf.extractfile(files[name])
            assert f is not None
            return json.loads(f.read())

        paths = []
        for entry in read("index.json")["manifests"]:
            ref = entry["annotations"]["org.opencontainers.image.ref.name"]
            repo = ref.split("/", 1)[1].rsplit(":", 1)[0]  # as mirror load and serve name it
            todo = [entry["digest"]]
            while todo:
                digest = todo.pop()
                name = f"blobs/sha256/{digest.split(':', 1)[1]}"
                if name not in files:  # a platform a filtered pull left out
                    continue
                body = read(name)
                paths.append(f"/v2/{repo}/manifests/{digest}")
                todo += [m["digest"] for m in body.get("manifests", [])]
                if "config" in body:
                    paths.append(f"/v2/{repo}/blobs/{body['config']['digest']}")
    return paths


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _curl_blob(b: Bench, url: str, repo: str, digest: str, size: int, what: str) -> Run:
    out = b.work / "curl-size.out"
    run = b.timed(["sh", "-c", 'exec curl -sS --fail -o /dev/null -w "%{size_download}" '
                   '"$1" > "$0"', str(out), f"{url}/v2/{repo}/blobs/{digest}"], what)
    got = int(out.read_text() or 0)
    out.unlink()
    if got != size:
        raise BenchError(f"{what}: {got} bytes, expected {size}")
    run.extra = {"bytes": size}
    return run


def _curl_small(b: Bench, url: str, paths: list[str], what: str) -> Run:
    """SMALL_REQUESTS GETs over one connection (curl -K reuses it), every answer a 200."""
    cfg, out = b.work / "curl-small.cfg", b.work / "curl-small.out"
    reqs = (paths * (SMALL_REQUESTS // len(paths) + 1))[:SMALL_REQUESTS]
    accept = ("Accept: application/vnd.oci.image.index.v1+json, "
              "application/vnd.oci.image.manifest.v1+json, "
              "application/vnd.docker.distribution.manifest.list.v2+json, "
              "application/vnd.docker.distribution.manifest.v2+json")
    cfg.write_text(f'header = "{accept}"\nwrite-out = "%{{http_code}} %{{size_download}}\\n"\n'
                   + "".join(f'url = "{url}{p}"\noutput = "/dev/null"\n' for p in reqs))
    try:
        run = b.timed(["sh", "-c", 'exec curl -sS -K "$1" > "$0"', str(out), str(cfg)], what)
        answers = out.read_text().split()
        codes, sizes = answers[0::2], answers[1::2]
        if len(codes) != SMALL_REQUESTS or set(codes) != {"200"}:
            raise BenchError(f"{what}: answers {sorted(set(codes))} to {len(codes)} requests")
        run.extra = {"bytes": sum(map(int, sizes)), "requests": SMALL_REQUESTS}
        return run
    finally:
        _rm(cfg, out)


def serve_bench(b: Bench, ds: DataSet, bundle: Path) -> dict[str, Run]:
    """The largest blob and many small requests, from `mirror serve` and from docker-registry
    holding the same images, against reading the blob from the file."""
    digest, offset, size = _largest_blob(bundle)
    repo = ds.pulled[digest][0]
    paths = _small_paths(bundle)
    out = {"file_read": b.timed(["dd", f"if={bundle}", "of=/dev/null", "bs=1M", "status=none",
                                 "iflag=skip_bytes,count_bytes", f"skip={offset}",
                                 f"count={size}"], "dd")}
    out["file_read"].extra = {"bytes": size}
    serve = subprocess.Popen(b.mirror("serve", str(bundle), "--listen", "127.0.0.1:0"),
                             cwd=REPO, env=b.env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    try:
        assert serve.stdout is not None
        url = serve.stdout.readline().strip()
        if not url.startswith("http://"):
            raise BenchError(f"mirror serve did not start (exit {serve.poll()})")
        out["serve_blob"] = _curl_blob(b, url, repo, digest, size, "curl from mirror serve")
        out["serve_small"] = _curl_small(b, url, paths, "curl -K from mirror serve")
        out["serve_blob"].extra["server_rss_kib"] = _peak_rss_kib(serve.pid)
    finally:
        serve.terminate()
        serve.wait(30)
        if serve.stdout is not None:
            serve.stdout.close()
    with _registry() as reg:
        subprocess.run(b.mirror("load", "-q", str(bundle), "--to", reg.host), cwd=REPO,
                       env=b.env, check=True, stdout=subprocess.DEVNULL)
        out["registry_blob"] = _curl_blob(b, reg.url, repo, digest, size,
                                          "curl from docker-registry")
        out["registry_small"] = _curl_small(b, reg.url, paths, "curl -K from docker-registry")
        assert reg._proc is not None  # noqa: SLF001 - its server's memory, for the note
        out["registry_blob"].extra["server_rss_kib"] = _peak_rss_kib(reg._proc.pid)  # noqa: SLF001
    return out


def _mount(src: Registry, repo: str, digest: str, from_repo: str) -> None:
    """Cross-repository mount (REFERENCE.md 6.4): a shared blob without uploading it again."""
    url = f"{src.url}/v2/{repo}/blobs/uploads/?mount={digest}&from={from_repo}"
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        if resp.status != 201:
            raise BenchError(f"mount {digest} into {repo}: HTTP {resp.status}")


def seed(src: Registry, ds: DataSet) -> None:
    """Push every image, 4 at a time. A blob several images share is uploaded once and
    mounted into the other repositories, so push_image finds it there and skips it."""
    users: dict[str, list[str]] = {}
    blobs: dict[str, Blob] = {}
    images: dict[str, int] = {}
    for repo, _, obj in ds.images:
        for blob in obj.all_blobs():
            repos = users.setdefault(blob.digest, [])
            if repo not in repos:  # S: tags of one repository share its layers
                repos.append(repo)
            blobs.setdefault(blob.digest, blob)
            images[blob.digest] = images.get(blob.digest, 0) + 1
    # pushed before the images, so no two threads upload one blob into one repository at once
    # (docker-registry then answers a HEAD of it 500 now and then)
    shared = [d for d, n in images.items() if n > 1]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda d: push_blob(src.url, users[d][0], blobs[d]), shared))
        list(pool.map(lambda d: [_mount(src, r, d, users[d][0]) for r in users[d][1:]], shared))
        list(pool.map(lambda item: push_image(src.url, item[0], item[2], tags=[item[1]]),
                      ds.images))


def run_dataset(b: Bench, ds: DataSet, src: Registry, repeat: int) -> dict[str, list[Run]]:
    log = _log
    t0 = time.monotonic()
    seed(src, ds)
    log(f"data set {ds.name}: seeded {len(ds.images)} image(s), {len(ds.pulled)} unique blobs, "
        f"{ds.bytes / MiB:.1f} MiB to pull, in {time.monotonic() - t0:.1f} s")
    archive_dir = b.work / f"archives-{ds.name}"
    archive_dir.mkdir()
    archives = []
    for repo, obj in ds.archives:
        path = archive_dir / f"{repo.replace('/', '_')}.tar"
        write_oci_archive(path, obj)
        archives.append((repo, path))
    runs: dict[str, list[Run]] = {k: [] for k in (
        "curl", "sha256", "skopeo_pull", "mirror_pull", "mirror_warm", "mirror_warm_new",
        "skopeo_load", "mirror_load", "skopeo_sync", "mirror_sync", "file_read",
        "serve_blob", "registry_blob", "serve_small", "registry_small")}
    try:
        for i in range(repeat):
            tag = f" (run {i + 1}/{repeat})" if repeat > 1 else ""
            log(f"data set {ds.name}{tag}: limit (curl, openssl)")
            curl, sha = limit(b, ds, src)
            runs["curl"].append(curl)
            runs["sha256"].append(sha)
            log(f"data set {ds.name}{tag}: skopeo copy into oci:")
            runs["skopeo_pull"].append(skopeo_pull(b, ds, src))
            cache, bundle, bundle2 = (b.work / f"cache-{ds.name}", b.work / f"{ds.name}.tar",
                                      b.work / f"{ds.name}-warm.tar")
            try:
                log(f"data set {ds.name}{tag}: mirror pull (cold cache)")
                cold = mirror_pull(b, ds, ds.refs(src.host), bundle, cache)
                if cold.extra["blobs_fetched"] != len(ds.pulled):
                    raise BenchError(f"cold mirror pull fetched {cold.extra['blobs_fetched']} "
                                     f"blobs; the data set has {len(ds.pulled)}")
                runs["mirror_pull"].append(cold)
                log(f"data set {ds.name}{tag}: mirror pull again (warm cache, same command)")
                runs["mirror_warm"].append(mirror_pull(b, ds, ds.refs(src.host), bundle, cache))
                log(f"data set {ds.name}{tag}: mirror pull (warm cache, new output file)")
                runs["mirror_warm_new"].append(mirror_pull(b, ds, ds.refs(src.host), bundle2,
                                                            cache))
                _rm(bundle2, bundle2.with_name(bundle2.name + ".sha256"), cache)
                log(f"data set {ds.name}{tag}: skopeo copy from oci-archive:")
                runs["skopeo_load"].append(skopeo_load(b, ds, archives))
                log(f"data set {ds.name}{tag}: mirror load")
                runs["mirror_load"].append(mirror_load(b, ds, bundle))
                log(f"data set {ds.name}{tag}: skopeo sync (registry to registry)")
                runs["skopeo_sync"].append(skopeo_sync(b, ds, src))
                log(f"data set {ds.name}{tag}: mirror sync (registry to registry)")
                runs["mirror_sync"].append(mirror_sync(b, ds, src))
                log(f"data set {ds.name}{tag}: mirror serve and docker-registry (curl)")
                for k, v in serve_bench(b, ds, bundle).items():
                    runs[k].append(v)
            finally:
                _rm(cache, bundle, bundle2, *(p.with_name(p.name + ".sha256")
                                              for p in (bundle, bundle2)))
    finally:
        _rm(archive_dir)
    return runs


def profile_pull(b: Bench, ds: DataSet, src: Registry, profile_dir: Path) -> None:
    """One more cold mirror pull under cProfile (untimed); print the top of the profile."""
    prof = profile_dir / f"pull-{ds.name}.prof"
    _log(f"data set {ds.name}: mirror pull under cProfile -> {prof}")
    cache, bundle = b.work / f"cache-{ds.name}", b.work / f"{ds.name}.tar"
    try:
        mirror_pull(b, ds, ds.refs(src.host), bundle, cache, profile=prof)
    finally:
        _rm(cache, bundle, bundle.with_name(bundle.name + ".sha256"))
    _print_profile(prof)


def _print_profile(prof: Path, top: int = 25) -> None:
    print(f"\n== cProfile of {prof.name} (main thread only), top {top} by own time ==")
    stats = pstats.Stats(str(prof), stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)


# -- data set S: many small images, cold and warm, on loopback and at 50 ms -------------------
_ACCESS = re.compile(rb'"([A-Z]+) (\S+) HTTP/[0-9.]+" [0-9]{3} ')
REQ = "req "  # Run.extra keys holding a request count by kind
LO_JOBS, WAN_JOBS = (4,), (4, 16)


class AccessLog:
    """The requests a registry answered since `mark()`, by kind, read from its access log
    (the kinds of mirror's report: mirror.registry.ratelimit.request_kind): counts skopeo's
    requests as well as mirror's, and checks mirror's own count."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def counts(self) -> dict[str, int]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            text = f.read()
        out: dict[str, int] = {}
        for m in _ACCESS.finditer(text):
            kind = request_kind(m.group(1).decode(), m.group(2).decode())
            out[kind] = out.get(kind, 0) + 1
        return out


def counted(log: AccessLog, step: Callable[[], Run]) -> Run:
    """step's Run with the requests the registry answered meanwhile, by kind. A mirror run
    whose report counts otherwise is a broken benchmark (or a broken report)."""
    log.mark()
    run = step()
    kinds = log.counts()
    run.extra.update({"requests": sum(kinds.values()),
                      **{f"{REQ}{k}": n for k, n in kinds.items()}})
    said = run.extra.get("report_requests")
    if said is not None and said != run.extra["requests"]:
        raise BenchError(f"mirror's report counts {said} requests; the registry answered "
                         f"{run.extra['requests']} ({kinds})")
    return run


# The least any Python client needs for a rerun with nothing new: start, import aiohttp, and
# the rerun's own requests (the ping, a tag HEAD per reference, a tag list per repository, one
# referrers probe), 16 at once as mirror sends its small ones, and nothing else done. aiohttp
# imported as mirror imports it (mirror.registry.tls: no CA loaded for its unused contexts).
FLOOR_CLIENT = """
import asyncio, os, sys
os.environ.update(SSL_CERT_FILE=os.devnull, SSL_CERT_DIR=os.devnull)
import aiohttp
ACCEPT = sys.argv[2]
refs = open(sys.argv[1]).read().split()
async def main():
    async with aiohttp.ClientSession() as s:
        slots = asyncio.Semaphore(16)
        async def ask(method, url, **kw):
            async with slots, s.request(method, url, **kw) as resp:
                await resp.read()
                return resp.headers.get("Docker-Content-Digest")
        host = refs[0].split("/", 1)[0]
        await ask("GET", f"http://{host}/v2/")
        def parts(r):
            host, rest = r.split("/", 1)
            repo, tag = rest.rsplit(":", 1)
            return f"http://{host}/v2/{repo}", tag
        heads = [ask("HEAD", f"{base}/manifests/{tag}", headers={"Accept": ACCEPT})
                 for base, tag in map(parts, refs)]
        lists = [ask("GET", f"{base}/tags/list") for base in dict.fromkeys(
                 parts(r)[0] for r in refs)]
        digests = await asyncio.gather(*heads, *lists)
        base = parts(refs[0])[0]
        async with s.get(f"{base}/referrers/{digests[0]}") as resp:
            await resp.read()
asyncio.run(main())
"""


def floor_client(b: Bench, refs: list[str]) -> Run:
    listed = b.work / "floor-refs.txt"
    listed.write_text("\n".join(refs) + "\n")
    try:
        from mirror.mediatypes import MANIFEST_ACCEPT
        return b.timed([sys.executable, "-c", FLOOR_CLIENT, str(listed), MANIFEST_ACCEPT],
                       "the rerun's requests alone (aiohttp)")
    finally:
        _rm(listed)


def skopeo_sync_dir(b: Bench, ds: DataSet, host: str, images: list[tuple[str, str, Index]],
                    dest: Path) -> Run:
    cfg = _sync_yaml(b, ds.name, host, images)
    try:
        return b.timed(["skopeo", "--insecure-policy", "sync", "--all", "--src", "yaml",
                        "--dest", "dir", str(cfg), str(dest)], "skopeo sync (to a directory)")
    finally:
        _rm(cfg)


def wan_images(ds: DataSet) -> list[tuple[str, str, Index]]:
    return ds.images[:S_TAGS * max(1, ds.repos // S_WAN_SHARE)]


def run_scale(b: Bench, ds: DataSet, src: Registry, repeat: int) -> dict[str, list[Run]]:
    """Data set S: skopeo sync to a directory and mirror pull, each cold then again with
    nothing new, on loopback and through a proxy holding every request WAN_RTT seconds."""
    t0 = time.monotonic()
    seed(src, ds)
    _log(f"data set S: seeded {len(ds.images)} references, {len(ds.pulled)} unique blobs, "
         f"{ds.bytes / MiB:.1f} MiB, in {time.monotonic() - t0:.1f} s")
    log = AccessLog(src.log_path)
    wan = wan_images(ds)
    runs: dict[str, list[Run]] = {k: [] for k in ("python_start", "mirror_start")}
    with FaultProxy(src.url) as proxy:
        proxy.add(Fault("stall", delay=WAN_RTT, times=None))
        for i in range(repeat):
            tag = f" (run {i + 1}/{repeat})" if repeat > 1 else ""
            runs["python_start"].append(Run.median([
                b.timed([sys.executable, "-c", "pass"], "python3") for _ in range(S_RERUNS)]))
            runs["mirror_start"].append(b.timed(b.mirror("--version"), "mirror --version"))
            for where, host, images, jobs in (("lo", src.host, ds.images, LO_JOBS),
                                              ("wan", proxy.host, wan, WAN_JOBS)):
                what = "loopback" if where == "lo" else f"{WAN_RTT * 1000:.0f} ms"
                d = b.work / "skopeo-dir-S"
                try:
                    for w in ("cold", "warm"):
                        _log(f"data set S{tag}: {what}: skopeo sync to a directory ({w}, "
                             f"{len(images)} references)")
                        # it refuses to write over an image directory, and keeps no cache:
                        # its rerun is a new directory, every image copied again
                        _rm(d)
                        runs.setdefault(f"{where}_skopeo_{w}", []).append(counted(
                            log, partial(skopeo_sync_dir, b, ds, host, images, d)))
                finally:
                    _rm(d)
                refs = [f"{host}/{repo}:{t}" for repo, t, _ in images]
                for j in jobs:
                    out, cache = b.work / "S.tar", b.work / "cache-S"
                    try:
                        for w in ("cold", "warm"):
                            k = S_RERUNS if (where, w) == ("lo", "warm") else 1
                            _log(f"data set S{tag}: {what}: mirror pull -j {j} ({w}"
                                 f"{f', {k} times' if k > 1 else ''})")
                            done = []
                            for _ in range(k):
                                run = counted(log, partial(mirror_pull, b, ds, refs, out,
                                                           cache, "-j", str(j)))
                                want = len(_unique_blobs(images)) if w == "cold" else 0
                                if run.extra["blobs_fetched"] != want:
                                    raise BenchError(
                                        f"{w} mirror pull fetched "
                                        f"{run.extra['blobs_fetched']} blobs, not {want}")
                                done.append(run)
                            runs.setdefault(f"{where}_mirror_j{j}_{w}", []).append(
                                Run.median(done))
                    finally:
                        _rm(out, out.with_name(out.name + ".sha256"), cache)
                if where == "lo":
                    _log(f"data set S{tag}: {what}: the rerun's requests alone (aiohttp)")
                    runs.setdefault("lo_floor", []).append(Run.median([counted(
                        log, partial(floor_client, b, refs)) for _ in range(S_RERUNS)]))
    return runs


def _requests(run: Run) -> str:
    kinds = sorted(((k[len(REQ):], n) for k, n in run.extra.items() if k.startswith(REQ)),
                   key=lambda kn: (-kn[1], kn[0]))
    return f"{run.extra['requests']} requests" + (
        f" ({', '.join(f'{k} {n}' for k, n in kinds)})" if kinds else "")


def summarize_scale(ds: DataSet, runs: dict[str, list[Run]]) -> tuple[list[Row], list[Check]]:
    med = {k: Run.median(v) for k, v in runs.items()}
    n_wan = len(wan_images(ds))
    rows = [Row("start: python3 -c pass", med["python_start"], 0),
            Row("start: mirror --version", med["mirror_start"], 0)]
    for where, jobs, n in (("lo", LO_JOBS, len(ds.images)), ("wan", WAN_JOBS, n_wan)):
        what = "lo" if where == "lo" else f"{WAN_RTT * 1000:.0f}ms"
        nbytes = sum(size for _, size in _unique_blobs(
            ds.images if where == "lo" else wan_images(ds)).values())
        sk_cold, sk_warm = med[f"{where}_skopeo_cold"], med[f"{where}_skopeo_warm"]
        rows += [Row(f"{what}: skopeo sync -> dir: ({n} refs)", sk_cold, nbytes,
                     note=_requests(sk_cold)),
                 Row(f"{what}: skopeo sync again, new dir:", sk_warm, nbytes,
                     note=f"{_requests(sk_warm)}; {sk_warm.wall / sk_cold.wall:.2f}x cold")]
        for j in jobs:
            cold, warm = med[f"{where}_mirror_j{j}_cold"], med[f"{where}_mirror_j{j}_warm"]
            rows += [Row(f"{what}: mirror pull -j {j}", cold, nbytes, cold.wall / sk_cold.wall,
                         note=_requests(cold)),
                     Row(f"{what}: mirror pull -j {j} rerun, nothing new", warm, nbytes,
                         warm.wall / sk_warm.wall,
                         note=f"{_requests(warm)}; {warm.wall / cold.wall:.2f}x cold")]
        if where == "lo" and "lo_floor" in med:
            rows.append(Row(f"{what}: the rerun's requests alone", med["lo_floor"], nbytes,
                            note=f"{_requests(med['lo_floor'])}; python3 -c, aiohttp, 16 at "
                            "once, nothing else"))
    j = LO_JOBS[0]
    n = len(ds.images)
    warm = med[f"lo_mirror_j{j}_warm"]
    heads, gets = warm.extra.get(f"{REQ}manifest HEAD", 0), warm.extra.get(f"{REQ}manifest GET", 0)
    blob_gets = warm.extra.get(f"{REQ}blob GET", 0)
    checks = [
        Check(f"warm S: {n} tag HEADs, no manifest GET",
              f"{heads} HEAD, {gets} GET, {blob_gets} blob GET of {warm.extra['requests']}",
              heads == n and gets == 0 and blob_gets == 0),
        _paired_check("warm pull S wall <= {t} x cold pull", T_WARM,
                      runs[f"lo_mirror_j{j}_warm"], runs[f"lo_mirror_j{j}_cold"],
                      # what a client that only sends the rerun's requests would score
                      "" if "lo_floor" not in runs else " (the requests alone: {:.3f} x)".format(
                          statistics.median(f.wall / c.wall for f, c in zip(
                              runs["lo_floor"], runs[f"lo_mirror_j{j}_cold"], strict=True)))),
    ]
    above = [w.wall - p.wall for w, p in zip(runs[f"lo_mirror_j{j}_warm"], runs["python_start"],
                                             strict=True)]
    floor = "" if "lo_floor" not in runs else " (the requests alone: {:.2f})".format(
        statistics.median(f.wall - p.wall
                          for f, p in zip(runs["lo_floor"], runs["python_start"], strict=True)))
    checks.append(Check(f"warm pull S wall <= python start + {T_S_WARM_ABOVE:g} s",
                        f"{statistics.median(above):.2f} s above{floor}",
                        statistics.median(above) <= T_S_WARM_ABOVE))
    for where, jobs in (("lo", LO_JOBS), ("wan", WAN_JOBS)):
        for j in jobs:
            what = "" if where == "lo" else f" {WAN_RTT * 1000:.0f}ms -j {j}"
            checks.append(_paired_check(f"pull S{what} wall <= {{t}} x skopeo sync",
                                        T_S_SKOPEO, runs[f"{where}_mirror_j{j}_cold"],
                                        runs[f"{where}_skopeo_cold"]))
    worst = max((r for r in rows if "mirror pull" in r.label), key=lambda r: r.run.rss_kib)
    mib = worst.run.rss_kib / KiB
    checks.append(Check(f"pull S peak RSS <= {T_RSS_MIB} MiB ({n} refs)",
                        f"{mib:.1f} MiB ({worst.label})", mib <= T_RSS_MIB))
    return rows, checks


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- the report ---------------------------------------------------------------------------------
@dataclass
class Row:
    label: str
    run: Run
    nbytes: int
    vs_skopeo: float | None = None
    vs_limit: float | None = None
    note: str = ""


@dataclass
class Check:
    what: str
    value: str
    ok: bool


def summarize(ds: DataSet, runs: dict[str, list[Run]]) -> tuple[list[Row], list[Check]]:
    med = {k: Run.median(v) for k, v in runs.items()}
    overlapped = Run.median([Run(max(c.wall, s.wall), c.user + s.user, c.sys + s.sys,
                                 max(c.rss_kib, s.rss_kib), 2)
                             for c, s in zip(runs["curl"], runs["sha256"], strict=True)])
    serial = Run.median([Run.total([c, s]) for c, s in zip(runs["curl"], runs["sha256"],
                                                          strict=True)])
    n = ds.bytes
    pull, warm, load = med["mirror_pull"], med["mirror_warm"], med["mirror_load"]
    warm_new = med["mirror_warm_new"]
    sk_pull, sk_load = med["skopeo_pull"], med["skopeo_load"]
    sync, sk_sync = med["mirror_sync"], med["skopeo_sync"]
    per = f"{len(ds.images)} commands" if len(ds.images) > 1 else "1 command"
    skopeo_pull_label = ("pull: skopeo copy --all -> oci:" if ds.platform is None
                         else "pull: skopeo copy --override-arch -> oci:")
    rows = [
        Row("limit: curl -o (download)", med["curl"], n),
        Row("limit: openssl dgst -sha256", med["sha256"], n),
        Row("limit: max (overlapped)", overlapped, n),
        Row("limit: sum (no overlap)", serial, n),
        Row(skopeo_pull_label, sk_pull, n, note=per),
        Row("pull: mirror pull", pull, n, pull.wall / sk_pull.wall, pull.wall / overlapped.wall,
            note=f"fetched {pull.extra['blobs_fetched']} blobs"),
        Row("pull: mirror pull again (warm cache)", warm, n, warm.wall / sk_pull.wall,
            warm.wall / overlapped.wall,
            note=f"fetched {warm.extra['blobs_fetched']} blobs, "
                 f"{warm.extra['bytes_fetched']} B; {warm.wall / pull.wall:.2f}x cold"
                 + ("; bundle unchanged" if warm.extra.get("bundle_unchanged") else "")),
        Row("pull: mirror pull, warm cache, new -o", warm_new, n, warm_new.wall / sk_pull.wall,
            warm_new.wall / overlapped.wall,
            note=f"fetched {warm_new.extra['blobs_fetched']} blobs; "
                 f"{warm_new.wall / pull.wall:.2f}x cold"),
        Row("load: skopeo copy oci-archive: -> reg", sk_load, n, note=per),
        Row("load: mirror load", load, n, load.wall / sk_load.wall,
            note=f"pushed {load.extra['bytes_pushed'] / MiB:.1f} MiB, "
                 f"{load.extra['blobs_mounted']} mounted"),
        Row("sync: skopeo sync reg -> reg", sk_sync, n, note="1 command"),
        Row("sync: mirror sync reg -> reg", sync, n, sync.wall / sk_sync.wall,
            sync.wall / overlapped.wall,
            note=f"pushed {sync.extra['bytes_pushed'] / MiB:.1f} MiB, "
                 f"{sync.extra['blobs_mounted']} mounted; "
                 f"{sync.wall / (pull.wall + load.wall):.2f}x pull + load"),
    ]
    read, blob_s, blob_r = med["file_read"], med["serve_blob"], med["registry_blob"]
    small_s, small_r = med["serve_small"], med["registry_small"]
    size = read.extra["bytes"]
    rows += [
        Row("serve: read the largest blob (dd)", read, size,
            note=f"{size / MiB:.1f} MiB at its offset in the bundle (page cache warm)"),
        Row("serve: mirror serve, 1 blob (curl)", blob_s, size, vs_limit=_per(blob_s, read),
            note=f"server peak RSS {blob_s.extra['server_rss_kib'] / KiB:.1f} MiB; "
                 f"{_ratio(_per(blob_s, blob_r))} docker-registry"),
        Row("serve: docker-registry, 1 blob (curl)", blob_r, size,
            vs_limit=_per(blob_r, read),
            note=f"after mirror load; server peak RSS "
                 f"{blob_r.extra['server_rss_kib'] / KiB:.1f} MiB"),
        Row(f"serve: mirror serve, {SMALL_REQUESTS} small (curl)", small_s,
            small_s.extra["bytes"], note=f"{SMALL_REQUESTS / max(small_s.wall, 0.01):.0f} "
            f"req/s; {_ratio(_per(small_s, small_r))} docker-registry"),
        Row(f"serve: docker-registry, {SMALL_REQUESTS} small (curl)", small_r,
            small_r.extra["bytes"],
            note=f"{SMALL_REQUESTS / max(small_r.wall, 0.01):.0f} req/s"),
    ]
    # Targets on time are judged by the median of per-run ratios: each repeat's mirror run
    # against the skopeo run or limit measured in the same repeat, minutes apart at most.
    # (The table's ratios divide medians; on a machine whose curl drifts by a third within
    # the hour, pairing is the fairer of the two.)
    limits = [Run(max(c.wall, s.wall), 0, 0, 0) for c, s in zip(runs["curl"], runs["sha256"],
                                                                strict=True)]
    checks: list[Check] = []
    if ds.name == "A":
        checks.append(_paired_check("pull A wall <= {t} x skopeo", T_PULL_A_SKOPEO,
                                    runs["mirror_pull"], runs["skopeo_pull"]))
    checks.append(_paired_check(f"pull {ds.name} wall <= {{t}} x limit", T_PULL_LIMIT,
                                runs["mirror_pull"], limits))
    fetched, nblobs = warm.extra["bytes_fetched"], warm.extra["blobs_fetched"]
    checks.append(Check(f"warm pull {ds.name} fetches 0 blob bytes",
                        f"{fetched} B, {nblobs} blobs", fetched == 0 and nblobs == 0))
    checks.append(_paired_check(f"warm pull {ds.name} wall <= {{t}} x cold pull", T_WARM,
                                runs["mirror_warm"], runs["mirror_pull"]))
    if ds.name == "A":
        checks.append(_paired_check("load A wall <= {t} x skopeo", T_LOAD_A_SKOPEO,
                                    runs["mirror_load"], runs["skopeo_load"]))
    for label, run in (("pull", pull), ("warm pull", warm), ("warm pull, new -o", warm_new),
                       ("load", load), ("sync", sync)):
        mib = run.rss_kib / KiB
        checks.append(Check(f"{label} {ds.name} peak RSS <= {T_RSS_MIB} MiB", f"{mib:.1f} MiB",
                            mib <= T_RSS_MIB))
    return rows, checks


def _paired_check(label: str, target: float, runs: list[Run], against: list[Run],
                  note: str = "") -> Check:
    ratios = [r.wall / a.wall for r, a in zip(runs, against, strict=True)]
    r = statistics.median(ratios)
    each = f" (runs: {', '.join(f'{x:.2f}' for x in ratios)})" if len(ratios) > 1 else ""
    return Check(label.format(t=f"{target:g}"), f"{r:.2f} x{each}{note}", r <= target)


def _per(run: Run, against: Run) -> float | None:
    """run's wall time over against's; None when that is too short to tell (0.00 s)."""
    return run.wall / against.wall if against.wall > 0 else None


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def render(ds: DataSet, rows: list[Row], checks: list[Check], repeat: int,
           scale: float) -> str:
    head = (f"data set {ds.name}: {ds.description}\n"
            f"  {len(ds.pulled)} unique blobs, {ds.bytes / MiB:.1f} MiB "
            f"({ds.bytes / 1e6:.1f} MB) to pull; "
            f"{'median of ' + str(repeat) + ' runs' if repeat > 1 else '1 run'}\n")
    hdr = (f"  {'':42} {'wall s':>8} {'MB/s':>8} {'CPU s':>8} {'RSS MiB':>8} "
           f"{'/skopeo':>8} {'/limit':>8}  note")
    lines = [head, hdr, "  " + "-" * (len(hdr) + 10)]
    for r in rows:
        mbs = f"{r.nbytes / 1e6 / r.run.wall:8.1f}" if r.run.wall > 0 and r.nbytes \
            else f"{'-':>8}"
        lines.append(f"  {r.label:42} {r.run.wall:8.2f} {mbs} {r.run.cpu:8.2f} "
                     f"{r.run.rss_kib / KiB:8.1f} {_ratio(r.vs_skopeo):>8} "
                     f"{_ratio(r.vs_limit):>8}  {r.note}".rstrip())
    lines.append("")
    small = " (scale < 1: start-up costs dominate; the targets are for scale 1)" \
        if scale < 1 else ""
    if ds.name == "S":
        small = (f" (scale {scale:g}: {len(ds.images)} references; the targets are for 400, "
                 "the RSS target for 2,000: scale 5)")
    lines.append(f"  targets (issue {ds.issue}), data set {ds.name}{small}; time ratios: the "
                 "median of each run's own ratio:")
    for c in checks:
        lines.append(f"    {'PASS' if c.ok else 'FAIL'}  {c.what:42} {c.value}")
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / KiB / KiB:.1f} GiB"
    except OSError:
        pass

    def out(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                                  check=False).stdout.strip()
        except OSError:
            return ""

    dirty = out("git", "status", "--porcelain", "--", "mirror")
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem,
            "python": platform.python_version(), "kernel": platform.release(),
            "skopeo": out("skopeo", "--version"), "curl": out("curl", "--version")
            .split("\n")[0], "openssl": out("openssl", "version"),
            "mirror_commit": out("git", "rev-parse", "--short", "HEAD")
            + (" + uncommitted changes in mirror/" if dirty else ""),
            "loadavg_start": os.getloadavg()}


# -- main ---------------------------------------------------------------------------------------
def _need(*binaries: str) -> None:
    missing = [x for x in binaries if shutil.which(x) is None]
    if not Path(TIME).exists():
        missing.append(TIME + " (apt package `time`)")
    if missing:
        raise SystemExit(f"bench: missing: {', '.join(missing)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="fraction of the layer sizes (1 = full; 0.01 for a smoke run); "
                    "for S, of the 50 repositories (5: 2,000 references)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median "
                    "is shown (default 1)")
    ap.add_argument("--only", choices=["A", "B", "S"], help="run one data set (S, the scale "
                    "set, runs only when asked)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="write every measurement here")
    ap.add_argument("--tmp", type=Path, default=Path("/tmp"),
                    help="where to make the working directory (default /tmp)")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="also run one cold mirror pull per data set under cProfile")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every command")
    args = ap.parse_args(argv)
    if not 0 < args.scale <= (5 if args.only == "S" else 4):
        ap.error("--scale must be in (0, 4] (with --only S: (0, 5])")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    return args


def _space_needed(scale: float, only: str | None) -> int:
    # A: registry + archives (shared layers repeated per image) + bundle + cache + copies
    a = int(1.4 * GiB * scale) * 4 + int(3.8 * GiB * scale)
    b = int(1.05 * GiB * scale) * 5
    # S: skopeo's directories hold every image's layers again (~1 MiB per reference)
    s = int(0.5 * GiB * scale) + s_repos(scale) * S_TAGS * MiB
    return {"A": a, "B": b, "S": s}.get(only or "", a + b) + 64 * MiB


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _need("docker-registry", "skopeo", "curl", "openssl")
    args.tmp.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.tmp).free
    need = _space_needed(args.scale, args.only)
    if free < need:
        raise SystemExit(f"bench: {args.tmp} has {free / GiB:.1f} GiB free; this run needs "
                         f"about {need / GiB:.1f} GiB (use --tmp DIR or a smaller --scale)")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = args.profile.resolve()
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="mirror-bench-", dir=args.tmp))
    tempfile.tempdir = str(work)  # the registries' storage goes under it too
    bench = Bench(work, args.verbose)
    cmdline = " ".join(["scripts/bench.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"mirror benchmark: {cmdline}")
    print(f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, "
          f"Python {info['python']}, {info['skopeo']}, {info['openssl']}")
    print(f"mirror: {info['mirror_commit']}; load average at start "
          f"{' '.join(f'{x:.2f}' for x in info['loadavg_start'])}; scale {args.scale:g}\n",
          flush=True)
    doc: dict[str, Any] = {"command": cmdline, "machine": info, "scale": args.scale,
                           "repeat": args.repeat, "datasets": {}}
    all_ok = True
    try:
        # S counts requests by kind from the registry's access log
        log = {"log": {"accesslog": {"disabled": args.only != "S"}}}
        with _registry(extra_config=log) as src:
            for name, make in (("A", dataset_a), ("B", dataset_b), ("S", dataset_s)):
                if args.only != name and (args.only or name == "S"):
                    continue
                t0 = time.monotonic()
                ds = make(args.scale)
                _log(f"data set {name}: generated in {time.monotonic() - t0:.1f} s")
                if name == "S":
                    runs = run_scale(bench, ds, src, args.repeat)
                    rows, checks = summarize_scale(ds, runs)
                else:
                    runs = run_dataset(bench, ds, src, args.repeat)
                    rows, checks = summarize(ds, runs)
                print(render(ds, rows, checks, args.repeat, args.scale), flush=True)
                if args.profile:
                    profile_pull(bench, ds, src, args.profile)
                all_ok &= all(c.ok for c in checks)
                doc["datasets"][name] = {
                    "description": ds.description, "images": len(ds.images),
                    "unique_blobs": len(ds.pulled), "bytes": ds.bytes,
                    "platform": ds.platform or "all",
                    "rows": [{"label": r.label, "wall": r.run.wall, "user": r.run.user,
                              "sys": r.run.sys, "cpu": r.run.cpu, "rss_kib": r.run.rss_kib,
                              "mb_per_s": r.nbytes / 1e6 / r.run.wall if r.run.wall else None,
                              "vs_skopeo": r.vs_skopeo, "vs_limit": r.vs_limit,
                              "note": r.note, "extra": r.run.extra} for r in rows],
                    "checks": [asdict(c) for c in checks],
                    "runs": {k: [asdict(r) for r in v] for k, v in runs.items()},
                }
                del ds
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    print(f"load average at end {' '.join(f'{x:.2f}' for x in info['loadavg_end'])}; "
          f"all targets {'met' if all_ok else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
