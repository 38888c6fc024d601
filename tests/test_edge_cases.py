"""Edge cases found in review: each one a scenario a user can hit."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.support import imagegen as ig
from tests.support.faultproxy import Fault
from tests.support.oracle import (
    ROOT,
    check_layout,
    mirror_cmd,
    mirror_env,
    mirror_ok,
    ok,
    run,
    run_mirror,
    stopped_mirror,
)
from tests.support.pusher import (
    list_tags,
    push_blob,
    push_image,
    push_nested_index,
    push_raw_manifest,
)


@pytest.mark.slow
def test_nested_index_is_filtered_by_platform(src_registry, dst_registry, repo_name, rng,
                                              tmp_path):
    imgs, inner = push_nested_index(src_registry.url, repo_name, rng)
    ref = f"{src_registry.host}/{repo_name}:1"
    out, report = tmp_path / "b.tar", tmp_path / "r.json"
    r = mirror_ok("pull", ref, "--platform", "linux/arm64", "-o", out, "--cache",
                  tmp_path / "c", "--report", report)
    lay = check_layout(out)
    assert "blobs/sha256/" + imgs[1].digest.split(":")[1] in lay.members
    assert "blobs/sha256/" + imgs[0].digest.split(":")[1] not in lay.members
    # the inner index was filtered too: a new digest, reported old -> new like any other
    [new_inner] = [d for d in json.loads(report.read_text())["images"][0]["manifests"]
                   if d not in (imgs[1].digest, lay.index["manifests"][0]["digest"])]
    assert json.loads(report.read_text())["images"][0]["conversions"] == {inner.digest: new_inner}
    assert f"nested index {inner.digest} filtered to {new_inner}" in r.stderr
    shown = mirror_ok("inspect", out).stdout
    assert inner.digest in shown and new_inner in shown
    mirror_ok("load", out, "--to", dst_registry.host)
    r = run_mirror("pull", ref, "--platform", "linux/s390x", "-o", tmp_path / "x.tar",
                   "--cache", tmp_path / "c")
    assert r.returncode == 8 and "linux/amd64, linux/arm64" in r.stderr


def test_failed_run_writes_a_report_and_no_success_is_an_error(src_registry, repo_name,
                                                               tmp_path):
    report = tmp_path / "r.json"
    report.write_text('{"stale": true}')
    missing = f"{src_registry.host}/{repo_name}:nope"
    r = run_mirror("pull", missing, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c",
                   "--report", report)
    assert r.returncode == 5
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == 5 and "nope" in doc["error"]
    assert doc["bundle"] is None and doc["partial"] is False  # no bundle: not a partial one
    assert doc["images"][0]["reference"] == missing and doc["images"][0]["error_code"] == 5
    # --keep-going with every image failed is a failure, not a partial bundle
    r = run_mirror("pull", missing, "--keep-going", "-o", tmp_path / "b.tar", "--cache",
                   tmp_path / "c", "--report", report)
    assert r.returncode == 5, r.stderr
    assert not (tmp_path / "b.tar").exists()


@pytest.mark.parametrize("liar_first", [False, True])
def test_one_digest_listed_with_two_sizes_is_refused(src_registry, repo_name, rng, tmp_path,
                                                     liar_first):
    """Whichever image comes first, the one whose size the registry contradicts is refused;
    the other goes into the bundle."""
    layer = ig.make_layer(rng)
    good = ig.make_image(rng, ig.AMD64, fmt="oci", layers=[layer])
    push_image(src_registry.url, repo_name, good, tags=["good"])
    body = json.loads(good.manifest.data)
    body["layers"][0]["size"] += 10  # the registry accepts it: it does not check sizes
    liar = ig.dump_json(body)
    push_raw_manifest(src_registry.url, repo_name, "liar", liar, ig.OCI_MANIFEST)
    good_ref = f"{src_registry.host}/{repo_name}:good"
    liar_ref = f"{src_registry.host}/{repo_name}:liar"
    out = tmp_path / "b.tar"
    refs = [liar_ref, good_ref] if liar_first else [good_ref, liar_ref]
    r = run_mirror("pull", *refs, "--keep-going", "-o", out, "--cache", tmp_path / "c")
    assert r.returncode == 13, r.stderr
    assert (f"blob {layer.digest} is listed with {layer.size + 10} bytes, but the registry "
            f"says {layer.size}") in r.stderr
    assert f"is listed with {layer.size} bytes" not in r.stderr
    check_layout(out)
    assert mirror_ok("verify", out)
    with tarfile.open(out) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert [m["digest"] for m in index["manifests"]] == [good.manifest.digest]


def _rewrite_member(src: Path, dst: Path, name: str, data: bytes) -> None:
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin:
            body = tin.extractfile(m).read() if m.isfile() else None
            if m.name == name:
                body = data
                m.size = len(data)
            tout.addfile(m, io.BytesIO(body) if body is not None else None)


def test_tampered_manifest_is_an_integrity_error(src_registry, dst_registry, repo_name, rng,
                                                 tmp_path):
    img = ig.make_image(rng, ig.AMD64, fmt="oci")
    push_image(src_registry.url, repo_name, img, tags=["t"])
    good = tmp_path / "good.tar"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:t", "-o", good, "--cache",
              tmp_path / "c")
    bad = tmp_path / "bad.tar"
    data = bytearray(img.manifest.data)
    data[5] ^= 0x01
    _rewrite_member(good, bad, "blobs/sha256/" + img.digest.split(":")[1], bytes(data))
    r = run_mirror("load", bad, "--to", dst_registry.host)
    assert r.returncode == 7 and img.digest in r.stderr, r.stderr
    assert list_tags(dst_registry.url, repo_name) == []
    r = run_mirror("verify", bad)
    assert r.returncode == 7 and img.digest in r.stdout


def test_two_registries_one_target_name_is_refused(src_registry, registry_factory,
                                                   dst_registry, rng, tmp_path):
    other = registry_factory()
    a = ig.make_image(rng, ig.AMD64, fmt="oci")
    b = ig.make_image(rng, ig.AMD64, fmt="oci")
    push_image(src_registry.url, "org/app", a, tags=["1"])
    push_image(other.url, "org/app", b, tags=["1"])
    out = tmp_path / "b.tar"
    # mirror pull refuses to write such a bundle (test_bad_input); an OCI layout that another
    # tool wrote with both names (skopeo, oci:DIR) is refused by the load, pushing nothing
    r = run_mirror("pull", f"{src_registry.host}/org/app:1", f"{other.host}/org/app:1",
                   "-o", out, "--cache", tmp_path / "c")
    assert r.returncode == 2 and "would both be loaded as" in r.stderr and not out.exists()
    layout = tmp_path / "layout"
    for reg in (src_registry, other):
        ref = f"{reg.host}/org/app:1"
        ok(run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}",
                f"oci:{layout}:{ref}"]))
    r = run_mirror("load", layout, "--to", f"{dst_registry.host}/clash")
    assert r.returncode == 10 and "would both be pushed as" in r.stderr, r.stderr
    assert list_tags(dst_registry.url, "clash/org/app") == []


@pytest.mark.parametrize("fmt", ["tar", "tar.zst"])
def test_load_when_the_registry_refuses_mounts(src_registry, dst_registry, faultproxy, rng,
                                               repo_name, tmp_path, fmt):
    """Every mount refused (400): the shared layer is uploaded into each repository instead;
    the upload session the registry opened for a refused mount is used (.tar) or cancelled
    (.tar.zst, whose stream sends the blob on the next pass, in a session of its own): none is
    left open in the registry; and the report counts every byte sent."""
    shared = ig.make_layer(rng)
    one = ig.make_image(rng, ig.AMD64, fmt="oci", layers=[shared])
    two = ig.make_image(rng, ig.AMD64, fmt="oci", layers=[shared, ig.make_layer(rng)])
    push_image(src_registry.url, f"{repo_name}/one", one, tags=["1"])
    push_image(src_registry.url, f"{repo_name}/two", two, tags=["1"])
    out = tmp_path / f"b.{fmt}"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}/one:1",
              f"{src_registry.host}/{repo_name}/two:1", "-o", out, "--cache", tmp_path / "c")
    proxy = faultproxy(dst_registry.url)
    proxy.add(Fault("status", method="POST", path=r"mount=", status=400, times=None))
    report = tmp_path / "r.json"
    mirror_ok("load", out, "--to", f"{proxy.host}/nomount", "--report", report)
    for name, img in (("one", one), ("two", two)):
        assert list_tags(dst_registry.url, f"nomount/{repo_name}/{name}") == ["1"]
        for blob in img.all_blobs():
            assert push_blob(dst_registry.url, f"nomount/{repo_name}/{name}", blob) is False
    sent = sum(b.size for b in one.all_blobs()) + sum(b.size for b in two.all_blobs())
    doc = json.loads(report.read_text())
    assert (doc["blobs_mounted"], doc["bytes_pushed"]) == (0, sent), doc
    # an open session holds files (startedat, data); a cancelled one leaves empty directories
    mine = dst_registry.storage / "docker/registry/v2/repositories/nomount" / repo_name
    assert mine.is_dir()  # (the registry is shared: other tests' failed loads stay out)
    open_sessions = [p for p in mine.rglob("_uploads/*/*") if p.is_file()]
    assert open_sessions == [], open_sessions


def _open_sessions(reg, prefix: str) -> list[Path]:
    """Upload sessions the registry holds under repositories PREFIX/... (an open session
    holds files: startedat, data; a cancelled one leaves empty directories at most)."""
    root = reg.storage / "docker/registry/v2/repositories" / prefix
    return [p for p in root.rglob("_uploads/*/*") if p.is_file()]


@pytest.mark.parametrize(("sig", "code", "deletes_hang"),
                         [(signal.SIGINT, 130, False), (signal.SIGTERM, 143, False),
                          (signal.SIGINT, 130, True)],
                         ids=["sigint-130", "sigterm-143", "delete-hangs"])
@pytest.mark.slow
def test_interrupted_load_cancels_its_upload_sessions(src_registry, dst_registry, faultproxy,
                                                      rng, repo_name, tmp_path, sig, code,
                                                      deletes_hang):
    """Ctrl-C or SIGTERM in the middle of a big blob's upload (its session open, its one
    streamed PATCH hanging, and sessions for the other blobs): every session the load
    opened is cancelled (DELETE) before it exits 130/143, promptly even though the PATCH
    hangs; none is left holding the registry's disk. A registry that does not answer the
    DELETEs holds the exit up for a few seconds only."""
    big = ig.make_layer(rng, 40 << 20, compressed=False)  # over 16 MiB: a PATCH, not a PUT
    img = ig.make_image(rng, ig.AMD64, fmt="oci", layers=[big, ig.make_layer(rng)])
    others = [ig.make_image(rng, ig.AMD64, fmt="oci") for _ in range(3)]
    refs = []
    for i, im in enumerate([img, *others]):
        push_image(src_registry.url, f"{repo_name}/i{i}", im, tags=["1"])
        refs.append(f"{src_registry.host}/{repo_name}/i{i}:1")
    out = tmp_path / "b.tar"
    mirror_ok("pull", *refs, "-o", out, "--cache", tmp_path / "c", "-q")
    proxy = faultproxy(dst_registry.url)
    stall = proxy.add(Fault("stall", method="PATCH", delay=60, times=None))
    if deletes_hang:
        proxy.add(Fault("stall", method="DELETE", delay=60, times=None))
    prefix = f"stop-{repo_name.rsplit('-', 1)[-1]}"
    proc = subprocess.Popen(mirror_cmd("load", out, "--to", f"{proxy.host}/{prefix}", "-q"),
                            cwd=ROOT, env=mirror_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while stall.hits == 0:  # the big layer's PATCH is held
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the upload did not get going"
            time.sleep(0.05)
        time.sleep(0.5)  # the small blobs' sessions are open or done by now
        assert _open_sessions(dst_registry, prefix)  # what an interrupted load used to leave
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # and its stderr pipe closed, whatever failed above
    assert proc.returncode == code, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert took < 15, took
    if not deletes_hang:
        assert _open_sessions(dst_registry, prefix) == []
    assert list_tags(dst_registry.url, f"{prefix}/{repo_name}/i0") == []  # no tag: stopped


@pytest.mark.parametrize(("command", "sig", "code", "held"),
                         [("load", signal.SIGINT, 130, 2.0), ("load", signal.SIGTERM, 143, 2.0),
                          ("sync", signal.SIGTERM, 143, 2.0),
                          ("load", signal.SIGINT, 130, 60.0)],
                         ids=["sigint-130", "sigterm-143", "sync", "answer-never-comes"])
def test_a_push_stopped_while_a_session_opens_cancels_it(src_registry, dst_registry,
                                                         faultproxy, rng, repo_name,
                                                         tmp_path, command, sig, code, held):
    """Ctrl-C or SIGTERM while the registry's answer to the POST that opens an upload
    session is on its way back (the registry holds the session, the run not yet its
    Location): the session stayed open at the registry, empty, for its upload purging
    (operator pass o18: 1-4 after a stopped sync). The load (or sync) waits for that
    answer, within the CANCEL_WITHIN (5 s) it gives its sessions' DELETEs, and cancels the
    session; an answer that never comes holds the stop no longer than that. A sync's
    uploads of small blobs go beside -j 1 (as a pull's downloads): each session it opened
    is cancelled."""
    img = ig.make_image(rng, ig.AMD64, fmt="oci")
    push_image(src_registry.url, repo_name, img, tags=["1"])
    out = tmp_path / "b.tar"
    if command == "load":
        mirror_ok("pull", f"{src_registry.host}/{repo_name}:1", "-o", out,
                  "--cache", tmp_path / "c", "-q")
        args: tuple[object, ...] = ("load", out)
    else:
        args = ("sync", f"{src_registry.host}/{repo_name}:1", "--cache", tmp_path / "c",
                "--lock-file", tmp_path / "images.lock")
    proxy = faultproxy(dst_registry.url)
    proxy.add(Fault("late", method="POST", path=r"/blobs/uploads/$", delay=held))
    prefix = f"opening-{repo_name.rsplit('-', 1)[-1]}"
    signalled: list[float] = []

    def opened() -> bool:  # the registry answered the POST: it holds the session
        if not any(m == "POST" for m, _, _ in proxy.requests):
            return False
        assert _open_sessions(dst_registry, prefix)
        signalled.append(time.monotonic())
        return True

    proc = stopped_mirror(opened, "no upload session opened", *args,
                          "--to", f"{proxy.host}/{prefix}", "-j", "1", "-q", sig=sig)
    took = time.monotonic() - signalled[0]
    assert proc.returncode == code, proc.stderr
    assert "interrupted" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "pending" not in proc.stderr and "never retrieved" not in proc.stderr, proc.stderr
    posts = [m for m, _, _ in proxy.requests if m == "POST"]
    # a sync's: up to the config's and the two layers'
    assert posts == ["POST"] if command == "load" else 1 <= len(posts) <= 3, proxy.requests
    if held < 5:
        assert _open_sessions(dst_registry, prefix) == []
        deletes = proxy.paths("DELETE")
        assert len(deletes) == len(posts) and all("/blobs/uploads/" in d for d in deletes), \
            proxy.requests
    else:  # given up after CANCEL_WITHIN: the session left to the registry's purging
        assert took < 8.5, took


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["sigint-130", "sigterm-143"])
def test_a_session_post_not_sent_when_the_push_stops_is_never_sent(src_registry, dst_registry,
                                                                   faultproxy, rng, repo_name,
                                                                   tmp_path, sig, code):
    """Ctrl-C or SIGTERM while the POST that would open an upload session waits to be sent
    (here for its second try: the registry's 503 with Retry-After pauses the host): the
    POST went all the same once the stop came, shielded as one on its way (4196f52), and
    the session it opened was DELETEd, two requests after the stop. It is dropped now:
    no POST after the stop, nothing to cancel."""
    img = ig.make_image(rng, ig.AMD64, fmt="oci")
    push_image(src_registry.url, repo_name, img, tags=["1"])
    out = tmp_path / "b.tar"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:1", "-o", out, "--cache",
              tmp_path / "c", "-q")
    proxy = faultproxy(dst_registry.url)
    busy = proxy.add(Fault("status", method="POST", path=r"/blobs/uploads/$", status=503,
                           headers={"Retry-After": "3"}))
    prefix = f"unsent-{repo_name.rsplit('-', 1)[-1]}"
    proc = stopped_mirror(lambda: busy.hits > 0, "no upload session asked for", "load", out,
                          "--to", f"{proxy.host}/{prefix}", "-j", "1", "-q", sig=sig,
                          after=0.3)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and "pending" not in proc.stderr, proc.stderr
    assert len(proxy.paths("POST")) == 1, proxy.requests  # the one answered 503
    assert proxy.paths("DELETE") == [], proxy.requests
    assert _open_sessions(dst_registry, prefix) == []


def test_manifest_arriving_in_small_pieces_is_read_whole(src_registry, faultproxy, repo_name,
                                                         rng, tmp_path):
    imgs = [ig.make_image(rng, p, fmt="oci") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, fmt="oci")
    push_image(src_registry.url, repo_name, index, tags=["s"])
    proxy = faultproxy(src_registry.url)
    proxy.add(Fault("slow", path=r"/manifests/", times=None, delay=0.02, chunk=100))
    out = tmp_path / "b.tar"
    mirror_ok("pull", f"{proxy.host}/{repo_name}:s", "-o", out, "--cache", tmp_path / "c")
    assert check_layout(out).entry(f"{proxy.host}/{repo_name}:s")["digest"] == index.digest


def test_credentials_never_go_to_another_origin(registry_factory, src_registry, rng,
                                                tmp_path):
    """A registry whose upload Location names another host: that host gets no Authorization
    (REFERENCE.md 6.4 step 3, pitfall 12)."""
    import base64
    import threading
    import urllib.error
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.support.registry import free_port

    seen: list[tuple[str, str | None]] = []
    port = free_port()
    reg = registry_factory(htpasswd=("alice", "s3cret"),
                           extra_config={"http": {"host": f"http://localhost:{port}"}})

    class Relay(BaseHTTPRequestHandler):
        def _do(self) -> None:
            seen.append((self.command, self.headers.get("Authorization")))
            n = int(self.headers.get("Content-Length") or 0)
            req = urllib.request.Request(
                reg.url + self.path, data=self.rfile.read(n) if n else None,
                method=self.command,
                headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
            try:
                r = urllib.request.urlopen(req, timeout=30)
            except urllib.error.HTTPError as e:
                r = e
            body = r.read()
            self.send_response(r.status if hasattr(r, "status") else r.code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = do_HEAD = _do

        def log_message(self, *args: object) -> None:
            pass

    relay = ThreadingHTTPServer(("127.0.0.1", port), Relay)
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    try:
        img = ig.make_image(rng, ig.AMD64, fmt="oci")
        push_image(src_registry.url, "cred/leak", img, tags=["1"])
        out = tmp_path / "b.tar"
        mirror_ok("pull", f"{src_registry.host}/cred/leak:1", "-o", out, "--cache",
                  tmp_path / "c")
        auth = tmp_path / "auth.json"
        auth.write_text(json.dumps({"auths": {reg.host: {
            "auth": base64.b64encode(b"alice:s3cret").decode()}}}))
        run_mirror("load", out, "--to", reg.host, "--authfile", auth, "--retries", "0")
        assert seen, "the upload never went to the Location's host"
        assert all(a is None for _, a in seen), seen
    finally:
        relay.shutdown()
        relay.server_close()


def test_blob_already_in_another_target_repository_is_mounted_not_uploaded(
        src_registry, dst_registry, faultproxy, repo_name, rng, tmp_path):
    shared = ig.make_layer(rng, size=64 << 10)
    first = ig.make_image(rng, ig.AMD64, fmt="oci", layers=[shared])
    second = ig.make_image(rng, ig.AMD64, fmt="oci", layers=[shared, ig.make_layer(rng)])
    push_image(src_registry.url, f"{repo_name}/a", first, tags=["1"])
    push_image(src_registry.url, f"{repo_name}/b", second, tags=["1"])
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}/a:1", "-o", a, "--cache", tmp_path / "c")
    # the second bundle carries both images (a nightly bundle); image a was loaded before
    mirror_ok("pull", f"{src_registry.host}/{repo_name}/a:1", f"{src_registry.host}/{repo_name}/b:1",
              "-o", b, "--cache", tmp_path / "c")
    mirror_ok("load", a, "--to", dst_registry.host)
    proxy = faultproxy(dst_registry.url)
    dry = mirror_ok("load", b, "--to", proxy.host, "--dry-run").stdout
    assert f"blob {shared.digest} -> {repo_name}/b (mount from {repo_name}/a)" in dry
    proxy.reset_counters()
    mirror_ok("load", b, "--to", proxy.host)
    posts = [p for m, p, _ in proxy.requests if m == "POST"]
    assert any("mount=" in p or "uploads" in p for p in posts)
    assert proxy.bytes_served < shared.size  # the shared layer did not travel again
    assert push_blob(dst_registry.url, f"{repo_name}/b", shared) is False


def test_inspect_reads_configs_out_of_a_zstd_bundle(src_registry, repo_name, rng, tmp_path):
    img = ig.make_image(rng, ig.ARM64_V8, fmt="docker")
    push_image(src_registry.url, repo_name, img, tags=["z"])
    out = tmp_path / "b.tar.zst"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:z", "-o", out, "--cache", tmp_path / "c")
    doc = json.loads(mirror_ok("inspect", out, "--json").stdout)[0]
    assert doc["config"]["digest"] == img.config.digest
    assert doc["diffIds"] == [la.diff_id for la in img.layers]
    assert doc["platform"] == "linux/arm64/v8"


def test_damaged_cache_entry_is_fetched_again_and_the_sha256_still_matches(
        src_registry, repo_name, rng, tmp_path):
    img = ig.make_image(rng, ig.AMD64, fmt="oci", layer_size=256 << 10)
    push_image(src_registry.url, repo_name, img, tags=["v"])
    ref, cache = f"{src_registry.host}/{repo_name}:v", tmp_path / "cache"
    mirror_ok("pull", ref, "-o", tmp_path / "a.tar", "--cache", cache)
    for layer in img.layers:  # same size, one byte different: only a hash can tell
        path = cache / "blobs" / "sha256" / layer.digest.split(":")[1]
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    out = tmp_path / "b.tar"
    r = mirror_ok("pull", ref, "-o", out, "--cache", cache, "--report", tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["bytes_fetched"] == \
        sum(la.size for la in img.layers)
    side = (tmp_path / "b.tar.sha256").read_text().split()[0]
    assert side == hashlib.sha256(out.read_bytes()).hexdigest(), r.stderr
    assert mirror_ok("verify", out)
    check_layout(out)


def _file_size_limit(limit: int):
    def limit_writes() -> None:  # in the child: files may not grow past `limit` bytes
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_writes


def test_a_bundle_that_cannot_be_written_is_one_line_naming_it(src_registry, repo_name, rng,
                                                               tmp_path):
    """The disk refuses the bundle (here a file size limit, as a full disk or a quota
    would): one line naming the file, exit 1, no bundle and no `.partial` left; the next
    run, with room, writes it."""
    img = ig.make_image(rng, ig.AMD64, "oci", layers=[ig.make_layer(rng, 768 << 10),
                                                      ig.make_layer(rng, 768 << 10)])
    push_image(src_registry.url, repo_name, img, tags=["v1"])
    ref = f"{src_registry.host}/{repo_name}:v1"
    out = tmp_path / "out.tar"
    args = ["pull", ref, "-o", out, "--cache", tmp_path / "c", "-q"]
    r = subprocess.run(mirror_cmd(*args), cwd=ROOT, env=mirror_env(), capture_output=True,
                       text=True, timeout=120, preexec_fn=_file_size_limit(1 << 20))
    assert r.returncode == 1, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert lines == [f"mirror: error: {out}.partial: {os.strerror(errno.EFBIG)}"], r.stderr
    assert not out.exists() and not out.with_name("out.tar.partial").exists()
    r = run_mirror(*args)
    assert r.returncode == 0, r.stderr
    check_layout(out)
    assert mirror_ok("verify", out)
