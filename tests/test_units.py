"""Table-driven unit tests: references, platforms, images.yaml, manifest classification."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mirror import mediatypes as mt
from mirror.config import ImageSettings, load_config, parse_config, settings_as_dict
from mirror.errors import (
    EXIT_CODES,
    ConfigError,
    IntegrityError,
    InvalidPlatform,
    InvalidReference,
    UnsupportedContent,
)
from mirror.manifest import MAX_MANIFEST_BYTES, Descriptor, RawManifest, sniff_media_type
from mirror.platform import Platform, PlatformSelector
from mirror.reference import Reference, api_host, is_loopback
from tests.support.oracle import ROOT

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64
D3 = "sha256:" + "c" * 64
D512 = "sha512:" + "d" * 128

# -- references ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), [
    ("alpine", "docker.io", "library/alpine", "latest", None),
    ("alpine:3.20", "docker.io", "library/alpine", "3.20", None),
    ("library/alpine", "docker.io", "library/alpine", "latest", None),
    ("user/app:1", "docker.io", "user/app", "1", None),
    ("docker.io/alpine", "docker.io", "library/alpine", "latest", None),
    ("index.docker.io/library/alpine:1", "docker.io", "library/alpine", "1", None),
    ("registry-1.docker.io/x/y", "docker.io", "x/y", "latest", None),
    ("localhost/app", "localhost", "app", "latest", None),
    ("localhost:5000/team/app:1.2", "localhost:5000", "team/app", "1.2", None),
    ("127.0.0.1:5000/a/b/c:v_1", "127.0.0.1:5000", "a/b/c", "v_1", None),
    ("[::1]:5000/app:v1", "[::1]:5000", "app", "v1", None),
    ("Example.COM/app", "example.com", "app", "latest", None),
    ("ghcr.io/org/app:1.0@" + D1, "ghcr.io", "org/app", "1.0", D1),
    ("ghcr.io/org/app@" + D1, "ghcr.io", "org/app", None, D1),
    ("ghcr.io/org/app@" + D512, "ghcr.io", "org/app", None, D512),
    ("quay.io/a.b/c_d/e__f/g-h---i:T.1-x", "quay.io", "a.b/c_d/e__f/g-h---i", "T.1-x", None),
    ("  alpine  ", "docker.io", "library/alpine", "latest", None),
    ("a:" + "t" * 128, "docker.io", "library/a", "t" * 128, None),
])
def test_reference_parse(text: str, registry: str, repository: str, tag: str | None,
                         digest: str | None) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry, repository, tag, digest)
    assert ref.name == f"{registry}/{repository}"
    assert ref.ref == (digest or tag)
    assert Reference.parse(str(ref)) == ref  # str() gives a parseable full form


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty"),
    ("   ", "empty"),
    ("https://ghcr.io/org/app:1", "no scheme"),
    ("UPPER", "lowercase"),
    ("ghcr.io/Org/app", "lowercase"),
    ("a//b", "bad repository"),
    ("a/b/", "bad repository"),
    ("-a/b", "bad repository"),
    ("a/b_", "bad repository"),
    ("a/b:", "bad tag"),
    ("a/b:-x", "bad tag"),
    ("a/b:tag with space", "bad tag"),
    ("a/b:" + "t" * 129, "bad tag"),
    ("a/b:t:t", "bad repository"),
    ("a/b@sha256:xyz", "digest"),
    ("a/b@sha256:" + "a" * 63, "digest"),
    ("a/b@md5:" + "a" * 32, "digest"),
    ("a/b@", "digest"),
    ("bad_host:5000/app", "bad registry"),
    ("localhost:99999/app:1", "port 99999 is not 1-65535"),
    ("localhost:0/app", "port 0 is not 1-65535"),
    (":5000/app:1", "no host before the port"),
    ("r.io/" + "a" * 260, "longer than 255"),
    # a registry without a repository: not docker.io/library/localhost:5000 (tag "5000")
    ("localhost:5000", "'localhost:5000' is a registry"),
    ("127.0.0.1:5000", "'127.0.0.1:5000' is a registry"),
    ("registry.example.com", "'registry.example.com' is a registry"),
    ("localhost", "'localhost' is a registry"),
])
def test_reference_invalid(text: str, why: str) -> None:
    with pytest.raises(InvalidReference) as exc:
        Reference.parse(text)
    msg = str(exc.value)
    assert why in msg, msg
    if text.strip():
        assert repr(text) in msg, msg  # names what was given
    assert "\n" not in msg
    assert exc.value.exit_code == EXIT_CODES["usage"]


@pytest.mark.parametrize(("registry", "api", "loopback"), [
    ("docker.io", "registry-1.docker.io", False),
    ("ghcr.io", "ghcr.io", False),
    ("localhost", "localhost", True),
    ("localhost:5000", "localhost:5000", True),
    ("127.0.0.1:5000", "127.0.0.1:5000", True),
    ("127.1.2.3", "127.1.2.3", True),
    ("[::1]:5000", "[::1]:5000", True),
    ("10.0.0.1:5000", "10.0.0.1:5000", False),
    ("localhost.example.com", "localhost.example.com", False),
])
def test_registry_host_rules(registry: str, api: str, loopback: bool) -> None:
    assert api_host(registry) == api
    assert is_loopback(registry) is loopback


def test_reference_with_tag_and_digest() -> None:
    ref = Reference.parse("r.io/a/b:1@" + D1)
    assert str(ref) == "r.io/a/b:1@" + D1
    assert ref.with_tag("2") == Reference("r.io", "a/b", "2", None)
    assert ref.with_digest(D2) == Reference("r.io", "a/b", None, D2)
    assert str(ref.with_digest(D2)) == "r.io/a/b@" + D2


# -- platforms -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [
    ("linux/amd64", ("linux", "amd64", "")),
    ("linux/x86_64", ("linux", "amd64", "")),
    ("linux/x86-64", ("linux", "amd64", "")),
    ("linux/amd64/v1", ("linux", "amd64", "")),
    ("linux/amd64/v2", ("linux", "amd64", "v2")),
    ("linux/arm64", ("linux", "arm64", "")),
    ("linux/arm64/v8", ("linux", "arm64", "")),
    ("linux/arm64/8", ("linux", "arm64", "")),
    ("linux/aarch64", ("linux", "arm64", "")),
    ("linux/arm64/v9.0", ("linux", "arm64", "v9")),
    ("linux/arm64/v8.2", ("linux", "arm64", "v8.2")),
    ("linux/arm", ("linux", "arm", "v7")),
    ("linux/arm/7", ("linux", "arm", "v7")),
    ("linux/arm/v7", ("linux", "arm", "v7")),
    ("linux/armhf", ("linux", "arm", "v7")),
    ("linux/armel", ("linux", "arm", "v6")),
    ("linux/arm/6", ("linux", "arm", "v6")),
    ("linux/arm/v5", ("linux", "arm", "v5")),
    ("linux/386", ("linux", "386", "")),
    ("linux/i386", ("linux", "386", "")),
    ("LINUX/AMD64", ("linux", "amd64", "")),
    ("macos/arm64", ("darwin", "arm64", "")),
    ("windows/amd64", ("windows", "amd64", "")),
    (" linux/s390x ", ("linux", "s390x", "")),
    # a bare architecture is Linux's (what `uname -m` or `dpkg --print-architecture` says)
    ("aarch64", ("linux", "arm64", "")),
    ("x86_64", ("linux", "amd64", "")),
    ("arm64", ("linux", "arm64", "")),
    ("armhf", ("linux", "arm", "v7")),
    ("s390x", ("linux", "s390x", "")),
])
def test_platform_parse(text: str, want: tuple[str, str, str]) -> None:
    p = Platform.parse(text)
    assert (p.os, p.architecture, p.variant) == want
    assert Platform.parse(str(p)) == p


@pytest.mark.parametrize(("text", "why"), [
    ("", "expected os/arch"),
    ("linux", "an os without an architecture"),
    ("unknown", "an os without an architecture"),
    ("amd46", "expected os/arch[/variant] or an architecture"),
    ("linux/", "expected os/arch"),
    ("/amd64", "expected os/arch"),
    ("linux/arm/v7/x", "expected os/arch"),
    ("linux amd64", "expected os/arch"),
    ("linux/amd46", "unknown architecture 'amd46'"),
    ("lunix/amd64", "unknown os 'lunix'"),
])
def test_platform_invalid(text: str, why: str) -> None:
    with pytest.raises(InvalidPlatform) as exc:
        Platform.parse(text)
    assert why in str(exc.value) and repr(text) in str(exc.value)
    assert exc.value.exit_code == EXIT_CODES["usage"]


# REFERENCE.md 5.2, the "Exact" column
@pytest.mark.parametrize(("request_", "candidate", "match"), [
    ("linux/arm64", {"os": "linux", "architecture": "arm64"}, True),
    ("linux/arm64", {"os": "linux", "architecture": "arm64", "variant": "v8"}, True),
    ("linux/arm64/v8", {"os": "linux", "architecture": "arm64"}, True),
    ("linux/arm64/v8", {"os": "linux", "architecture": "aarch64"}, True),
    ("linux/arm64", {"os": "linux", "architecture": "arm64", "variant": "v8.2"}, False),
    ("linux/arm64", {"os": "linux", "architecture": "arm", "variant": "v7"}, False),
    ("linux/arm", {"os": "linux", "architecture": "arm", "variant": "v7"}, True),
    ("linux/arm", {"os": "linux", "architecture": "arm"}, True),
    ("linux/arm/v7", {"os": "linux", "architecture": "arm"}, True),
    ("linux/arm", {"os": "linux", "architecture": "arm", "variant": "v6"}, False),
    ("linux/arm/v6", {"os": "linux", "architecture": "arm", "variant": "v7"}, False),
    ("linux/arm/v6", {"os": "linux", "architecture": "armel"}, True),
    ("linux/amd64", {"os": "linux", "architecture": "amd64", "variant": "v2"}, False),
    ("linux/amd64", {"os": "linux", "architecture": "386"}, False),
    ("linux/amd64", {"os": "linux", "architecture": "x86_64"}, True),
    ("linux/amd64", {"os": "windows", "architecture": "amd64"}, False),
    ("windows/amd64", {"os": "windows", "architecture": "amd64",
                       "os.version": "10.0.20348.2340"}, True),
])
def test_platform_matching(request_: str, candidate: dict, match: bool) -> None:
    want, cand = Platform.parse(request_), Platform.from_dict(candidate)
    assert cand is not None
    assert want.matches(cand) is match
    assert PlatformSelector([want]).wants(cand) is match


@pytest.mark.parametrize(("values", "all_", "platforms"), [
    ([], True, ()),
    (["all"], True, ()),
    (["ALL"], True, ()),
    (["linux/amd64"], False, ("linux/amd64",)),
    (["linux/amd64,linux/arm64/v8"], False, ("linux/amd64", "linux/arm64")),
    (["linux/amd64", "linux/arm64", "linux/x86_64"], False, ("linux/amd64", "linux/arm64")),
    ([" linux/arm , ,linux/arm/v6 "], False, ("linux/arm/v7", "linux/arm/v6")),
])
def test_platform_selector(values: list[str], all_: bool, platforms: tuple | None) -> None:
    sel = PlatformSelector.parse(values)
    assert sel.all is all_
    if platforms is not None:
        assert tuple(str(p) for p in sel.platforms) == platforms
    assert str(sel) == ("all" if all_ else ",".join(platforms or ()))
    unknown = Platform.from_dict({"os": "unknown", "architecture": "unknown"})
    assert unknown is not None and unknown.is_unknown
    assert sel.wants(unknown) is False  # attestations are never an image
    assert sel.wants(None) is all_


@pytest.mark.parametrize("values", [["linux/amd64", "all"], ["all,linux/arm64"]])
def test_platform_selector_all_with_others(values: list[str]) -> None:
    """`all` beside named platforms (images.yaml `platforms: [all, linux/amd64]`) was read as
    all, silently; which one was meant is not known: a usage error naming the others."""
    with pytest.raises(InvalidPlatform) as exc:
        PlatformSelector.parse(values)
    assert "'all' together with linux/" in str(exc.value)
    assert exc.value.exit_code == EXIT_CODES["usage"]


@pytest.mark.parametrize("values", [[""], [" "], [","], ["", ","]])
def test_platform_selector_given_nothing(values: list[str]) -> None:
    """`--platform "$PLATFORMS"` with the variable empty is a mistake, not `all`."""
    with pytest.raises(InvalidPlatform) as exc:
        PlatformSelector.parse(values)
    assert "'all'" in str(exc.value) and exc.value.exit_code == EXIT_CODES["usage"]


def test_platform_from_dict() -> None:
    assert Platform.from_dict(None) is None
    assert Platform.from_dict("linux/amd64") is None  # type: ignore[arg-type]
    p = Platform.from_dict({"os": "windows", "architecture": "amd64",
                            "os.version": "10.0.17763.1"})
    assert p == Platform("windows", "amd64", "", "10.0.17763.1")
    assert str(p) == "windows/amd64"


# -- images.yaml ---------------------------------------------------------------------------


def test_config_full_example() -> None:
    text = f"""\
