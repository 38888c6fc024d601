"""`mirror inspect`: `--platform` filters what it shows (remote and bundle, text and --json),
as pull selects; a mistyped bundle path fails at once as a bundle, never as a reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import imagegen as ig
from tests.support.oracle import error_line, mirror_ok, run_mirror
from tests.support.pusher import push_blob, push_image, push_nested_index, push_raw_manifest
from tests.test_foreign import ALLOW_LOOPBACK, make_foreign, push_foreign
from tests.test_referrers import seed

NO_MATCH, BUNDLE = 8, 10


def inspect_json(target: object, *platforms: str) -> list[dict]:
    args = [a for p in platforms for a in ("--platform", p)]
    return json.loads(mirror_ok("inspect", target, "--json", *args).stdout)


def digests(doc: dict) -> list[str]:
    return [m["digest"] for m in doc["manifests"]]


def no_match(target: object, *platforms: str) -> str:
    args = [a for p in platforms for a in ("--platform", p)]
    proc = run_mirror("inspect", target, *args)
    assert proc.returncode == NO_MATCH, proc.stderr
    assert proc.stdout == "", proc.stdout
    assert "Traceback" not in proc.stderr
    return error_line(proc)


@pytest.fixture
def multi(src_registry, repo_name, rng):
    """An OCI index: amd64 (with its BuildKit attestation), arm64 without variant, arm/v7."""
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64, ig.ARM_V7)]
    index = ig.make_index(imgs, "oci", attestation=True, rng=rng)
    push_image(src_registry.url, repo_name, index, ["v1"])
    return f"{src_registry.host}/{repo_name}:v1", index


def test_platform_filters_a_remote_index(multi):
    ref, index = multi
    amd64, arm64, armv7 = index.images
    att = index.extra[0]
    assert digests(inspect_json(ref)[0]) == [amd64.digest, arm64.digest, armv7.digest,
                                              att.digest]

    # variant-aware, as pull: arm64/v8 is the arm64 entry without a variant
    for plat in ("linux/arm64", "linux/arm64/v8", "linux/aarch64"):
        (doc,) = inspect_json(ref, plat)
        assert doc["digest"] == index.digest
        assert digests(doc) == [arm64.digest], plat
        assert doc["manifests"][0]["config"]["digest"] == arm64.config.digest
    # linux/arm is arm/v7; the attestation stays with the amd64 image it describes
    assert digests(inspect_json(ref, "linux/arm")[0]) == [armv7.digest]
    assert digests(inspect_json(ref, "linux/amd64")[0]) == [amd64.digest, att.digest]
    # repeatable and comma-separated
    assert digests(inspect_json(ref, "linux/arm64", "linux/arm/v7")[0]) == [
        arm64.digest, armv7.digest]
    assert digests(inspect_json(ref, "linux/arm64,linux/amd64")[0]) == [
        amd64.digest, arm64.digest, att.digest]

    # the text output leaves out the same platforms
    text = mirror_ok("inspect", ref, "--platform", "linux/arm64").stdout
    assert "[linux/arm64]" in text and arm64.config.digest in text
    for other in (amd64, armv7, att):
        assert other.digest not in text and other.config.digest not in text


@pytest.mark.parametrize("plat", ["linux/s390x", "linux/arm/v6", "windows/amd64"])
def test_no_matching_platform_on_a_remote_index_is_exit_8(multi, plat):
    ref, _ = multi
    err = no_match(ref, plat)
    assert ref in err and plat in err and "no matching manifest" in err, err
    assert "linux/amd64, linux/arm64, linux/arm/v7)" in err, err  # never unknown/unknown


def test_single_platform_image_is_matched_by_its_config(src_registry, repo_name, rng):
    img = ig.make_image(rng, ig.ARM64_V8, "docker")
    push_image(src_registry.url, repo_name, img, ["v1"])
    ref = f"{src_registry.host}/{repo_name}:v1"
    (doc,) = inspect_json(ref, "linux/arm64")
    assert doc["digest"] == img.digest and doc["config"]["digest"] == img.config.digest
    err = no_match(ref, "linux/amd64")
    assert ref in err and "linux/arm64" in err, err


@pytest.mark.parametrize("name", ["b.tar", "b.tar.zst"])
def test_platform_filters_a_bundle(multi, tmp_path, name):
    ref, index = multi
    amd64, arm64, armv7 = index.images
    bundle = tmp_path / name
    mirror_ok("pull", ref, "-o", bundle, "--cache", tmp_path / "c", "-q")

    (doc,) = inspect_json(bundle, "linux/arm64/v8")
    assert doc["reference"] == ref and digests(doc) == [arm64.digest]
    assert doc["manifests"][0]["diffIds"] == [la.diff_id for la in arm64.layers]
    assert digests(inspect_json(bundle, "linux/arm/v7", "linux/arm64")[0]) == [
        arm64.digest, armv7.digest]
    text = mirror_ok("inspect", bundle, "--platform", "linux/arm/v7").stdout
    assert armv7.config.digest in text and amd64.config.digest not in text

    err = no_match(bundle, "linux/s390x")
    assert ref in err and "linux/s390x" in err, err
    assert "linux/amd64, linux/arm64, linux/arm/v7)" in err, err


def test_bundle_of_one_platform_lists_only_what_it_has(multi, tmp_path):
    ref, index = multi
    bundle = tmp_path / "arm.tar"
    mirror_ok("pull", ref, "--platform", "linux/arm64", "-o", bundle, "--cache",
              tmp_path / "c", "-q")
    (doc,) = inspect_json(bundle, "linux/arm64")
    assert doc["sourceDigest"] == index.digest and digests(doc) == [index.images[1].digest]
    err = no_match(bundle, "linux/amd64")
    assert ref in err and "(the image has: linux/arm64)" in err, err


def test_bundle_of_several_images_shows_those_that_match(src_registry, repo_name, rng,
                                                         tmp_path):
    arm = ig.make_image(rng, ig.ARM64, "oci")
    amd = ig.make_index([ig.make_image(rng, ig.AMD64, "oci")], "oci")
    push_image(src_registry.url, f"{repo_name}/arm", arm, ["v1"])
    push_image(src_registry.url, f"{repo_name}/amd", amd, ["v1"])
    ref_arm = f"{src_registry.host}/{repo_name}/arm:v1"
    ref_amd = f"{src_registry.host}/{repo_name}/amd:v1"
    bundle = tmp_path / "two.tar"
    mirror_ok("pull", ref_arm, ref_amd, "-o", bundle, "--cache", tmp_path / "c", "-q")
    assert [d["reference"] for d in inspect_json(bundle, "linux/arm64")] == [ref_arm]
    assert [d["reference"] for d in inspect_json(bundle, "linux/amd64")] == [ref_amd]
    err = no_match(bundle, "linux/s390x")
    assert str(bundle) in err and "(its images have: " in err, err
    assert set(err.split("have: ")[1].rstrip(")").split(", ")) == {"linux/arm64", "linux/amd64"}


def test_referrers_follow_the_platform_they_describe(src_registry, repo_name, rng, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    index, imgs, _, tag, sbom = seed(src_registry.url, repo_name, rng, key)  # SBOM of amd64
    bundle = tmp_path / "r.tar"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:1.0", "-o", bundle, "--cache",
              tmp_path / "c", "-q")
    sig_name = f"{src_registry.host}/{repo_name}:{tag}"
    sbom_name = f"{src_registry.host}/{repo_name}@{sbom.digest}"
    names = [d["reference"] for d in inspect_json(bundle, "linux/amd64")]
    assert sig_name in names and sbom_name in names  # the index's signature; amd64's SBOM
    names = [d["reference"] for d in inspect_json(bundle, "linux/arm64")]
    assert sig_name in names and sbom_name not in names


def test_nested_index_is_matched_by_what_it_holds(src_registry, repo_name, rng, tmp_path):
    imgs, inner = push_nested_index(src_registry.url, repo_name, rng)
    ref = f"{src_registry.host}/{repo_name}:1"
    assert digests(inspect_json(ref, "linux/arm64")[0]) == [inner.digest]
    err = no_match(ref, "linux/s390x")
    assert "(the image has: linux/amd64, linux/arm64)" in err, err

    bundle = tmp_path / "n.tar"
    mirror_ok("pull", ref, "--platform", "linux/arm64", "-o", bundle, "--cache",
              tmp_path / "c", "-q")
    assert len(digests(inspect_json(bundle, "linux/arm64")[0])) == 1  # the filtered inner one
    err = no_match(bundle, "linux/amd64")
    assert "(the image has: linux/arm64)" in err, err


# -- nested indexes, conversions, artifact configs, blobs left out -------------------------


def plat(img: ig.Image) -> str:
    return "/".join(img.platform[k] for k in ("os", "architecture", "variant")
                    if k in img.platform)


def leaves(entry: dict) -> list[str]:
    return [m["digest"] for m in entry["manifests"]]


@pytest.fixture
def nested(src_registry, repo_name, rng, tmp_path):
    """The nested index (an OCI index whose one entry is an index of amd64 + arm64), and a
    bundle of all of it."""
    imgs, inner = push_nested_index(src_registry.url, repo_name, rng)
    ref = f"{src_registry.host}/{repo_name}:1"
    bundle = tmp_path / "n.tar"
    mirror_ok("pull", ref, "-o", bundle, "--cache", tmp_path / "c", "-q")
    return ref, bundle, imgs, inner


@pytest.mark.parametrize("where", ["remote", "bundle"])
def test_nested_index_shows_the_images_inside(nested, where):
    ref, bundle, (amd64, arm64), inner = nested
    target = ref if where == "remote" else bundle
    (doc,) = inspect_json(target)
    (entry,) = doc["manifests"]
    assert entry["digest"] == inner.digest and entry["mediaType"] == ig.OCI_INDEX
    assert entry["platform"] is None and "config" not in entry
    assert leaves(entry) == [amd64.digest, arm64.digest]
    for m, img in zip(entry["manifests"], (amd64, arm64), strict=True):
        assert m["platform"] == plat(img)
        assert m["config"]["digest"] == img.config.digest
        assert [la["digest"] for la in m["layers"]] == [la.digest for la in img.layers]
        assert m["diffIds"] == [la.diff_id for la in img.layers]

    text = mirror_ok("inspect", target).stdout
    assert "  [nested index]\n" in text, text
    assert "index digest:" in text and f"{inner.digest}  {ig.OCI_INDEX}" in text, text
    assert "[no platform]" not in text, text
    for img in (amd64, arm64):
        assert f"    [{plat(img)}]\n" in text, text
        assert img.digest in text and img.config.digest in text, text
        assert all(la.diff_id in text for la in img.layers), text

    # --platform filters the images inside; the nested index stays, as what holds them
    (doc,) = inspect_json(target, "linux/arm64")
    (entry,) = doc["manifests"]
    assert entry["digest"] == inner.digest and leaves(entry) == [arm64.digest]
    assert entry["manifests"][0]["config"]["digest"] == arm64.config.digest
    text = mirror_ok("inspect", target, "--platform", "linux/arm64").stdout
    assert arm64.config.digest in text and inner.digest in text, text
    assert amd64.digest not in text and amd64.config.digest not in text, text
    err = no_match(target, "linux/s390x")
    assert "(the image has: linux/amd64, linux/arm64)" in err, err


def test_nested_index_in_a_bundle_of_one_platform(nested, tmp_path):
    ref, _, (amd64, arm64), inner = nested
    bundle = tmp_path / "arm.tar.zst"
    mirror_ok("pull", ref, "--platform", "linux/arm64", "-o", bundle, "--cache",
              tmp_path / "c", "-q")
    for args in ((), ("linux/arm64",)):
        (doc,) = inspect_json(bundle, *args)
        (entry,) = doc["manifests"]  # the filtered inner index
        assert leaves(entry) == [arm64.digest]
        assert entry["manifests"][0]["diffIds"] == [la.diff_id for la in arm64.layers]


def test_format_oci_shows_what_each_platform_manifest_replaced(src_registry, repo_name, rng,
                                                               tmp_path):
    imgs = [ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, "docker")
    push_image(src_registry.url, repo_name, index, ["v1"])
    ref = f"{src_registry.host}/{repo_name}:v1"
    bundle = tmp_path / "oci.tar"
    mirror_ok("pull", ref, "--format", "oci", "-o", bundle, "--cache", tmp_path / "c", "-q")

    (doc,) = inspect_json(bundle)
    assert doc["sourceDigest"] == index.digest and doc["digest"] != index.digest
    olds = [m.get("convertedFrom") for m in doc["manifests"]]
    assert olds == [img.digest for img in imgs], doc
    assert all(m["digest"] != m["convertedFrom"] for m in doc["manifests"])

    text = mirror_ok("inspect", bundle).stdout
    lines = text.splitlines()
    for m in doc["manifests"]:  # each old digest right under the digest that replaced it
        at = next(i for i, x in enumerate(lines) if m["digest"] in x)
        assert "platform manifest digest:" in lines[at], text
        assert lines[at + 1].split() == ["converted", "from:", m["convertedFrom"]], text
    # a pinned child digest finds its replacement with --platform too
    (doc,) = inspect_json(bundle, "linux/arm64")
    assert [m["convertedFrom"] for m in doc["manifests"]] == [imgs[1].digest]


OCI_EMPTY = "application/vnd.oci.empty.v1+json"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
IN_TOTO = "application/vnd.in-toto+json"


def _push_artifact(url: str, repo: str, tag: str, config: ig.Blob, layer: ig.Blob,
                   artifact_type: str | None = None) -> str:
    for blob in (config, layer):
        push_blob(url, repo, blob)
    body = {"schemaVersion": 2, "mediaType": ig.OCI_MANIFEST,
            **({"artifactType": artifact_type} if artifact_type else {}),
            "config": config.descriptor(), "layers": [layer.descriptor()]}
    return push_raw_manifest(url, repo, tag, ig.dump_json(body), ig.OCI_MANIFEST)


def test_only_an_image_config_is_labelled_image_id(src_registry, repo_name, rng):
    url, host = src_registry.url, src_registry.host
    helm_cfg = ig.Blob(b'{"name":"chart","version":"1.0.0"}', HELM_CONFIG)
    _push_artifact(url, repo_name, "chart", helm_cfg, ig.Blob(rng.randbytes(64), HELM_CHART))
    empty = ig.Blob(b"{}", OCI_EMPTY)
    _push_artifact(url, repo_name, "att", empty, ig.Blob(b'{"_type":"x"}', IN_TOTO), IN_TOTO)
    img = ig.make_image(rng, ig.AMD64, "oci")
    push_image(url, repo_name, img, ["img"])

    for tag, cfg in (("chart", helm_cfg), ("att", empty)):
        text = mirror_ok("inspect", f"{host}/{repo_name}:{tag}").stdout
        (line,) = [x for x in text.splitlines() if cfg.digest in x]
        assert "image ID" not in text, text
        assert line.split() == ["config", "digest:", cfg.digest, cfg.media_type], text
    text = mirror_ok("inspect", f"{host}/{repo_name}:img").stdout
    (line,) = [x for x in text.splitlines() if img.config.digest in x]
    assert line.split() == ["config", "digest", "(image", "ID):", img.config.digest], text


def test_a_skipped_foreign_layer_is_marked_not_in_the_bundle(registry_factory, repo_name, rng,
                                                            tmp_path):
    src = registry_factory(urls_allow=ALLOW_LOOPBACK)
    fi = make_foreign(rng, ["http://127.0.0.1:9/layer"])  # never fetched: skip
    push_foreign(src, repo_name, fi, with_blob=False)
    ref = f"{src.host}/{repo_name}:v1"
    bundle = tmp_path / "skip.tar"
    mirror_ok("pull", ref, "-o", bundle, "--cache", tmp_path / "c", "-q")

    (doc,) = inspect_json(bundle)
    foreign, ordinary = doc["layers"]
    assert foreign["digest"] == fi.foreign.digest and foreign["absent"] == "foreign"
    assert "absent" not in ordinary
    text = mirror_ok("inspect", bundle).stdout
    (line,) = [x for x in text.splitlines() if fi.foreign.digest in x and "layer 0" in x]
    # mirror did not carry it: whoever pulls the image at the target fetches it from its urls
    assert line.endswith("(not in the bundle: foreign layer, not carried; the runtime that "
                         "pulls the image fetches it from its urls)"), text
    (line,) = [x for x in text.splitlines() if fi.image.layers[1].digest in x]
    assert "not in the bundle" not in line, text
    # the same image seen in its registry: nothing is said to be left out
    assert "not in the bundle" not in mirror_ok("inspect", ref).stdout


# -- a bundle path that does not exist ------------------------------------------------------


@pytest.mark.parametrize("target", ["bundles/nosuch.tar", "nosuch.tar.zst", "b.tzst", "b.zst",
                                    "b.tar.gz", "./nosuch", "../nosuch", "/nonexistent/b"])
def test_missing_bundle_is_a_bundle_error_at_once(target, tmp_path):
    # -v lists every request and retry: a path looked up as a reference retried for ~6 s
    proc = run_mirror("inspect", target, "-v", cwd=tmp_path)
    assert proc.returncode == BUNDLE, proc.stderr
    err = error_line(proc)
    named = Path(target)  # as load and verify name it (./b is b)
    assert err == f"mirror: error: {named}: cannot open bundle: No such file or directory", err
    assert "registry" not in proc.stderr and "docker.io" not in proc.stderr
    assert proc.stderr.strip() == err, proc.stderr  # no request, no retry: the error alone
    # the same line, and exit code, as load gives for that path
    assert error_line(run_mirror("load", target, "--to", "127.0.0.1:1", cwd=tmp_path)) == err


def test_missing_bundle_with_platform_is_still_a_bundle_error(tmp_path):
    proc = run_mirror("inspect", "bundles/nosuch.tar", "--platform", "linux/arm64",
                      cwd=tmp_path)
    assert proc.returncode == BUNDLE, proc.stderr
    assert "bundles/nosuch.tar: cannot open bundle" in error_line(proc)


def test_an_existing_file_without_a_bundle_name_is_a_bundle(multi, tmp_path):
    ref, index = multi
    mirror_ok("pull", ref, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c", "-q")
    (tmp_path / "b.tar").rename(tmp_path / "carried")
    (doc,) = json.loads(mirror_ok("inspect", "carried", "--json", cwd=tmp_path).stdout)
    assert doc["digest"] == index.digest
