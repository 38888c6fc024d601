"""A pull's accounting: the bytes each image fetched, found in the cache or kept unfinished
for the next run, its summary line, and the run's totals (PullResult) that the report and the
lock file are written from. The run itself is mirror.pull."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mirror.config import ImageSpec
from mirror.fetch import Fetcher
from mirror.image import Image
from mirror.imageresult import ImageResult
from mirror.manifest import Descriptor


@dataclass
class PullResult:
    images: list[ImageResult]
    bundle: Path | None = None
    bundle_digest: str | None = None
    bytes_fetched: int = 0
    bytes_reused: int = 0
    blobs_fetched: int = 0
    blobs_reused: int = 0
    bytes_kept: int = 0  # of bytes_fetched: in partial downloads kept for the next run
    retries: int = 0
    partial: bool = False
    dry_run_bytes: int = 0
    blobs: dict[str, int] = field(default_factory=dict)  # every blob the images need
    unchanged: bool = False  # the output already held exactly this bundle
    # a run that stopped: the images (indexes into `images`) it stopped before their blobs
    # were all in hand; they take the run's error and exit code in the report
    unfinished: list[int] = field(default_factory=list)
    # stopped at the tag rules: `images` are those planned meanwhile (mirror.planning), not
    # yet the run's; the report puts each in its place among the images given
    early: bool = False


def account_image(res: ImageResult, need: list[Descriptor], fetcher: Fetcher, i: int,
             reused: dict[str, int]) -> None:
    """Bytes this image brought in: a blob fetched for several images counts for the first
    one that asked for it (so the totals are the bytes that really crossed the network); the
    cached blobs it uses go into `reused` (the run's total counts each once)."""
    res.bytes_fetched = res.bytes_reused = res.bytes_kept = 0
    for d in need:
        if d.digest in fetcher.fetched and fetcher.owner.get(d.digest) == i:
            res.bytes_fetched += d.size - fetcher.resumed.get(d.digest, 0)
        elif d.digest not in fetcher.fetched:
            res.bytes_reused += d.size
            reused[d.digest] = d.size


def account_unfinished(res: ImageResult, need: list[Descriptor], fetcher: Fetcher,
                        i: int, reused: dict[str, int]) -> None:
    """The same for an image that failed or was stopped: the blobs it finished, the cached
    ones it found, and the bytes of its unfinished downloads kept for the next run."""
    res.bytes_fetched = res.bytes_reused = res.bytes_kept = 0
    for d in need:
        mine = fetcher.owner.get(d.digest) == i
        if d.digest in fetcher.fetched:
            res.bytes_fetched += d.size - fetcher.resumed.get(d.digest, 0) if mine else 0
        elif d.digest in fetcher.reused:
            res.bytes_reused += d.size
            reused[d.digest] = d.size
        elif mine and d.digest in fetcher.kept:
            res.bytes_kept += fetcher.kept[d.digest]
    res.bytes_fetched += res.bytes_kept


def summary_line(spec: ImageSpec, plan: Image, res: ImageResult) -> str:
    s = f"{plan.name}: {plan.root.digest} ({', '.join(plan.platforms) or 'no platform'})"
    if plan.mode == "filter":
        s += f" filtered from index {plan.source_digest}"
    elif plan.mode == "sparse":
        s += " sparse (source index kept)"
    if plan.left_behind:
        s += f"; {len(plan.left_behind)} attestation(s) left behind"
    for old, new in plan.conversions.items():
        s += f"; nested index {old} filtered to {new}" if old in plan.nested_filtered and \
            spec.settings.format == "keep" else f"; converted {old} -> {new}"
    if plan.referrers:
        kinds = sorted({r.kind for r in plan.referrers if r.kind})
        s += f"; {len(plan.referrers)} referrer(s) ({', '.join(kinds)})"
    s += f"; {res.bytes_fetched} bytes fetched, {res.bytes_reused} reused"
    return s