version: 1
defaults:
  platforms: [linux/amd64, linux/arm64]
  index: sparse
registries:
  r.example.com:
    insecure: true
    ca_file: /etc/ca.pem
    username: bot
    password_env: R_PASSWORD
images:
  - docker.io/library/alpine:3.20
  - ref: ghcr.io/org/app@{D1}
    platforms: linux/arm/v7
    index: filter
    referrers: false
  - repository: r.example.com/team/svc
    tags: ["1.0", "@{D2}"]
"""
    cfg = parse_config(text, "images.yaml")
    refs = [str(s.reference) for s in cfg.images]
    assert refs == ["docker.io/library/alpine:3.20", f"ghcr.io/org/app@{D1}",
                    "r.example.com/team/svc:1.0", f"r.example.com/team/svc@{D2}"]
    assert [s.where for s in cfg.images] == ["images.yaml:12", "images.yaml:13",
                                             "images.yaml:17", "images.yaml:17"]
    alpine, app, svc = cfg.images[0], cfg.images[1], cfg.images[2]
    assert str(alpine.settings.platforms) == "linux/amd64,linux/arm64"
    assert alpine.settings.index == "sparse" and alpine.settings.referrers is True
    assert str(app.settings.platforms) == "linux/arm/v7"
    assert app.settings.index == "filter" and app.settings.referrers is False
    assert svc.settings == alpine.settings == cfg.defaults
    assert cfg.registries["r.example.com"].insecure is True
    assert cfg.registries["r.example.com"].ca_file == "/etc/ca.pem"
    assert "r.example.com" in cfg.logins


def test_config_defaults_when_not_set() -> None:
    cfg = parse_config("images: [alpine]\n")
    assert settings_as_dict(cfg.defaults) == settings_as_dict(ImageSettings()) == {
        "platforms": "all", "index": "filter", "format": "keep", "foreign_layers": "skip",
        "referrers": True, "accept_unsigned_index": False}
    assert cfg.images[0].settings.platforms.all
    base = ImageSettings(index="sparse")
    assert parse_config("images: [alpine]\n", base=base).images[0].settings.index == "sparse"


@pytest.mark.parametrize(("text", "line", "why"), [
    ("images:\n  - ref: a/b\n    platfrom: linux/arm64\n", 3,
     "unknown key 'platfrom' in an image entry (did you mean 'platforms'?)"),
    ("imgaes: [a]\n", 1, "did you mean 'images'"),
    ("version: 1\ndefaults:\n  platform: all\nimages: [a]\n", 3, "did you mean 'platforms'"),
    ("version: 2\nimages: [a]\n", 1, "version 2 is not supported"),
    ("version: one\nimages: [a]\n", 1, "'version' must be an integer"),
    ("version: 1\n", 1, "no 'images' list"),
    ("images: []\n", 1, "the 'images' list is empty"),
    ("images: {a: b}\n", 1, "'images' must be a list"),
    ("- a\n- b\n", 1, "the top level must be a mapping"),
    ("images:\n  - ref: a/b\n    tags: [x]\n", 3, "'tags' goes with 'repository'"),
    ("images:\n  - repository: a/b:1\n    tags: [x]\n", 2, "takes no tag or digest"),
    ("images:\n  - repository: a/b\n", 2, "has no 'tags' list"),
    ("images:\n  - repository: a/b\n    tags: []\n", 3, "non-empty list"),
    ("images:\n  - ref: a/b\n    repository: c/d\n", 3,
     "give 'ref' or 'repository' (with 'tags'), not both"),
    ("images:\n  - platforms: all\n", 2, "either 'ref' or 'repository'"),
    ("images:\n  - ref: a/b\n    ref: c/d\n", 3, "duplicate key 'ref'"),
    ("images:\n  - ref: a/b\n    index: sprase\n", 3, "(did you mean 'sparse'?)"),
    ("images:\n  - ref: a/b\n    format: OCI\n", 3, "'format' must be one of"),
    ("images:\n  - ref: a/b\n    foreign_layers: drop\n", 3, "'foreign_layers' must be one"),
    ("images:\n  - ref: a/b\n    referrers: maybe\n", 3, "must be true or false"),
    ("images:\n  - ref: a/b\n    referrers: \"true\"\n", 3,
     "'referrers' must be true or false (a boolean), not the string \"true\""),
    ("defaults:\n  referrers: 'false'\nimages: [a]\n", 2, "'referrers' must be true or false"),
    ("registries:\n  r.io:\n    insecure: \"false\"\nimages: [a]\n", 3,
     "'insecure' must be true or false (a boolean), not the string \"false\""),
    ("registries:\n  r.io:\n    insecure: 1\nimages: [a]\n", 3, "'insecure' must be true or"),
    ("version: \"1\"\nimages: [a]\n", 1,
     "'version' must be an integer, not the string \"1\""),
    ("version: 1.0\nimages: [a]\n", 1, "'version' must be an integer"),
    ("images:\n  - ref: a/b\n    platforms: [linux/amd46]\n", 3, "unknown architecture"),
    ("defaults:\n  platforms: linux\nimages: [a]\n", 2, "an os without an architecture"),
    ("defaults:\n  platforms: amd46\nimages: [a]\n", 2, "expected os/arch"),
    ("images:\n  - ok/one\n  - Bad/Ref\n", 3, "lowercase"),
    ("images:\n  - ref: https://r.io/a\n", 2, "no scheme"),
    ("images:\n  - ref: ''\n", 2, "'ref' must be a non-empty string"),
    ("images: [a\n", 2, "invalid YAML"),
    ("registries:\n  r.io:\n    username: u\n    password_env: X\n    password_file: f\n"
     "images: [a]\n", 2, "not both"),
    ("registries:\n  r.io:\n    password_env: X\nimages: [a]\n", 2, "needs a 'username'"),
    ("registries:\n  r.io:\n    insecure: yes\n    cafile: x\nimages: [a]\n", 4,
     "did you mean 'ca_file'"),
])
def test_config_errors(text: str, line: int, why: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "conf/images.yaml")
    msg = str(exc.value)
    assert msg.startswith(f"conf/images.yaml:{line}: "), msg
    assert why in msg, msg
    assert "\n" not in msg
    assert exc.value.exit_code == EXIT_CODES["usage"]


def test_config_empty_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^images\.yaml: empty file$"):
        parse_config("", "images.yaml")
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read config") as exc:
        load_config(missing)
    assert str(missing) in str(exc.value)
    good = tmp_path / "images.yaml"
    good.write_text("images:\n  - alpine\n")
    assert load_config(good).images[0].where == f"{good}:2"


# -- manifests -----------------------------------------------------------------------------

DOCKER_CFG = {"mediaType": mt.DOCKER_CONFIG, "digest": D1, "size": 10}
OCI_CFG = {"mediaType": mt.OCI_CONFIG, "digest": D1, "size": 10}


@pytest.mark.parametrize(("body", "content_type", "want"), [
    ({"mediaType": mt.OCI_INDEX, "manifests": []}, mt.DOCKER_MANIFEST, mt.OCI_INDEX),
    ({"mediaType": mt.DOCKER_LIST, "manifests": []}, "", mt.DOCKER_LIST),
    ({"mediaType": mt.DOCKER_MANIFEST, "config": DOCKER_CFG}, "", mt.DOCKER_MANIFEST),
    ({"schemaVersion": 1, "signatures": []}, "", mt.SCHEMA1_SIGNED),
    ({"schemaVersion": 1, "fsLayers": []}, mt.DOCKER_MANIFEST, mt.SCHEMA1),
    ({"schemaVersion": 2, "manifests": []}, f"{mt.OCI_INDEX}; charset=utf-8", mt.OCI_INDEX),
    ({"schemaVersion": 2, "config": DOCKER_CFG}, "APPLICATION/VND.DOCKER.DISTRIBUTION"
     ".MANIFEST.V2+JSON", mt.DOCKER_MANIFEST),
    ({"schemaVersion": 2, "manifests": []}, mt.DOCKER_LIST, mt.DOCKER_LIST),
    ({"schemaVersion": 2, "manifests": []}, "", mt.OCI_INDEX),
    ({"schemaVersion": 2, "manifests": []}, "application/json", mt.OCI_INDEX),
    ({"schemaVersion": 2, "config": DOCKER_CFG, "layers": []}, "", mt.DOCKER_MANIFEST),
    ({"schemaVersion": 2, "config": OCI_CFG, "layers": []}, "", mt.OCI_MANIFEST),
    ({"schemaVersion": 2, "config": OCI_CFG}, "text/plain", mt.OCI_MANIFEST),
    ({"schemaVersion": 2, "mediaType": "", "config": DOCKER_CFG}, "", mt.DOCKER_MANIFEST),
])
def test_sniff_media_type(body: dict, content_type: str, want: str) -> None:
    assert sniff_media_type(body, content_type) == want


def _manifest(**extra: object) -> dict:
    doc: dict = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": OCI_CFG,
                 "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": D2, "size": 20}]}
    doc.update(extra)
    return doc


@pytest.mark.parametrize(("data", "why"), [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode(), "schema 1"),
    (json.dumps({"schemaVersion": 1, "signatures": []}).encode(), "schema 1"),
    (b'{"a": "' + b"x" * MAX_MANIFEST_BYTES + b'"}', "larger than"),
])
def test_raw_manifest_refuses(data: bytes, why: str) -> None:
    with pytest.raises(UnsupportedContent) as exc:
        RawManifest.from_bytes(data, where="r.io/a:1")
    assert why in str(exc.value) and "r.io/a:1" in str(exc.value)
    assert exc.value.exit_code == EXIT_CODES["unsupported"]


def test_raw_manifest_keeps_exact_bytes() -> None:
    compact = json.dumps(_manifest(), separators=(",", ":")).encode()
    pretty = json.dumps(_manifest(), indent=3).encode() + b"\n"
    a, b = RawManifest.from_bytes(compact), RawManifest.from_bytes(pretty)
    assert a.parsed == b.parsed and a.digest != b.digest
    for raw, data in ((a, compact), (b, pretty)):
        assert raw.data == data and raw.size == len(data)
        assert raw.digest == Descriptor.from_dict(raw.descriptor()).digest
        assert raw.is_image and not raw.is_index
        assert raw.config is not None and raw.config.digest == D1
        assert [d.digest for d in raw.layers] == [D2]
        assert raw.children == [] and raw.artifact_type is None


def test_a_released_manifest_reads_its_bytes_back_from_the_store_checked(tmp_path: Path) -> None:
    from mirror.store.manifests import ManifestStore

    data = json.dumps(_manifest(), indent=1).encode()
    raw = RawManifest.from_bytes(data)
    store = ManifestStore(tmp_path)
    assert store.put(raw.digest, raw.data)
    raw.release(store.get)
    assert raw._data is None  # not held any more
    assert raw.data == data and raw.size == len(data) and raw.config is not None
    assert raw == RawManifest.from_bytes(data) and hash(raw) == hash(RawManifest.from_bytes(data))
    # damaged in the store while the run goes on: an integrity error naming it, not bad bytes
    path = tmp_path / "manifests" / "sha256" / raw.digest[7:]
    path.write_bytes(data.replace(b"\n", b" "))
    with pytest.raises(IntegrityError) as exc:
        raw.data  # noqa: B018
    assert raw.digest in str(exc.value) and exc.value.exit_code == EXIT_CODES["integrity"]
    assert not path.exists()  # dropped: the next run fetches it again
    # a damaged entry is replaced by the next put of the right bytes, not taken as there
    path.write_bytes(data.replace(b"\n", b" "))
    assert store.put(raw.digest, data) and store.get(raw.digest) == data


def test_manifest_blobs_dedupe_and_artifacts() -> None:
    layer = {"mediaType": mt.OCI_LAYER_GZIP, "digest": D2, "size": 20}
    dup = RawManifest.from_bytes(json.dumps(_manifest(layers=[layer, layer])).encode())
    assert [d.digest for d in dup.blobs()] == [D1, D2]  # duplicate layers are legal
    art = RawManifest.from_bytes(json.dumps(_manifest(
        config={"mediaType": "application/vnd.example+json", "digest": D3, "size": 2},
        subject={"mediaType": mt.OCI_MANIFEST, "digest": D1, "size": 5})).encode())
    assert not art.is_image and art.artifact_type == "application/vnd.example+json"
    assert art.subject is not None and art.subject.digest == D1
    typed = RawManifest.from_bytes(json.dumps(_manifest(artifactType="a/b")).encode())
    assert typed.artifact_type == "a/b"


def test_index_children() -> None:
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "digest": D1, "size": 1,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": mt.OCI_MANIFEST, "digest": D2, "size": 2,
         "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.digest": D1}},
        {"mediaType": mt.OCI_MANIFEST, "digest": D3, "size": 3},
    ]}
    raw = RawManifest.from_bytes(json.dumps(doc).encode())
    assert raw.is_index and not raw.is_image and raw.config is None and raw.layers == []
    kids = raw.children
    assert [c.digest for c in kids] == [D1, D2, D3]
    assert str(kids[0].platform) == "linux/arm64" and kids[1].platform.is_unknown
    assert kids[1].annotations["vnd.docker.reference.digest"] == D1
    assert kids[2].platform is None
    bad = RawManifest.from_bytes(json.dumps({"mediaType": mt.OCI_INDEX}).encode())
    with pytest.raises(IntegrityError, match="no manifests list"):
        _ = bad.children


@pytest.mark.parametrize(("desc", "why"), [
    ("x", "not an object"),
    ({"size": 1}, "no digest"),
    ({"digest": "sha256:abc", "size": 1}, "digest"),
    ({"digest": D1}, "no valid size"),
    ({"digest": D1, "size": -1}, "no valid size"),
    ({"digest": D1, "size": "1"}, "no valid size"),
    ({"digest": D1, "size": True}, "no valid size"),
])
def test_descriptor_invalid(desc: object, why: str) -> None:
    with pytest.raises(IntegrityError, match=why):
        Descriptor.from_dict(desc)


@pytest.mark.parametrize(("desc", "foreign"), [
    ({"mediaType": mt.OCI_LAYER_GZIP, "digest": D1, "size": 1}, False),
    ({"mediaType": mt.DOCKER_FOREIGN, "digest": D1, "size": 1}, True),
    ({"mediaType": mt.OCI_NONDIST_GZIP, "digest": D1, "size": 1}, True),
    ({"mediaType": mt.OCI_LAYER_GZIP, "digest": D1, "size": 1,
      "urls": ["https://example.com/l"]}, True),
])
def test_descriptor_foreign(desc: dict, foreign: bool) -> None:
    d = Descriptor.from_dict(desc)
    assert d.is_foreign is foreign
    assert d.size == 1 and d.digest == D1


# -- inspect: bundle or reference ----------------------------------------------------------


@pytest.mark.parametrize(("target", "is_bundle"), [
    ("bundles/nosuch.tar", True),  # once looked up as docker.io/bundles/nosuch:tar
    ("b.tar", True), ("b.TAR", True), ("b.tar.zst", True), ("b.tzst", True), ("b.zst", True),
    ("b.tar.gz", True), ("/srv/b", True), ("./b", True), ("../b", True), ("~/b", True),
    ("alpine", False), ("alpine:3.20", False), ("bundles/app", False),
    ("localhost:5000/team/app:1.2", False), ("ghcr.io/org/app@" + D1, False),
    ("app:tar", False), ("registry.tar.example/app:v1", False),
])
def test_inspect_target_is_a_bundle_or_a_reference(target: str, is_bundle: bool,
                                                   tmp_path: Path, monkeypatch) -> None:
    from mirror.inspect import bundle_path

    monkeypatch.chdir(tmp_path)
    assert (bundle_path(target) is not None) is is_bundle


def test_inspect_target_that_exists(tmp_path: Path, monkeypatch) -> None:
    from mirror.inspect import bundle_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "carried").write_bytes(b"")
    (tmp_path / "alpine").mkdir()  # a directory is no bundle: still a reference
    assert bundle_path("carried") == Path("carried")
    assert bundle_path("alpine") is None
    (tmp_path / "layout").mkdir()
    (tmp_path / "layout" / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    assert bundle_path("layout") == Path("layout")  # an OCI layout directory
    assert bundle_path("~/b.tar") == tmp_path / "home" / "b.tar"
    assert bundle_path("x" * 300 + ":v1") is None  # too long for a file name


def test_inspect_text_puts_every_digest_in_one_column() -> None:
    from mirror.inspect import render

    doc = {"reference": "r.io/x:1", "digest": "sha256:" + "a" * 64, "mediaType": "m",
           "sourceDigest": "sha256:" + "b" * 64,
           "manifests": [{"platform": "linux/arm64", "digest": "sha256:" + "c" * 64,
                          "config": {"digest": "sha256:" + "d" * 64},
                          "layers": [{"digest": "sha256:" + "e" * 64, "size": 3,
                                      "mediaType": "l", "urls": ["https://x.example/l"]}],
                          "diffIds": ["sha256:" + "f" * 64]}]}
    lines = [x for x in render([doc]).splitlines() if ": " in x and not x.startswith("r.io")]
    columns = {x.index("sha256:") if "sha256:" in x else x.index("https:") for x in lines}
    assert len(lines) == 7 and len(columns) == 1, lines


@pytest.mark.parametrize(("media_type", "kind"), [
    ("application/vnd.oci.image.config.v1+json", "config"),
    ("application/vnd.docker.container.image.v1+json", "config"),
    ("application/vnd.cncf.helm.config.v1+json", "config"),
    ("application/vnd.oci.image.layer.v1.tar+gzip", "layer"),
    ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "layer"),
    ("application/vnd.dev.sigstore.bundle.v0.3+json", "blob"),
])
def test_a_blob_is_named_for_what_it_is(media_type: str, kind: str) -> None:
    from mirror.mediatypes import blob_kind

    assert blob_kind(media_type) == kind


# -- the command line ----------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--platform", "--index", "--format", "--foreign-layers",
                                  "--no-referrers", "--referrer-type"])
def test_lock_takes_every_flag_that_changes_what_a_pull_records(flag: str) -> None:
    """A lock made with pull's flags records what that pull does: each flag that changes the
    digests or blobs a pull records is lock's too, with the same meaning."""
    from mirror.cli_args import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")

    def action(command: str):
        return next(a for a in sub.choices[command]._actions if flag in a.option_strings)

    pull, lock = action("pull"), action("lock")
    assert (type(lock), lock.dest, lock.choices, lock.default, lock.nargs, lock.help) == \
        (type(pull), pull.dest, pull.choices, pull.default, pull.nargs, pull.help)


