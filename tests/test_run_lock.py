"""The run lock (mirror/store/lock.py): a run leaves no lock file behind, however it ends; a
second run on the same output exits 12 naming the holder; and removing the file on release
never lets two holders in at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mirror.errors import LockHeld
from mirror.store.lock import RunLock
from tests.support import imagegen as ig
from tests.support.oracle import downloading, mirror_env, mirror_ok, run_mirror
from tests.support.pusher import push_image, slow_image


def lock_files(*dirs: Path) -> list[Path]:
    """Every run-lock file under `dirs`: OUT.lock beside a bundle, `lock` in a cache."""
    return sorted(p for d in dirs for p in d.rglob("*")
                  if p.name.endswith(".lock") or p.name == "lock")


def test_pull_leaves_no_lock_file_whether_it_succeeds_fails_or_dry_runs(
        src_registry, repo_name, rng, tmp_path):
    img = ig.make_image(rng, ig.AMD64)
    push_image(src_registry.url, repo_name, img, tags=["1"])
    ref = f"{src_registry.host}/{repo_name}:1"
    out, cache = tmp_path / "out", tmp_path / "cache"
    mirror_ok("pull", ref, "-o", out / "ok.tar", "--cache", cache)
    assert (out / "ok.tar").exists()
    assert lock_files(tmp_path) == []
    r = run_mirror("pull", f"{src_registry.host}/{repo_name}:nope", "-o", out / "e1.tar",
                   "--cache", cache)
    assert r.returncode == 5, r.stderr  # a 404
    assert lock_files(tmp_path) == []
    mirror_ok("pull", ref, "--dry-run", "-o", out / "dry.tar", "--cache", cache)
    assert lock_files(tmp_path) == []
    assert sorted(p.name for p in out.iterdir()) == ["ok.tar", "ok.tar.sha256"]


def test_pull_into_a_directory_leaves_no_lock_beside_it(src_registry, repo_name, rng, tmp_path):
    img = ig.make_image(rng, ig.AMD64)
    push_image(src_registry.url, repo_name, img, tags=["1"])
    (tmp_path / "bundles").mkdir()
    run_mirror("pull", f"{src_registry.host}/{repo_name}:1", "-o", "bundles/", "--cache",
               tmp_path / "cache", cwd=tmp_path)
    assert lock_files(tmp_path) == []


def test_second_pull_of_the_same_output_exits_12_naming_the_holder(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """Two caches, one -o: the output lock is what keeps them apart."""
    proxy, ref = slow_image(src_registry.url, faultproxy, repo_name, rng)
    out = tmp_path / "b.tar"
    with downloading(proxy, "pull", ref, "-o", out, "--cache", tmp_path / "c1") as first:
        r = run_mirror("pull", ref, "-o", out, "--cache", tmp_path / "c2")
        assert r.returncode == 12, r.stderr
        assert (f"output {out} is in use by another mirror run (pid {first.pid}): "
                f"lock {out}.lock") in r.stderr, r.stderr
        assert "hint: wait for it to finish" in r.stderr
    assert out.exists()
    assert lock_files(tmp_path) == []


def test_lock_file_exists_while_held_and_a_second_taker_is_refused(tmp_path):
    path = tmp_path / "x.lock"
    with RunLock(path, "output x"):
        assert path.read_text() == str(os.getpid())
        with pytest.raises(LockHeld, match=rf"\(pid {os.getpid()}\): lock {path}"):
            RunLock(path, "output x").__enter__()
    assert not path.exists()
    with RunLock(path, "output x"):  # and it can be taken again
        assert path.exists()
    assert not path.exists()


STRESS = textwrap.dedent("""
    import os, sys, threading, time
    from mirror.errors import LockHeld
    from mirror.store.lock import RunLock

    path, log, until = sys.argv[1], sys.argv[2], float(sys.argv[3])

    def worker(tag):
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        while time.time() < until:
            try:
                with RunLock(path, "stress"):
                    os.write(fd, f"+{tag}\\n".encode())
                    time.sleep(0.0002)
                    os.write(fd, f"-{tag}\\n".encode())
            except LockHeld:
                pass
        os.close(fd)

    threads = [threading.Thread(target=worker, args=(f"{os.getpid()}.{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
""")


def test_taking_and_releasing_in_a_loop_never_lets_two_hold_the_lock(tmp_path):
    """4 processes x 3 threads take the same lock over and over for 2 seconds (each its own
    open file, so flock sets them apart as it does separate runs); every holder writes
    +tag on entry and -tag on exit to one O_APPEND log, which must strictly alternate."""
    path, log = tmp_path / "stress.lock", tmp_path / "log"
    log.touch()
    until = time.time() + 2.5  # the interpreters start within the first half second
    procs = [subprocess.Popen([sys.executable, "-c", STRESS, str(path), str(log), str(until)],
                              env=mirror_env(), stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    lines = log.read_text().splitlines()
    holders = {ln[1:] for ln in lines}
    assert len(lines) >= 100 and len({h.split(".")[0] for h in holders}) == 4, (
        len(lines), holders)
    for i in range(0, len(lines), 2):
        enter, leave = lines[i], lines[i + 1] if i + 1 < len(lines) else ""
        assert enter[0] == "+" and leave == "-" + enter[1:], (
            f"two holders at once at line {i}: {lines[max(0, i - 2):i + 4]}")
    assert not path.exists()


def test_dry_run_takes_no_output_lock_and_a_run_drops_a_killed_runs_partial(
        src_registry, repo_name, rng, tmp_path):
    """While another run holds OUT (its lock taken here), `--dry-run -o OUT` still works: it
    writes nothing, so it needs no output lock; a real pull of OUT exits 12. And the next run
    that holds OUT removes the `OUT.partial` a killed run left (it used to stay until a run
    rewrote the bundle; an unchanged run never did)."""
    img = ig.make_image(rng, ig.AMD64)
    push_image(src_registry.url, repo_name, img, tags=["1"])
    ref = f"{src_registry.host}/{repo_name}:1"
    out, cache = tmp_path / "b.tar", tmp_path / "cache"
    mirror_ok("pull", ref, "-o", out, "--cache", cache, "-q")
    with RunLock(out.with_name("b.tar.lock"), f"output {out}"):
        r = run_mirror("pull", ref, "--dry-run", "-o", out, "--cache", tmp_path / "c2")
        assert r.returncode == 0 and "would fetch" in r.stdout, r.stderr
        r = run_mirror("pull", ref, "-o", out, "--cache", tmp_path / "c2")
        assert r.returncode == 12, r.stderr
    partial = out.with_name("b.tar.partial")
    partial.write_bytes(b"\0" * 4096)  # what a SIGKILLed run leaves
    r = mirror_ok("pull", ref, "-o", out, "--cache", cache)
    assert "unchanged" in r.stderr and not partial.exists()


def test_a_second_run_writing_the_same_lock_file_exits_12(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """Two caches, two bundles, one images.lock: a pull holds `images.lock.lock` from its
    start to its end, so `mirror lock` or another pull with another cache exits 12 instead
    of the last to finish leaving its images beside the other's bundle (a cron script then
    copies the wrong images.lock as the next night's --base). A dry run writes no lock file
    and goes on; when the pull ends, images.lock is its own and nothing else is left."""
    proxy, ref = slow_image(src_registry.url, faultproxy, repo_name, rng)
    conf = tmp_path / "images.yaml"
    conf.write_text(f"images:\n  - {ref}\n")
    lock = tmp_path / "images.lock"
    with downloading(proxy, "pull", "-f", conf, "-o", tmp_path / "a.tar",
                     "--cache", tmp_path / "c1") as first:
        held = (f"lock file {lock} is in use by another mirror run (pid {first.pid}): "
                f"lock {lock}.lock")
        for cmd in (("lock", "-f", conf, "--cache", tmp_path / "c2"),
                    ("pull", "-f", conf, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c3")):
            r = run_mirror(*cmd)
            assert r.returncode == 12, r.stderr
            assert held in r.stderr, r.stderr
        assert not (tmp_path / "b.tar").exists()
        r = run_mirror("pull", "-f", conf, "--dry-run", "--cache", tmp_path / "c2")
        assert r.returncode == 0 and "would fetch" in r.stdout, r.stderr
    assert '"a.tar"' in lock.read_text()  # the lock file names the bundle written with it
    assert not lock.with_name("images.lock.lock").exists()
    assert not (tmp_path / "a.tar.lock").exists() and not (tmp_path / "c1" / "lock").exists()
    mirror_ok("lock", "-f", conf, "--cache", tmp_path / "c1", "-q")
