"""The benchmark (scripts/bench.py, issue 6) keeps working: a tiny run completes and prints
every row of its table. No timing is asserted; the numbers of a tiny run mean nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ROWS = (
    "limit: curl -o (download)",
    "limit: openssl dgst -sha256",
    "limit: max (overlapped)",
    "limit: sum (no overlap)",
    "pull: mirror pull",
    "pull: mirror pull again (warm cache)",
    "pull: mirror pull, warm cache, new -o",
    "load: skopeo copy oci-archive: -> reg",
    "load: mirror load",
    "sync: skopeo sync reg -> reg",
    "sync: mirror sync reg -> reg",
    "serve: read the largest blob (dd)",
    "serve: mirror serve, 1 blob (curl)",
    "serve: docker-registry, 1 blob (curl)",
    "serve: mirror serve, 1000 small (curl)",
    "serve: docker-registry, 1000 small (curl)",
)
SKOPEO_PULL = {"A": "pull: skopeo copy --all -> oci:",
               "B": "pull: skopeo copy --override-arch -> oci:"}


@pytest.mark.slow
def test_tiny_benchmark_prints_every_row(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--scale", "0.002", "--repeat",
         "1", "--json", str(out_json), "--tmp", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    text = proc.stdout
    assert "machine: " in text
    blocks = text.split("data set B:")
    assert len(blocks) == 2 and "data set A:" in blocks[0], text
    for name, block in zip("AB", blocks, strict=True):
        lines = block.splitlines()
        for row in (*ROWS, SKOPEO_PULL[name]):
            # a row: two spaces, the label padded to 42, then the numbers
            assert any(line.startswith(f"  {row:42} ") for line in lines), \
                f"data set {name}: no row {row!r} in:\n{block}"
        assert f"targets (issue 6), data set {name}" in block
        assert "PASS" in block or "FAIL" in block
    # the run cleaned up after itself (registries, bundles, caches, archives)
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]

    doc = json.loads(out_json.read_text())
    assert set(doc["datasets"]) == {"A", "B"}
    a, b = doc["datasets"]["A"], doc["datasets"]["B"]
    assert (a["images"], b["images"]) == (20, 1)
    for ds in (a, b):
        rows = {r["label"]: r for r in ds["rows"]}
        assert len(rows) == len(ROWS) + 1
        for r in rows.values():
            assert r["wall"] >= 0 and r["rss_kib"] > 0
        # functional facts, not timings: the cold pull fetched every unique blob, the warm
        # rerun fetched nothing, the load pushed every byte
        assert rows["pull: mirror pull"]["extra"]["blobs_fetched"] == ds["unique_blobs"]
        assert rows["pull: mirror pull again (warm cache)"]["extra"]["bytes_fetched"] == 0
        assert rows["load: mirror load"]["extra"]["bytes_pushed"] == ds["bytes"]
        assert rows["sync: mirror sync reg -> reg"]["extra"]["bytes_pushed"] == ds["bytes"]


S_ROWS = (
    "start: python3 -c pass",
    "start: mirror --version",
    "lo: skopeo sync -> dir: (16 refs)",
    "lo: skopeo sync again, new dir:",
    "lo: mirror pull -j 4",
    "lo: mirror pull -j 4 rerun, nothing new",
    "lo: the rerun's requests alone",
    "50ms: skopeo sync -> dir: (8 refs)",
    "50ms: skopeo sync again, new dir:",
    "50ms: mirror pull -j 4",
    "50ms: mirror pull -j 4 rerun, nothing new",
    "50ms: mirror pull -j 16",
    "50ms: mirror pull -j 16 rerun, nothing new",
)


@pytest.mark.slow
def test_tiny_scale_benchmark_counts_requests(tmp_path: Path) -> None:
    """Data set S (issue 18) runs only when asked; at scale 0.04, 2 repositories x 8 tags (8
    references through the 50 ms proxy). Requests are counted from the registry's access log:
    a cold pull GETs each unique blob once, a rerun none, and mirror's report counts what the
    registry answered (the script fails otherwise)."""
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--only", "S", "--scale", "0.04",
         "--json", str(out_json), "--tmp", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert "data set S:" in proc.stdout and "targets (issue 18), data set S" in proc.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]
    (s,) = json.loads(out_json.read_text())["datasets"].values()
    assert s["images"] == 16
    rows = {r["label"]: r for r in s["rows"]}
    assert list(rows) == list(S_ROWS)
    for label in S_ROWS:
        assert f"  {label:42} " in proc.stdout, label
    for label, r in rows.items():
        assert r["wall"] > 0 and r["rss_kib"] > 0
        if not label.startswith("start:"):
            assert r["extra"]["requests"] > 0, label
    blobs = {"lo": s["unique_blobs"]}
    for where in ("lo", "50ms"):
        for j in (4,) if where == "lo" else (4, 16):
            cold = rows[f"{where}: mirror pull -j {j}"]["extra"]
            warm = rows[f"{where}: mirror pull -j {j} rerun, nothing new"]["extra"]
            assert cold["report_requests"] == cold["requests"]
            assert warm["report_requests"] == warm["requests"]
            assert cold["req blob GET"] == cold["blobs_fetched"] == blobs.get(
                where, cold["blobs_fetched"])
            assert warm["blobs_fetched"] == 0 and "req blob GET" not in warm
    # the bare client's requests are the rerun's, kind by kind
    floor = rows["lo: the rerun's requests alone"]["extra"]
    warm = rows["lo: mirror pull -j 4 rerun, nothing new"]["extra"]
    assert {k: v for k, v in floor.items() if k.startswith("req")} == {
        k: v for k, v in warm.items() if k.startswith("req")}, (floor, warm)
    # skopeo keeps nothing: its rerun fetches every blob again
    for where in ("lo", "50ms"):
        assert rows[f"{where}: skopeo sync again, new dir:"]["extra"]["req blob GET"] > 0