def test_lock_parses_foreign_layers_and_referrer_types() -> None:
    from mirror.cli_args import build_parser

    args = build_parser().parse_args(["lock", "-f", "images.yaml", "--foreign-layers",
                                      "rewrite", "--referrer-type", "sbom",
                                      "--referrer-type", "signature"])
    assert args.foreign_layers == "rewrite" and args.referrer_type == ["sbom", "signature"]


def test_manifest_json_names_images_as_docker_save_does() -> None:
    """RepoTags in Docker's short form (what `docker save` writes, and `docker load` and
    podman read back to the full name); a digest alone is no tag."""
    from mirror.bundle.dockersave import familiar

    assert familiar(Reference.parse("docker.io/library/alpine:3.20")) == "alpine:3.20"
    assert familiar(Reference.parse("redis")) == "redis:latest"
    assert familiar(Reference.parse("docker.io/bitnami/redis:7")) == "bitnami/redis:7"
    assert familiar(Reference.parse("docker.io/library/a/b:1")) == "library/a/b:1"
    assert familiar(Reference.parse("ghcr.io/org/app:1.2")) == "ghcr.io/org/app:1.2"
    assert familiar(Reference.parse("localhost:5000/app@sha256:" + "a" * 64)) is None


def test_a_network_error_line_never_carries_a_url_query() -> None:
    """aiohttp names the URL in some errors ("Can not write request body for URL"): an
    upload's `?_state=` token or a presigned URL's signature must not reach an error line."""
    import aiohttp

    from mirror.registry.network import describe_exception

    e = aiohttp.ClientOSError(28, "Can not write request body for "
                              "http://reg:5000/v2/app/blobs/uploads/u1?_state=SECRET&digest=x")
    line = describe_exception(e)
    assert "SECRET" not in line and "http://reg:5000/v2/app/blobs/uploads/u1?..." in line, line


