"""umoci and oci-image-tool, the other outside judges, read what mirror writes."""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile

from tests.support import imagegen as ig
from tests.support.oracle import mirror_ok
from tests.support.pusher import push_image


def _layout(bundle, dest):
    with tarfile.open(bundle) as tf:
        tf.extractall(dest, filter="data")
    return dest


def test_oci_image_tool_validates_and_umoci_unpacks(src_registry, repo_name, rng, tmp_path):
    img = ig.make_image(rng, ig.AMD64, fmt="oci", n_layers=2)
    push_image(src_registry.url, repo_name, img, tags=["1"])
    ref = f"{src_registry.host}/{repo_name}:1"
    bundle = tmp_path / "b.tar"
    mirror_ok("pull", ref, "-o", bundle, "--cache", tmp_path / "c")
    layout = _layout(bundle, tmp_path / "layout")

    r = subprocess.run(["oci-image-tool", "validate", "--type", "image", str(layout), "--ref",
                        f"name={ref}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Validation succeeded" in r.stdout, r.stdout + r.stderr

    r = subprocess.run(["umoci", "ls", "--layout", str(layout)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and ref in r.stdout.split(), r.stderr
    rootfs = tmp_path / "unpacked"
    r = subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:{ref}",
                        str(rootfs)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # every file of every layer is there, byte for byte
    for layer in img.layers:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.data))) as lt:
            for m in lt.getmembers():
                if m.isfile():
                    assert (rootfs / "rootfs" / m.name).read_bytes() == \
                        lt.extractfile(m).read()


def test_oci_image_tool_validates_a_converted_docker_image(src_registry, repo_name, rng,
                                                           tmp_path):
    img = ig.make_image(rng, ig.ARM64_V8, fmt="docker")
    push_image(src_registry.url, repo_name, img, tags=["d"])
    ref = f"{src_registry.host}/{repo_name}:d"
    bundle = tmp_path / "b.tar"
    mirror_ok("pull", ref, "--format", "oci", "-o", bundle, "--cache", tmp_path / "c")
    layout = _layout(bundle, tmp_path / "layout")
    r = subprocess.run(["oci-image-tool", "validate", "--type", "image", str(layout), "--ref",
                        f"name={ref}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Validation succeeded" in r.stdout, r.stdout + r.stderr
