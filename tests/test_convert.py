"""Issue 4: Docker <-> OCI conversion, schema 1, non-image entries.

Unit tests convert the real manifests quoted in ../shared/seeds (busybox, alpine 3.13,
redis:alpine, a private-registry busybox, the MCR foreign-layer example, the multi-arch list)
and generated images both ways. End-to-end tests pull from the real registry with the CLI,
load into a second one and read the result back with skopeo.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from mirror import mediatypes as mt
from mirror.config import ImageSettings, ImageSpec
from mirror.convert import convert_index, convert_manifest, convert_plan
from mirror.errors import UnsupportedContent, UsageError
from mirror.image import Image
from mirror.manifest import RawManifest
from mirror.progress import NullProgress
from mirror.reference import Reference
from tests.support import imagegen as ig
from tests.support.oracle import (
    check_layout,
    damaging,
    file_sha256,
    lost_for_good,
    manifest_gone,
    mirror_ok,
    run_mirror,
    skopeo,
    skopeo_copy_ok,
)
from tests.support.pusher import (
    get_manifest,
    push_blob,
    push_image,
    push_raw_manifest,
    two_images,
)
from tests.support.referrers import push_sbom, push_signature

# -- the seeds (../shared/seeds/000_2f22ff097b1b5472.txt), as quoted there -----------------

BUSYBOX = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1497,
               "digest": "sha256:3a093384ac306cbac30b67f1585e12b30ab1a899374dabc3170b9bca246f1444"},
    "layers": [
        {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 755724,
         "digest": "sha256:57c14dd66db0390dbf6da578421c077f6de8e88edd0815b4caa94607ba5f4c09"},
    ],
}
ALPINE = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1472,
               "digest": "sha256:6dbb9cc54074106d46d4ccb330f2a40a682d49dda5f4844962b7dce9fe44aaec"},
    "layers": [
        {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 2811969,
         "digest": "sha256:540db60ca9383eac9e418f78490994d0af424aab7bf6d0e47ac8ed4e2e9bcbba"},
    ],
}
_REDIS_LAYERS = [
    (2811969, "540db60ca9383eac9e418f78490994d0af424aab7bf6d0e47ac8ed4e2e9bcbba"),
    (1258, "29712d301e8c43bcd4a36da8a8297d5ff7f68c3d4c3f7113244ff03675fa5e9c"),
    (384200, "8173c12df40f1578a7b2dfbbc0034a4fbc8ec7c870fd32b9236c2e5e1936616a"),
    (7692532, "8cc52074f78e0a2fd174bdd470029cf287b7366bf1b8d3c1f92e2aa8789b92ae"),
    (135, "aa7854465cce07929842cb49fc92f659de8a559cf521fc7ea8e1b781606b85cd"),
    (412, "6ab1d05b49730290d3c287ccd34640610423d198e84552a4c2a4e98a46680cfd"),
]
REDIS = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 6390,
               "digest": "sha256:1690b63e207f6651429bebd716ace700be29d0110a0cfefff5038bb2a7fb6fc7"},
    "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": s,
                "digest": f"sha256:{h}"} for s, h in _REDIS_LAYERS],
}
PRIVATE_BUSYBOX = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023,
               "digest": "sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"},
    "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": s,
                "digest": f"sha256:{h}"} for s, h in [
        (32654, "e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f"),
        (16724, "3c3a4604a545cdc127456d94e421cd355bca5b528f4a9c1905b15da2eb4a4c6b"),
        (73109, "ec4b8955958665577945c89419d1af06b5f7636b4ac3da7f12184802ad867736")]],
}
# The seed quotes only the `layers` of the MCR (Windows) manifest; config and the second layer
# are the usual shape of such an image.
MCR_FOREIGN_LAYER = {
    "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "size": 1534685324,
    "digest": "sha256:65014b3c312172f10bd6701a063f9b5aaf9a916c2d2cb843d406a6f77ded3f8d",
    "urls": ["https://go.microsoft.com/fwlink/?linkid=2041275"],
}
MCR = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1234,
               "digest": "sha256:" + "c" * 64},
    "layers": [MCR_FOREIGN_LAYER,
               {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 4321,
                "digest": "sha256:" + "d" * 64}],
}
MULTI_ARCH = {  # ckulka/multi-arch-example, the two entries the seed shows
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
    "manifests": [
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 2200,
         "digest": "sha256:6eaeab9bf8270ce32fc974c36a15d0bac4fb6f6cd11a0736137c4248091b3646",
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 2413,
         "digest": "sha256:f02e0fd2918a894ecd49d67b802c22082dc3c6424f6566e1753a83ba833b0993",
         "platform": {"architecture": "arm", "os": "linux", "variant": "v5"}},
    ],
}
SEED_MANIFESTS = {"busybox": BUSYBOX, "alpine": ALPINE, "redis": REDIS,
                  "private-busybox": PRIVATE_BUSYBOX, "mcr-foreign": MCR}
DOCKER_TO_OCI_LAYER = {
    mt.DOCKER_LAYER: mt.OCI_LAYER_GZIP,
    mt.DOCKER_FOREIGN: mt.OCI_NONDIST_GZIP,
}


def raw_of(obj: dict[str, Any], indent: int | None = 3) -> RawManifest:
    """Bytes in a style we never write (indent 3), so a conversion is visible in the bytes."""
    return RawManifest.from_bytes(json.dumps(obj, indent=indent).encode())


def descriptors(body: dict[str, Any]) -> list[tuple[str, int, tuple[str, ...]]]:
    return [(d["digest"], d["size"], tuple(d.get("urls") or ()))
            for d in [body["config"], *body["layers"]]]


def plan_for(obj: ig.Image | ig.Index | RawManifest, mode: str = "full", *,
             extra: list[RawManifest] = (), **settings: Any) -> Image:
    """An Image as resolve would make it for a generated image (no registry needed)."""
    spec = ImageSpec(Reference.parse("registry.example/test/app:v1"),
                     ImageSettings(**settings))
    if isinstance(obj, RawManifest):
        root, children = obj, list(extra)
    else:
        root = RawManifest.from_bytes(obj.manifest.data, obj.manifest.media_type)
        subs = obj.images + obj.extra if isinstance(obj, ig.Index) else []
        children = [RawManifest.from_bytes(i.manifest.data, i.manifest.media_type) for i in subs]
        children += list(extra)
    plan = Image(str(spec.reference), root, mode=mode, reference=spec.reference)
    for raw in [*children, root]:
        plan.manifests[raw.digest] = raw
    return plan


class Warnings(NullProgress):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def warn(self, text: str) -> None:
        self.seen.append(text)


# -- seeds, both ways -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SEED_MANIFESTS))
def test_seed_manifest_to_oci_and_back(name: str) -> None:
    src = SEED_MANIFESTS[name]
    raw = raw_of(src)
    oci, warnings = convert_manifest(raw, "oci")
    assert warnings == []
    body = json.loads(oci.data)
    assert oci.media_type == body["mediaType"] == mt.OCI_MANIFEST
    assert body["schemaVersion"] == 2
    assert body["config"]["mediaType"] == mt.OCI_CONFIG
    assert [la["mediaType"] for la in body["layers"]] == \
        [DOCKER_TO_OCI_LAYER[la["mediaType"]] for la in src["layers"]]
    assert descriptors(body) == descriptors(src)  # blobs untouched, urls kept
    assert oci.digest != raw.digest
    assert convert_manifest(raw_of(src, indent=None), "oci")[0].data == oci.data  # deterministic
    assert convert_manifest(oci, "oci")[0] is oci  # already OCI: not a byte changes

    back, warnings = convert_manifest(oci, "docker")
    assert warnings == []
    assert json.loads(back.data) == src  # every descriptor as it was, in order
    assert back.media_type == mt.DOCKER_MANIFEST
    assert convert_manifest(raw, "docker")[0] is raw


def test_seed_mcr_foreign_layer_becomes_nondistributable_with_urls() -> None:
    oci, _ = convert_manifest(raw_of(MCR), "oci")
    layer = json.loads(oci.data)["layers"][0]
    assert layer == {**MCR_FOREIGN_LAYER, "mediaType": mt.OCI_NONDIST_GZIP}


def test_seed_mcr_rewrite_makes_an_ordinary_layer() -> None:
    raw = raw_of(MCR)
    for fmt, want in (("keep", mt.DOCKER_LAYER), ("docker", mt.DOCKER_LAYER),
                      ("oci", mt.OCI_LAYER_GZIP)):
        new, _ = convert_manifest(raw, fmt, rewrite_foreign=True)
        layer = json.loads(new.data)["layers"][0]
        assert layer == {"mediaType": want, "size": MCR_FOREIGN_LAYER["size"],
                         "digest": MCR_FOREIGN_LAYER["digest"]}
    assert convert_manifest(raw, "keep")[0] is raw


def test_seed_multi_arch_list_to_oci_and_back() -> None:
    raw = raw_of(MULTI_ARCH)
    oci, _ = convert_index(raw, "oci", {})  # children not at hand: entries left as they are
    body = json.loads(oci.data)
    assert body["mediaType"] == mt.OCI_INDEX
    assert body["manifests"] == MULTI_ARCH["manifests"]
    back, _ = convert_index(oci, "docker", {})
    assert json.loads(back.data) == MULTI_ARCH

    # with the amd64 child converted, its entry follows it; the platform stays
    child = RawManifest.from_bytes(json.dumps(BUSYBOX).encode())
    new_child, _ = convert_manifest(child, "oci")
    old = MULTI_ARCH["manifests"][0]["digest"]
    oci, _ = convert_index(raw, "oci", {old: new_child})
    entry = json.loads(oci.data)["manifests"][0]
    assert entry == {"mediaType": mt.OCI_MANIFEST, "size": new_child.size,
                     "digest": new_child.digest, "platform": {"architecture": "amd64",
                                                              "os": "linux"}}


# -- generated images through convert_plan ----------------------------------------------------


def test_plan_docker_list_to_oci_to_docker(rng: random.Random) -> None:
    imgs = [ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM64_V8, ig.ARM_V7)]
    imgs.append(ig.make_image(rng, ig.ARM_V6, "docker", layers=[
        ig.make_layer(rng, 512, compressed=False, fmt="docker")]))
    index = ig.make_index(imgs, "docker")
    plan = plan_for(index, format="oci")
    convert_plan(plan, "oci", NullProgress())
    old = [i.digest for i in imgs] + [index.digest]
    assert list(plan.conversions) == old  # children first, then the list
    assert plan.root.digest == plan.conversions[index.digest]
    assert set(plan.manifests) == set(plan.conversions.values())
    root = json.loads(plan.root.data)
    assert plan.root.media_type == root["mediaType"] == mt.OCI_INDEX
    for entry, img in zip(root["manifests"], imgs, strict=True):
        child = plan.manifests[entry["digest"]]
        assert entry["digest"] == plan.conversions[img.digest]
        assert entry["size"] == child.size and entry["mediaType"] == mt.OCI_MANIFEST
        assert entry["platform"] == img.platform
        body = json.loads(child.data)
        assert body["config"] == {**img.config.descriptor(), "mediaType": mt.OCI_CONFIG}
        assert [(la["digest"], la["size"]) for la in body["layers"]] == \
            [(la.digest, la.size) for la in img.layers]
    assert json.loads(plan.manifests[root["manifests"][3]["digest"]].data)["layers"][0][
        "mediaType"] == mt.OCI_LAYER

    oci_root = plan.root
    back = plan_for(oci_root, extra=list(plan.manifests.values()))
    convert_plan(back, "docker", NullProgress())
    # the same documents as the source, only serialised our way (so other child digests)
    root = json.loads(back.root.data)
    src = json.loads(index.manifest.data)
    assert root["mediaType"] == mt.DOCKER_LIST
    assert [{**e, "digest": "", "size": 0} for e in root["manifests"]] == \
        [{**e, "digest": "", "size": 0} for e in src["manifests"]]
    for entry, img in zip(root["manifests"], imgs, strict=True):
        docker = back.manifests[entry["digest"]]
        assert docker.parsed == json.loads(img.manifest.data)
        assert docker.media_type == mt.DOCKER_MANIFEST and entry["size"] == docker.size


def test_plan_conversion_is_deterministic(rng: random.Random) -> None:
    index = ig.make_index([ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM64)],
                          "docker")
    a, b = plan_for(index), plan_for(index)
    convert_plan(a, "oci", NullProgress())
    convert_plan(b, "oci", NullProgress())
    assert a.root.data == b.root.data and a.conversions == b.conversions


def test_keep_changes_nothing(rng: random.Random) -> None:
    index = ig.make_index([ig.make_image(rng, ig.AMD64, "docker")], "docker")
    plan = plan_for(index)
    before = dict(plan.manifests)
    convert_plan(plan, "keep", NullProgress())
    assert plan.manifests == before and plan.conversions == {}
    assert plan.root.data == index.manifest.data


def test_already_oci_is_byte_for_byte(rng: random.Random) -> None:
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, "oci", attestation=True, rng=rng)
    plan = plan_for(index)
    convert_plan(plan, "oci", NullProgress())
    assert plan.conversions == {} and plan.root.data == index.manifest.data


def test_mixed_oci_index_with_docker_children(rng: random.Random) -> None:
    """Only what is Docker changes; the attestation is copied byte for byte and still names
    the (converted) image it describes."""
    docker_img = ig.make_image(rng, ig.AMD64, "docker")
    oci_img = ig.make_image(rng, ig.ARM64, "oci")
    index = ig.make_index([docker_img, oci_img], "oci", attestation=True, rng=rng)
    att = index.extra[0]
    plan = plan_for(index)
    convert_plan(plan, "oci", NullProgress())
    assert list(plan.conversions) == [docker_img.digest, index.digest]
    new_docker = plan.conversions[docker_img.digest]
    assert oci_img.digest in plan.manifests and att.digest in plan.manifests
    assert plan.manifests[att.digest].data == att.manifest.data
    entries = json.loads(plan.root.data)["manifests"]
    assert [e["digest"] for e in entries] == [new_docker, oci_img.digest, att.digest]
    assert entries[2]["annotations"]["vnd.docker.reference.digest"] == new_docker


def test_filtered_root_conversion_is_reported_against_the_source_index(
        rng: random.Random) -> None:
    imgs = [ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, "docker")
    body = json.loads(index.manifest.data)
    body["manifests"] = body["manifests"][:1]
    filtered = RawManifest.from_bytes(json.dumps(body).encode())
    plan = plan_for(filtered, "filter", extra=[RawManifest.from_bytes(imgs[0].manifest.data)])
    plan.source_digest = index.digest
    convert_plan(plan, "oci", NullProgress())
    assert list(plan.conversions) == [imgs[0].digest, index.digest]
    assert plan.conversions[index.digest] == plan.root.digest


def test_sparse_index_cannot_be_converted(rng: random.Random) -> None:
    index = ig.make_index([ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM64)],
                          "docker")
    plan = plan_for(index, "sparse")
    del plan.manifests[index.images[1].digest]
    with pytest.raises(UsageError, match="sparse"):
        convert_plan(plan, "oci", NullProgress())


def test_sparse_index_with_an_attestation_is_refused_as_sparse(rng: random.Random) -> None:
    """An OCI index kept sparse cannot become a Docker list, whatever it lists: the sparse
    refusal (exit 2), not the attestation's (exit 9, whose hint, `referrers: false`, would
    not help: the attestation entry stays in the kept index bytes)."""
    index = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)], "oci",
                          attestation=True, rng=rng)
    plan = plan_for(index, "sparse", referrers=False)
    del plan.manifests[index.images[1].digest]
    del plan.manifests[index.extra[0].digest]
    with pytest.raises(UsageError, match="--index sparse keeps the source index byte for byte"):
        convert_plan(plan, "docker", NullProgress())


# -- non-image content: copied byte for byte, refused by docker -------------------------------


def artifact(rng: random.Random, *, with_artifact_type: bool = True) -> RawManifest:
    """A Helm-chart-like OCI artifact: empty or chart config, one opaque layer."""
    body: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST}
    if with_artifact_type:
        body["artifactType"] = "application/vnd.example.thing.v1"
        body["config"] = {"mediaType": mt.OCI_EMPTY, "size": 2, "digest": ig.sha256_digest(b"{}")}
    else:
        body["config"] = {"mediaType": "application/vnd.cncf.helm.config.v1+json",
                          "size": 10, "digest": ig.sha256_digest(rng.randbytes(10))}
    body["layers"] = [{"mediaType": "application/vnd.example.blob", "size": 3,
                       "digest": ig.sha256_digest(b"abc")}]
    return RawManifest.from_bytes(json.dumps(body, indent=2).encode())


@pytest.mark.parametrize("with_artifact_type", [True, False])
def test_non_image_entries_are_copied_byte_for_byte(rng: random.Random,
                                                     with_artifact_type: bool) -> None:
    img = ig.make_image(rng, ig.AMD64, "docker")
    art = artifact(rng, with_artifact_type=with_artifact_type)
    plugin_cfg = ig.Blob(b'{"description":"a plugin"}', mt.DOCKER_PLUGIN_CONFIG)
    plugin = RawManifest.from_bytes(json.dumps({
        "schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST, "config": plugin_cfg.descriptor(),
        "layers": []}).encode())
    root = RawManifest.from_bytes(json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
            img.manifest.descriptor(platform=img.platform),
            {"mediaType": mt.OCI_MANIFEST, "digest": art.digest, "size": art.size,
             **({"artifactType": "application/vnd.example.thing.v1"}
                if with_artifact_type else {})},
            {"mediaType": mt.DOCKER_MANIFEST, "digest": plugin.digest, "size": plugin.size}]
    }).encode())
    plan = plan_for(root, extra=[RawManifest.from_bytes(img.manifest.data), art, plugin])
    convert_plan(plan, "oci", NullProgress())
    assert list(plan.conversions) == [img.digest, root.digest]
    assert plan.manifests[art.digest].data == art.data
    assert plan.manifests[plugin.digest].data == plugin.data
    with pytest.raises(UnsupportedContent, match=r"registry.example/test/app:v1: .*not an image"):
        convert_manifest(art, "docker", name="registry.example/test/app:v1")
    assert convert_manifest(plugin, "docker")[0] is plugin  # already Docker


def oci_image(rng: random.Random, **changes: Any) -> RawManifest:
    body = json.loads(ig.make_image(rng, ig.AMD64, "oci").manifest.data)
    for key, value in changes.items():
        if key == "layer0":
            body["layers"][0].update(value)
        else:
            body[key] = value
    return RawManifest.from_bytes(json.dumps(body).encode())


@pytest.mark.parametrize(("changes", "message"), [
    ({"layer0": {"mediaType": mt.OCI_LAYER_ZSTD}}, "zstd"),
    ({"layer0": {"mediaType": mt.OCI_NONDIST_ZSTD}}, "zstd"),
    ({"layer0": {"mediaType": "application/vnd.in-toto+json"}}, "no Docker equivalent"),
    ({"artifactType": "application/vnd.example.sbom"}, "not an image"),
    ({"subject": {"mediaType": mt.OCI_MANIFEST, "size": 1, "digest": "sha256:" + "a" * 64}},
     "'subject'"),
    ({"config": {"mediaType": mt.OCI_EMPTY, "size": 2, "digest": ig.sha256_digest(b"{}")}},
     "not an image"),
])
def test_docker_refuses_what_it_cannot_carry(rng: random.Random, changes: dict,
                                             message: str) -> None:
    raw = oci_image(rng, **changes)
    with pytest.raises(UnsupportedContent, match=message) as info:
        convert_manifest(raw, "docker", name="example.com/app:1")
    assert str(info.value).startswith("example.com/app:1: ")
    assert "--format oci" in (info.value.hint or "")


def test_docker_refuses_index_content_it_cannot_carry(rng: random.Random) -> None:
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)]
    with_att = ig.make_index(imgs, "oci", attestation=True, rng=rng)
    with pytest.raises(UnsupportedContent, match="attestation") as info:
        convert_plan(plan_for(with_att), "docker", NullProgress())
    assert "registry.example/test/app:v1" in str(info.value)
    assert "referrers: false" in (info.value.hint or "")

    plain = ig.make_index(imgs, "oci")
    nested = RawManifest.from_bytes(json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_INDEX,
        "manifests": [plain.manifest.descriptor()]}).encode())
    plan = plan_for(nested, extra=[RawManifest.from_bytes(plain.manifest.data)] + [
        RawManifest.from_bytes(i.manifest.data) for i in imgs])
    with pytest.raises(UnsupportedContent, match="nested index"):
        convert_plan(plan, "docker", NullProgress())

    no_platform = RawManifest.from_bytes(json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_INDEX,
        "manifests": [imgs[0].manifest.descriptor()]}).encode())
    plan = plan_for(no_platform, extra=[RawManifest.from_bytes(imgs[0].manifest.data)])
    with pytest.raises(UnsupportedContent, match="no platform"):
        convert_plan(plan, "docker", NullProgress())


def test_docker_warns_about_dropped_annotations(rng: random.Random) -> None:
    body = json.loads(ig.make_image(rng, ig.AMD64, "oci").manifest.data)
    body["annotations"] = {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
    body["layers"][0]["annotations"] = {"com.example.layer": "x"}
    img = RawManifest.from_bytes(json.dumps(body).encode())
    index = RawManifest.from_bytes(json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_INDEX,
        "annotations": {"org.opencontainers.image.source": "https://example.com/src"},
        "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": img.digest, "size": img.size,
                       "platform": ig.AMD64,
                       "annotations": {"com.example.entry": "y"}}]}).encode())
    plan = plan_for(index, extra=[img])
    progress = Warnings()
    convert_plan(plan, "docker", progress)
    text = "\n".join(progress.seen)
    for key in ("org.opencontainers.image.created", "com.example.layer",
                "org.opencontainers.image.source", "com.example.entry"):
        assert key in text
    assert all(w.startswith("registry.example/test/app:v1: ") for w in progress.seen)
    assert "annotations" not in plan.root.data.decode()
    for m in plan.manifests.values():
        assert b"annotations" not in m.data


# -- end to end: pull --format, load, read back with skopeo ----------------------------------


def report_of(path: Path) -> dict[str, Any]:
    (image,) = json.loads(path.read_text())["images"]
    return image


def raw_at(reg, repo: str, ref: str) -> tuple[bytes, dict[str, Any]]:
    body = skopeo("inspect", "--raw", "--tls-verify=false",
                  f"docker://{reg.host}/{repo}{'@' if ':' in ref else ':'}{ref}").stdout
    return body.encode(), json.loads(body)


def test_pull_format_oci_load_and_read_back(src_registry, dst_registry, repo_name, rng,
                                            tmp_path: Path) -> None:
    imgs = [ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM64_V8)]
    dlist = ig.make_index(imgs, "docker")
    push_image(src_registry.url, repo_name, dlist, ["v1"])
    ref = f"{src_registry.host}/{repo_name}:v1"
    bundle, report = tmp_path / "b.tar", tmp_path / "r.json"
    proc = mirror_ok("pull", ref, "--format", "oci", "-o", bundle, "--cache",
                     tmp_path / "cache", "--report", report)
    rep = report_of(report)
    conv = rep["conversions"]
    assert set(conv) == {dlist.digest, *(i.digest for i in imgs)}
    assert rep["digest"] == conv[dlist.digest] and rep["source_digest"] == dlist.digest
    for old, new in conv.items():
        assert f"converted {old} -> {new}" in proc.stderr  # the run summary
    lay = check_layout(bundle)
    entry = lay.entry(ref)
    assert entry["digest"] == conv[dlist.digest] and entry["mediaType"] == mt.OCI_INDEX
    assert entry["annotations"]["dev.mirror.conversions"] == ",".join(
        f"{o}>{n}" for o, n in conv.items())
    assert lay.inventory["conversions"] == conv

    mirror_ok("load", bundle, "--to", dst_registry.host, "-q")
    data, index = raw_at(dst_registry, repo_name, "v1")
    assert ig.sha256_digest(data) == conv[dlist.digest]
    assert index["mediaType"] == mt.OCI_INDEX
    for entry, img in zip(index["manifests"], imgs, strict=True):
        assert entry["digest"] == conv[img.digest] and entry["mediaType"] == mt.OCI_MANIFEST
        data, manifest = raw_at(dst_registry, repo_name, entry["digest"])
        assert ig.sha256_digest(data) == entry["digest"]
        assert manifest["mediaType"] == mt.OCI_MANIFEST
        assert manifest["config"] == {**img.config.descriptor(), "mediaType": mt.OCI_CONFIG}
        assert [(la["mediaType"], la["digest"], la["size"]) for la in manifest["layers"]] == \
            [(mt.OCI_LAYER_GZIP, la.digest, la.size) for la in img.layers]

    # skopeo 1.9.3 reads the converted bundle (its oci-archive: reader needs OCI types)
    out = skopeo_copy_ok(bundle, ref, tmp_path / "copy")
    copied = json.loads((out / "index.json").read_text())
    assert [m["digest"] for m in copied["manifests"]] == [conv[dlist.digest]]


def test_report_and_lock_name_the_digests_the_target_serves(src_registry, dst_registry,
                                                            repo_name, rng,
                                                            tmp_path: Path) -> None:
    """After --format oci the report's `platform_digests` and the lock's `platforms` are the
    converted manifests, which the loaded registry serves; the source ones are recorded
    beside them under their own names (`source_platform_digests`, `sourcePlatforms`), and
    `--locked` pins the source, from a lock of this kind or of the old kind without them."""
    imgs = [ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM64_V8)]
    dlist = ig.make_index(imgs, "docker")
    push_image(src_registry.url, repo_name, dlist, ["v1"])
    ref = f"{src_registry.host}/{repo_name}:v1"
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"version: 1\ndefaults:\n  format: oci\nimages:\n  - {ref}\n")
    bundle, report = tmp_path / "b.tar", tmp_path / "r.json"
    mirror_ok("pull", "-f", cfg, "-o", bundle, "--cache", tmp_path / "cache", "--report",
              report, "-q")
    rep = report_of(report)
    conv = rep["conversions"]
    source = {"linux/amd64": imgs[0].digest, "linux/arm64": imgs[1].digest}
    assert rep["source_platform_digests"] == source
    assert rep["platform_digests"] == {p: conv[d] for p, d in source.items()}
    entry = json.loads((tmp_path / "images.lock").read_text())["images"][ref]
    assert entry["sourcePlatforms"] == source
    assert entry["platforms"] == rep["platform_digests"]
    mirror_ok("load", bundle, "--to", dst_registry.host, "-q")
    for digest in [rep["digest"], *rep["platform_digests"].values(), *entry["platforms"].values()]:
        data, _ = raw_at(dst_registry, repo_name, digest)
        assert ig.sha256_digest(data) == digest

    # --locked pins the source: the same bundle from this lock and from an old-style one
    mirror_ok("pull", "-f", cfg, "--locked", "-o", tmp_path / "l.tar", "--cache",
              tmp_path / "cache", "-q")
    old = json.loads((tmp_path / "images.lock").read_text())
    del old["images"][ref]["sourcePlatforms"]
    old["images"][ref]["platforms"] = source  # what the old lock files said
    (tmp_path / "old.lock").write_text(json.dumps(old))
    mirror_ok("pull", "-f", cfg, "--locked", "--lock-file", tmp_path / "old.lock", "-o",
              tmp_path / "o.tar", "--cache", tmp_path / "cache", "-q")
    assert file_sha256(tmp_path / "l.tar") == file_sha256(tmp_path / "o.tar") == \
        file_sha256(bundle)


def test_docker_oci_docker_round_trip_through_registries(src_registry, dst_registry,
                                                         repo_name, rng,
                                                         tmp_path: Path) -> None:
    imgs = [ig.make_image(rng, p, "docker") for p in (ig.AMD64, ig.ARM_V7)]
    dlist = ig.make_index(imgs, "docker")
    push_image(src_registry.url, repo_name, dlist, ["v1"])
    oci_bundle, docker_bundle = tmp_path / "oci.tar", tmp_path / "docker.tar"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:v1", "--format", "oci", "-o",
              oci_bundle, "--cache", tmp_path / "cache", "-q")
    mirror_ok("load", oci_bundle, "--to", f"{dst_registry.host}/oci", "-q")
    mirror_ok("pull", f"{dst_registry.host}/oci/{repo_name}:v1", "--format", "docker", "-o",
              docker_bundle, "--cache", tmp_path / "cache", "-q", "--report", tmp_path / "r.json")
    mirror_ok("load", docker_bundle, "--to", f"{dst_registry.host}/docker", "-q")
    data, dl = raw_at(dst_registry, f"docker/oci/{repo_name}", "v1")
    assert ig.sha256_digest(data) == report_of(tmp_path / "r.json")["digest"]
    src = json.loads(dlist.manifest.data)  # the same list, serialised our way
    assert dl["mediaType"] == mt.DOCKER_LIST
    assert [(e["mediaType"], e["platform"]) for e in dl["manifests"]] == \
        [(e["mediaType"], e["platform"]) for e in src["manifests"]]
    for entry, img in zip(dl["manifests"], imgs, strict=True):
        _, manifest = raw_at(dst_registry, f"docker/oci/{repo_name}", entry["digest"])
        assert manifest == json.loads(img.manifest.data)  # every config and layer digest


def test_pull_format_docker_refuses_attestations(src_registry, repo_name, rng,
                                                 tmp_path: Path) -> None:
    index = ig.make_index([ig.make_image(rng, ig.AMD64, "oci")], "oci", attestation=True,
                          rng=rng)
    push_image(src_registry.url, repo_name, index, ["v1"])
    ref = f"{src_registry.host}/{repo_name}:v1"
    bundle = tmp_path / "b.tar"
    proc = run_mirror("pull", ref, "--format", "docker", "-o", bundle, "--cache",
                      tmp_path / "cache")
    assert proc.returncode == 9, proc.stderr
    assert f"{ref}: index {index.digest}" in proc.stderr and "attestation" in proc.stderr
    assert "hint: set `referrers: false`" in proc.stderr
    assert not bundle.exists()

    # the same image without its attestation converts, with the annotation warning
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"version: 1\nimages:\n  - ref: {ref}\n    referrers: false\n"
                   "    format: docker\n")
    proc = mirror_ok("pull", "-f", cfg, "-o", bundle, "--cache", tmp_path / "cache")
    lay = check_layout(bundle)
    assert lay.entry(ref)["mediaType"] == mt.DOCKER_LIST


def test_pull_format_docker_carries_referrers_unconverted(src_registry, repo_name, rng,
                                                         tmp_path: Path) -> None:
    """`docker` refuses `artifactType` and `subject` in the image's own index and manifests,
    not in its referrers (README, Conversion): a cosign signature of the index and an SBOM
    (artifactType + subject) of a platform manifest are carried byte for byte, as OCI,
    naming the source digests the converted manifests no longer have; exit 0 (operator
    pass o19, D5)."""
    imgs = [ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64)]
    index = ig.make_index(imgs, "oci")
    push_image(src_registry.url, repo_name, index, ["v1"])
    key = ec.generate_private_key(ec.SECP256R1())
    _, sig = push_signature(src_registry.url, repo_name, key, index.digest)
    sbom = push_sbom(src_registry.url, repo_name, imgs[0].manifest)
    assert json.loads(sbom.data)["artifactType"] and json.loads(sbom.data)["subject"]
    ref = f"{src_registry.host}/{repo_name}:v1"
    bundle = tmp_path / "b.tar"
    mirror_ok("pull", ref, "--format", "docker", "-o", bundle, "--cache", tmp_path / "cache")
    lay = check_layout(bundle)
    root = lay.entry(ref)
    assert root["mediaType"] == mt.DOCKER_LIST and root["digest"] != index.digest
    subjects = {e["digest"]: e["annotations"]["dev.mirror.referrer.subject"]
                for e in lay.inventory["referrers"]}  # type: ignore[index]
    assert subjects == {sig.digest: index.digest, sbom.digest: imgs[0].manifest.digest}
    for m in (sig, sbom):
        assert lay.blob(m.digest) == m.data
    assert imgs[0].manifest.digest not in lay.blob_digests  # converted: a new digest


def test_pull_format_oci_copies_artifacts_byte_for_byte(src_registry, dst_registry,
                                                        repo_name, rng,
                                                        tmp_path: Path) -> None:
    img = ig.make_image(rng, ig.AMD64, "docker")
    art_layer = ig.Blob(b"chart bytes", "application/vnd.example.blob")
    art_cfg = ig.Blob(b"{}", mt.OCI_EMPTY)
    art = ig.Blob(json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "artifactType": "application/vnd.example.thing.v1",
        "config": art_cfg.descriptor(), "layers": [art_layer.descriptor()]}, indent=1).encode(),
        mt.OCI_MANIFEST)
    root = ig.Blob(json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        img.manifest.descriptor(platform=img.platform),
        art.descriptor(artifactType="application/vnd.example.thing.v1")]}).encode(),
        mt.OCI_INDEX)
    for blob in (*img.blobs(), art_cfg, art_layer):
        push_blob(src_registry.url, repo_name, blob)
    for m in (img.manifest, art):
        push_raw_manifest(src_registry.url, repo_name, m.digest, m.data, m.media_type)
    push_raw_manifest(src_registry.url, repo_name, "v1", root.data, root.media_type)
    bundle, report = tmp_path / "b.tar", tmp_path / "r.json"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}:v1", "--format", "oci", "-o", bundle,
              "--cache", tmp_path / "cache", "-q", "--report", report)
    conv = report_of(report)["conversions"]
    assert set(conv) == {img.digest, root.digest}
    lay = check_layout(bundle)
    assert lay.blob(art.digest) == art.data
    assert lay.blob(art_layer.digest) == art_layer.data
    mirror_ok("load", bundle, "--to", dst_registry.host, "-q")
    body, _, _ = get_manifest(dst_registry.url, repo_name, art.digest)
    assert body == art.data


# -- schema 1 --------------------------------------------------------------------------------

SCHEMA1_SIGNED = b"""{
   "schemaVersion": 1,
   "name": "x",
   "tag": "1",
   "architecture": "amd64",
   "fsLayers": [
      {"blobSum": "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"}
   ],
   "history": [{"v1Compatibility": "{\\"id\\":\\"e45a5af57b00862e5ef5782a9925979a02ba2b12dff832fd0991335f4a11e5c5\\"}"}],
   "signatures": [
      {
         "header": {"jwk": {"crv": "P-256", "kid": "X", "kty": "EC", "x": "A", "y": "B"},
                    "alg": "ES256"},
         "signature": "c2lnbmF0dXJl",
         "protected": "eyJmb3JtYXRMZW5ndGgiOjEsImZvcm1hdFRhaWwiOiJDbjAiLCJ0aW1lIjoiMjAxNS0wMS0wMVQwMDowMDowMFoifQ"
      }
   ]
}"""


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[int]:
    """Run `app` on 127.0.0.1 in this event loop; yield its port."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("pinned", [False, True])