@pytest.mark.parametrize("name", ["blobs/sha256/" + "a" * 64, "index.json", "x" * 100,
                                  "x" * 101, "blobs/sha256/é", "manifest.json"])
@pytest.mark.parametrize("size", [0, 1, 511, 8 ** 11 - 1, 8 ** 11, 10 ** 13])
def test_a_header_size_is_the_size_of_the_header_written(name: str, size: int) -> None:
    """tar_size measures each member's header without making it (a rerun with nothing new
    checks the bundle's size, thousands of members): the same bytes as the header written,
    past the ustar limits too (a long or non-ASCII name, 8 GiB and more: PAX)."""
    from mirror.bundle.writer import _header, _header_size

    assert _header_size(name, size) == len(_header(name, size))


def test_a_prehash_stands_only_for_the_file_it_read(tmp_path: Path) -> None:
    """The bundle hashed while a run plans (mirror.bundle.writer.Prehash): its digest is the
    file's, and None once the file changed after the read (same size, mtime put back: the
    ctime still tells), so `unchanged` hashes it again rather than trust an old answer."""
    import os

    from mirror.bundle.writer import Prehash
    from mirror.digest import sha256_file

    out = tmp_path / "b.tar"
    out.write_bytes(os.urandom(9 << 20))
    assert Prehash.start(out) is None  # no .sha256 beside it: nothing to compare with
    out.with_name("b.tar.sha256").write_text("0" * 64 + "  b.tar\n")
    p = Prehash.start(out)
    assert p is not None and p.digest() == sha256_file(out)
    p = Prehash.start(out)
    assert p is not None and p.digest() is not None
    st = out.stat()
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.digest() is None
    stopped = Prehash.start(out)
    assert stopped is not None
    stopped.stop()
    assert stopped.digest() in (None, sha256_file(out))  # never another file's digest


