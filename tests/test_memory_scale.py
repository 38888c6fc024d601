"""Memory at scale (issue 18): a pull's peak must not grow with the number of references by
more than a few KB each. The peak Python heap (tracemalloc, in the mirror process) of a cold
pull of N and of 4N small two-platform references from the real registry, sharing base
layers as a nightly's images do: the difference per added reference was 36 KB when every
blob's placement was a task started at once, the bundle's head one bytearray and every
manifest's parsed JSON kept (72df636); 22.7 KB at 4b34030; 16.6 KB since the manifests'
bytes are read back from the cache's store instead of held, plain descriptors are shared,
planning starts each registry's images as slots free up and per-image objects are slotted
(docs/BENCHMARKS.md)."""

from __future__ import annotations

import gc
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mirror.registry.transport import Transport
from tests.support import imagegen as ig
from tests.support.oracle import ROOT, mirror_env
from tests.support.pusher import push_blob, push_image

N = 10
PER_REFERENCE = 20 << 10  # bytes of peak heap each added reference may cost

# mirror's CLI with tracemalloc on; the peak traced heap goes to the file argv[1]
TRACED = """
import sys, tracemalloc
tracemalloc.start()
from mirror.cli import main
code = main(sys.argv[2:])
open(sys.argv[1], "w").write(str(tracemalloc.get_traced_memory()[1]))
sys.exit(code)
"""


def _peak(tmp: Path, name: str, refs: list[str]) -> int:
    """The peak heap of a cold pull of `refs`, the registry held at 20 requests at once:
    what the run holds per reference is measured, not how many requests it had in flight
    (a registry's small requests grow with the answers' rate, ratelimit.RegistryLimits,
    and 40 references grow them further than 10: 0.6 MB more at 36-54 in flight)."""
    out = tmp / name
    out.mkdir()
    host = refs[0].split("/", 1)[0]
    (out / "images.yaml").write_text(
        f"version: 1\nregistries:\n  {host}:\n    max_concurrency: 20\nimages:\n"
        + "".join(f"  - {r}\n" for r in refs))
    proc = subprocess.run(
        [sys.executable, "-c", TRACED, str(out / "peak"), "pull", "-q", "-f",
         out / "images.yaml", "-o", out / "b.tar", "--cache", out / "cache", "--report",
         out / "r.json"],
        cwd=ROOT, env=mirror_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return int((out / "peak").read_text())


def test_peak_memory_grows_little_per_reference(src_registry, repo_name, rng, tmp_path):
    plats = (ig.AMD64, ig.ARM64)
    base = [[ig.make_layer(rng, 4096) for _ in range(2)] for _ in plats]
    for layers in base:
        for layer in layers:
            push_blob(src_registry.url, repo_name, layer)
    indexes = [ig.make_index([ig.make_image(rng, p, "oci" if t % 2 else "docker",
                                            layers=[*base[k], ig.make_layer(rng, 1024)])
                              for k, p in enumerate(plats)], "oci" if t % 2 else "docker")
               for t in range(4 * N)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda t: push_image(src_registry.url, repo_name, indexes[t],
                                           tags=[f"1.{t}.0"]), range(4 * N)))
    refs = [f"{src_registry.host}/{repo_name}:1.{t}.0" for t in range(4 * N)]
    small = _peak(tmp_path, "small", refs[:N])
    large = _peak(tmp_path, "large", refs)
    per = (large - small) / (3 * N)
    assert per < PER_REFERENCE, \
        f"peak heap {small} bytes for {N} references, {large} for {4 * N}: {per:.0f} each"


async def test_the_pings_https_try_leaves_nothing_to_the_cyclic_collector(src_registry) -> None:
    """A plain-HTTP registry's ping tries HTTPS first; that failed connection was left in
    reference cycles (its exceptions' tracebacks, the frames holding them) with asyncio's
    SSLProtocol and its 256 KiB buffer, freed by the cyclic collector alone, whose first
    collection of a run (mirror.cli._settle_gc: after 10,000 objects) came before or after
    the ping as the images before it allocated: the peak heap above held 280 KB more, or
    not, by chance (15-23 KB per reference at ea6c5bd). With the collector off, nothing of
    it is left once the endpoint is found."""
    def protocols() -> int:
        return sum(type(o).__name__ == "SSLProtocol" for o in gc.get_objects())

    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        async with Transport() as t:
            ep = await t.endpoint(src_registry.host)
            assert ep.base_url.startswith("http://"), ep.base_url
            assert protocols() == 0
    finally:
        if was:
            gc.enable()