async def test_schema1_is_refused_and_leaves_nothing(tmp_path: Path, pinned: bool) -> None:
    """A registry stand-in serving one signed schema 1 manifest, by tag or by digest. Pinned
    by digest it still says schema 1 (exit 9), not "digest mismatch": a signed schema 1
    manifest's digest is that of its payload, and registries sign it anew on every GET."""
    seen: list[str] = []

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    async def manifest(request: web.Request) -> web.Response:
        seen.append(request.method)
        return web.Response(body=SCHEMA1_SIGNED, headers={
            "Content-Type": mt.SCHEMA1_SIGNED,
            "Docker-Content-Digest": ig.sha256_digest(SCHEMA1_SIGNED)})

    app = web.Application()
    app.router.add_get("/v2/", ping)
    app.router.add_route("*", "/v2/x/manifests/{ref}", manifest)
    out = tmp_path / "out"
    out.mkdir()
    bundle = out / "b.tar"
    async with serve(app) as port:
        ref = f"127.0.0.1:{port}/x" + (f"@sha256:{'2' * 64}" if pinned else ":1")
        proc = await asyncio.to_thread(run_mirror, "pull", ref, "-o", bundle, "--cache",
                                       tmp_path / "cache")
    assert seen, "the manifest was never asked for"
    assert proc.returncode == 9, proc.stderr
    assert f"{ref}: Docker schema 1 manifest" in proc.stderr
    assert "hint: push the image again with a current client" in proc.stderr
    assert "pin a schema 2 digest" in proc.stderr
    assert [p.name for p in out.iterdir() if not p.name.endswith(".lock")] == []
    assert list((tmp_path / "cache").rglob("*.partial")) == []
    assert list((tmp_path / "cache" / "blobs" / "sha256").iterdir()) == []
    assert list((tmp_path / "cache" / "partial").iterdir()) == []