async def test_an_iterator_stepped_in_a_thread_is_left_by_it_when_cancelled() -> None:
    """aiter_thread (sync's and load's sources: a file read and hashed in a thread),
    cancelled while a step runs in its thread: it waits for that step before it raises, so
    the caller closes the iterator (and its file) with no thread inside it. Before, the
    cancellation came back at once and closing it raised `generator already executing`."""
    import asyncio
    import threading

    from mirror.aio import aiter_thread

    started, release = threading.Event(), threading.Event()

    def chunks():
        yield b"a"
        started.set()
        release.wait(5)
        yield b"b"

    gen = chunks()
    got: list[bytes] = []

    async def consume() -> None:
        async for chunk in aiter_thread(gen):
            got.append(chunk)

    task = asyncio.ensure_future(consume())
    while not started.is_set():
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # the step under way is waited for
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    gen.close()
    assert got == [b"a"]


async def test_confirmed_answers_which_checks_said_yes_within_the_time_given() -> None:
    """aio.confirmed (a stopped push's settling: one HEAD per transfer cut short): the items
    whose check said True, asked all at once; a check raising a RegistryError (what the
    transport makes of a reset connection) said no, any other error (another MirrorError
    too) is the caller's; none when they have not all answered in time."""
    import asyncio
    import time

    from mirror.aio import confirmed
    from mirror.errors import IntegrityError, NotFound

    async def check(item: str) -> bool:
        await asyncio.sleep(0.2)
        if item == "gone":
            raise NotFound("gone")
        if item == "broken":
            raise ValueError("broken")
        if item == "damaged":
            raise IntegrityError("damaged")
        return item.startswith("yes")

    start = time.monotonic()
    got = await confirmed(["yes-1", "no", "gone", "yes-2"], check, 5)
    assert got == ["yes-1", "yes-2"]
    assert time.monotonic() - start < 0.6  # at once, not one after the other
    assert await confirmed([], check, 0) == []
    with pytest.raises(ValueError):
        await confirmed(["yes", "broken"], check, 5)
    with pytest.raises(IntegrityError):
        await confirmed(["yes", "damaged"], check, 5)

    async def slow(item: str) -> bool:
        await asyncio.sleep(0.05 if item == "quick" else 5)
        return True

    start = time.monotonic()
    assert await confirmed(["quick", "slow"], slow, 0.3) == []
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("was_on", [True, False])
def test_main_leaves_the_cyclic_collector_as_its_caller_had_it(tmp_path: Path,
                                                                was_on: bool) -> None:
    """main turns the collector off while a command's modules import (it walked them 60
    times at a rerun's start, to free nothing), then on for the run: only if it was on. A
    caller that turned it off (test_ratelimit's sync without it) keeps it off, through a
    run, an error and argparse's exit alike."""
    import gc

    from mirror.cli import main

    seen: list[bool] = []
    try:
        gc.enable() if was_on else gc.disable()
        assert main(["inspect", str(tmp_path / "missing.tar"), "-q"]) != 0
        seen.append(gc.isenabled())
        with pytest.raises(SystemExit):
            main(["--version"])
        seen.append(gc.isenabled())
    finally:
        gc.enable()
    assert seen == [was_on, was_on]


def test_main_leaves_the_collectors_thresholds_and_frozen_objects_as_found(
        tmp_path: Path) -> None:
    """_settle_gc freezes what the imports made and raises the first generation's threshold
    to 10,000, for the run; main puts both back as it returns. In-process callers (the tests)
    kept a threshold of 10,000 and every object alive at each call frozen for good: cyclic
    garbage of what ran before, never collected."""
    import gc

    from mirror.cli import main

    gc.collect()
    found = gc.get_threshold(), gc.get_freeze_count()
    assert found[1] == 0, found
    assert main(["inspect", str(tmp_path / "missing.tar"), "-q"]) != 0
    after = gc.get_threshold(), gc.get_freeze_count()
    gc.unfreeze()
    gc.set_threshold(*found[0])
    assert after == found


def _report_doc(n: int) -> dict:
    """A pull report's shape with `n` images (digests and platforms as a run's)."""
    def digest(i: int, k: int) -> str:
        return "sha256:" + f"{i:08x}{k:02x}".ljust(64, "0")

    images = [{"reference": f"registry.example/bench/s{i // 8:03d}:1.{i % 8}.0",
               "where": "command line", "digest": digest(i, 0), "source_digest": digest(i, 0),
               "media_type": "application/vnd.oci.image.index.v1+json", "mode": "full",
               "platforms": ["linux/amd64", "linux/arm64"],
               "platform_digests": {"linux/amd64": digest(i, 1), "linux/arm64": digest(i, 2)},
               "manifests": [digest(i, 1), digest(i, 2), digest(i, 0)], "conversions": {},
               "bytes_fetched": 958317, "bytes_reused": 0, "bytes_kept": 0, "retries": 0,
               "seconds": 26.992, "error": None, "error_code": None, "hint": None}
              for i in range(n)]
    return {"bundle": "site.tar", "requests": {"registry.example": {"manifest HEAD": n}},
            "waiting": [], "tag_rules": [], "images": images, "empty": []}