@pytest.mark.parametrize("served", [True, False], ids=["served", "gone"])
def test_a_manifest_damaged_in_the_cache_before_its_conversion_is_fetched_again(
        src_registry, faultproxy, repo_name, rng, tmp_path: Path, served: bool) -> None:
    """Planning converts (here to Docker) the manifest it stored and released in the cache's
    store (RawManifest.release) once the image's config is read: damaged there meanwhile, the
    image failed (exit 7, `no longer in the cache's store of manifests ... run again`). It is
    fetched again by digest (checked, stored again), one more manifest GET in the report, and
    the bundle is the one an undamaged run writes, byte for byte; a registry that no longer
    serves it (404) stops the run with one line naming the manifest and the answer."""
    proxy = faultproxy(src_registry.url)
    img, refs = two_images(src_registry.url, proxy, repo_name, rng)
    clean = tmp_path / "clean.tar"
    mirror_ok("pull", *refs, "--format", "docker", "-o", clean, "--cache", tmp_path / "c0",
              "--report", tmp_path / "clean.json")
    if not served:
        gone = manifest_gone(proxy, img.digest)
    cache, out, report = tmp_path / "cache", tmp_path / "b.tar", tmp_path / "r.json"
    stored = cache / "manifests" / "sha256" / img.digest.split(":", 1)[1]
    proxy.reset_counters()
    done = damaging(proxy, f"{repo_name}/b", stored, "pull", *refs, "--format", "docker",
                    "-o", out, "--cache", cache, "--report", report,
                    at=f"/v2/{repo_name}/a/blobs/{img.config.digest}$")
    if not served:
        lost_for_good(done, img.digest, gone)
        assert not out.exists()
        return
    assert done.returncode == 0, done.stderr
    gets = [p for p in proxy.paths("GET") if "/manifests/" in p]
    assert f"/v2/{repo_name}/a/manifests/{img.digest}" in gets, gets
    assert out.read_bytes() == clean.read_bytes()
    assert stored.read_bytes() == img.manifest.data  # stored again, as served
    asked = json.loads(report.read_text())["requests"][proxy.host]
    before = json.loads((tmp_path / "clean.json").read_text())["requests"][proxy.host]
    assert asked["manifest GET"] == before["manifest GET"] + 1, (asked, before)