# a report written in a process of its own (the peak of this test's process counts every
# thread's allocations: a proxy or pool left by an earlier test): argv path, secret or ""
_REPORT_PEAK = """
import sys, tracemalloc
from pathlib import Path
from mirror import secrets
from mirror.report import Report
from tests.test_units import _report_doc
path, secret = sys.argv[1:3]
secrets.remember(secret)
report = Report(Path(path), "pull")
report.add(**_report_doc(2000))
tracemalloc.start()
report.write(0, None)
print(tracemalloc.get_traced_memory()[1])
"""


@pytest.mark.parametrize("secret", ["", "registry.example"], ids=["anonymous", "a-secret"])
def test_the_report_is_written_entry_by_entry(tmp_path: Path, secret: str) -> None:
    """A report of 2,000 images (1.9 MiB of JSON) was made whole in memory three times over
    (the entries' texts, their join, the document, its bytes: 7.5 MiB of heap at its peak
    above the entries, the last thing a nightly at 2,000 references allocates); it is
    written to the file an entry at a time, and so with credentials, whose secrets are
    blanked out of each entry as it is written (the whole document was redacted at once:
    6 MiB). The file is the same: one key, and one entry of a list of objects, per line,
    the document json.loads reads back, a secret in it shown as ***."""
    path = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-c", _REPORT_PEAK, str(path), secret], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stdout)
    text = path.read_text()
    doc = _report_doc(2000)
    if secret:  # the registry's name taken for a secret: shown as *** wherever it was
        doc = json.loads(json.dumps(doc).replace(secret, "***"))
        assert secret not in text
    assert json.loads(text) == {"command": "pull", "error": None, "exit_code": 0, **doc}
    assert len(text) > 1 << 20 and peak < 256 << 10, (len(text), peak)
    lines = text.splitlines()
    assert lines[:2] == ["{", '  "command": "pull",'] and lines[-1] == "}"
    assert sum(1 for ln in lines if ln.startswith('    {"reference": ')) == 2000
    assert '  "empty": []' in lines and '  "waiting": [],' in lines


@pytest.mark.parametrize("secret", ['pa"ss\\word', "pässwörd", "p\tw\U0001f511rd"],
                         ids=["quote-backslash", "non-ascii", "tab-astral"])
def test_a_secret_json_escapes_is_blanked_out_of_the_report(
        monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    """A report piece is checked for each secret in its JSON-escaped form before it is
    decoded and redacted: a secret with characters JSON escapes (a quote, a backslash, a
    tab, non-ASCII ones, one beyond the BMP as a surrogate pair) is found and blanked out
    where it is a whole string or a part of one; a piece without one is written as it was."""
    from mirror import secrets
    from mirror.report import to_text

    monkeypatch.setattr(secrets, "_known", set())
    secrets.remember(secret)
    doc = {"error": f"401 from registry: token {secret}!", "images": [
        {"reference": "r/a:1", "auth": secret}, {"reference": "r/b:1", "note": "none here"}]}
    text = b"".join(to_text(doc)).decode()
    assert json.loads(text) == {"error": "401 from registry: token ***!", "images": [
        {"reference": "r/a:1", "auth": "***"}, {"reference": "r/b:1", "note": "none here"}]}
    assert secret not in json.loads(text)["error"] and json.dumps(secret)[1:-1] not in text


def test_the_lock_file_is_written_piece_by_piece(tmp_path: Path) -> None:
    """A lock file of 2,000 images and 8,500 blobs (2.6 MiB) was json.dumps'd whole, its
    indent the pure-Python encoder's: a string per token held in a list, then the text and
    its bytes, 10 MiB of heap at the end of a nightly; it is written as the encoder gives
    it. The same bytes: json.dumps(doc, indent=2) and a newline, Lock.read reads it back."""
    import tracemalloc

    from mirror.lockfile import LOCK_VERSION, Lock

    entries = {i["reference"]: {"sourceDigest": i["source_digest"], "digest": i["digest"],
                                "platforms": i["platform_digests"],
                                "sourcePlatforms": i["platform_digests"],
                                "manifests": i["manifests"], "conversions": {}}
               for i in _report_doc(2000)["images"]}
    blobs = {"sha256:" + f"{n:064x}": 4096 + n for n in range(8500)}
    bundle = {"name": "site.tar", "digest": "sha256:" + "0" * 64}
    lock = Lock(images=entries, blobs=blobs, bundle=bundle)
    path = tmp_path / "images.lock"
    tracemalloc.start()
    try:
        lock.write(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    doc = {"lockVersion": LOCK_VERSION, "images": dict(sorted(entries.items())),
           "blobs": dict(sorted(blobs.items())), "bundle": bundle}
    assert path.read_bytes() == json.dumps(doc, indent=2).encode() + b"\n"
    assert peak < 2 << 20, peak
    again = Lock.read(path)
    assert again.images == entries and again.blobs == blobs and again.bundle == bundle
