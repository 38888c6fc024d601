"""`mirror load --write-client-config DIR` and `mirror client-config`: the clients inside the
gap pull `docker.io/library/NAME:TAG` and `ghcr.io/org/NAME:TAG` from where the load put them.

A layout naming its images as the clients do (tests/support/imagegen.write_layout) is loaded
into a real registry under a prefix (its access log on: the proof that a pull went there, as
nothing else on this machine answers for docker.io or ghcr.io); then containerd 1.6 (`ctr
images pull --hosts-dir`) and Podman 4.3 (`CONTAINERS_REGISTRIES_CONF`) from the Debian
packages, with private roots, pull by the source names through the files written, and get the
digests the target serves. The other files parse (tomllib, yaml.safe_load) with the fields
their schemas require.
"""

from __future__ import annotations

import json
import random
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support import imagegen as ig
from tests.support.oracle import mirror_ok, run_mirror
from tests.support.pusher import get_manifest, list_tags, push_image
from tests.support.registry import Registry
from tests.support.runtimes import Containerd, Dockerd, Podman

HUB = "docker.io/library/cfgredis:7"  # Hub name under the prefix: every client
GHCR = "ghcr.io/org/cfgapp:1.0"  # another registry: not Docker
SHORT = "cfgshort:2"  # a short name: the load puts it at PREFIX/cfgshort, a path rewrite
PREFIX = "site"
# config.openshift.io/v1 ImageMirror (github.com/openshift/api config/v1, kubebuilder pattern)
IMAGE_MIRROR = re.compile(
    r"^((?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9]"
    r"[a-zA-Z0-9-]*[a-zA-Z0-9]))+)?(?::[0-9]+)?)(?:(?:/[a-z0-9]+(?:(?:(?:[._]|__|[-]*)"
    r"[a-z0-9]+)+)?)+)?$")


@dataclass
class Loaded:
    target: Registry
    layout: Path
    out: Path  # the configuration directory
    stderr: str
    report: dict
    digests: dict[str, str]  # source name -> the digest the target serves


def _pull_with_ctr_and_podman(tmp_path: Path, out: Path, name: str, digest: str) -> None:
    """containerd (through DIR's hosts.toml) and Podman (DIR's registries.conf drop-in) each
    pull `name` and get `digest`."""
    with Containerd(tmp_path / "ctrd") as c:
        c.ctr("images", "pull", "--snapshotter", "native", "--hosts-dir",
              out / "containerd/certs.d", name)
        assert c.images()[name]["digest"] == digest
    p = Podman(tmp_path / "podman")
    try:
        conf_file = p.root / "registries.conf"
        conf_file.write_text(conf_file.read_text() + (
            out / "containers/registries.conf.d/50-mirror.conf").read_text())
        p.cli("pull", "-q", name)
        assert p.image(name)["Digest"] == digest
    finally:
        p.stop()


def _log(reg: Registry) -> str:
    return reg.log_path.read_text(errors="replace")


def _asked(log: str, path: str, agent: str) -> bool:
    """The access log has a HEAD or GET of `path` (a manifest by tag: containerd HEADs it,
    with a ?ns= query) from a client whose User-Agent holds `agent`, answered 200. The
    load's or sync's own requests are mirror's (Python's), not the runtime's."""
    ask = re.compile(rf'"(?:HEAD|GET) {re.escape(path)}(?:\?\S*)? HTTP/1\.1" 200 ')
    return any(ask.search(ln) and agent in ln for ln in log.splitlines())


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    tmp = tmp_path_factory.mktemp("clientconfig")
    rng = random.Random(16)
    images = {HUB: ig.make_image(rng, ig.AMD64), GHCR: ig.make_image(rng, ig.AMD64),
              SHORT: ig.make_image(rng, ig.AMD64)}
    layout = ig.write_layout(tmp / "layout", images)
    with Registry(extra_config={"log": {"accesslog": {"disabled": False}}}) as target:
        report = tmp / "report.json"
        proc = mirror_ok("load", layout, "--to", f"{target.host}/{PREFIX}",
                         "--write-client-config", tmp / "cfg", "--report", report)
        digests = {}
        for name, repo, tag in ((HUB, "library/cfgredis", "7"), (GHCR, "org/cfgapp", "1.0"),
                                (SHORT, "cfgshort", "2")):
            _, _, headers = get_manifest(target.url, f"{PREFIX}/{repo}", tag)
            digests[name] = headers["Docker-Content-Digest"]
            assert digests[name] == images[name].digest
        yield Loaded(target, layout, tmp / "cfg", proc.stderr, json.loads(report.read_text()),
                     digests)


def test_files_parse_with_the_fields_each_client_requires(loaded: Loaded) -> None:
    t, out = loaded.target.host, loaded.out
    hub = tomllib.loads((out / "containerd/certs.d/docker.io/hosts.toml").read_text())
    assert hub["server"] == "https://registry-1.docker.io"  # the fallback: Docker Hub's API
    assert hub["host"] == {f"http://{t}/v2/{PREFIX}": {  # plain HTTP: the scheme says so
        "capabilities": ["pull", "resolve"], "override_path": True}}
    ghcr = tomllib.loads((out / "containerd/certs.d/ghcr.io/hosts.toml").read_text())
    assert ghcr["server"] == "https://ghcr.io" and f"http://{t}/v2/{PREFIX}" in ghcr["host"]

    k3s = yaml.safe_load((out / "k3s/registries.yaml").read_text())
    assert k3s["mirrors"]["ghcr.io"] == {"endpoint": [f"http://{t}"],
                                         "rewrite": {"^(.*)$": f"{PREFIX}/$1"}}
    # docker.io holds a path rewrite (cfgshort): one anchored rule per repository
    assert k3s["mirrors"]["docker.io"] == {"endpoint": [f"http://{t}"], "rewrite": {
        "^library/cfgredis$": f"{PREFIX}/library/cfgredis",
        "^library/cfgshort$": f"{PREFIX}/cfgshort"}}
    assert "configs" not in k3s  # plain HTTP needs no TLS settings

    conf = tomllib.loads((out / "containers/registries.conf.d/50-mirror.conf").read_text())
    # the source stays the location (tried last); the mirror, plain HTTP, is insecure
    assert {r["prefix"]: r for r in conf["registry"]} == {
        f"{reg}/{r}": {"prefix": f"{reg}/{r}", "location": f"{reg}/{r}",
                       "mirror": [{"location": f"{t}/{p}", "insecure": True}]}
        for reg, r, p in (("docker.io", "library/cfgredis", f"{PREFIX}/library/cfgredis"),
                          ("docker.io", "library/cfgshort", f"{PREFIX}/cfgshort"),
                          ("ghcr.io", "org/cfgapp", f"{PREFIX}/org/cfgapp"))}

    for path, kind, key in (("imagedigestmirrorset", "ImageDigestMirrorSet",
                             "imageDigestMirrors"),
                            ("imagetagmirrorset", "ImageTagMirrorSet", "imageTagMirrors")):
        doc = yaml.safe_load((out / f"openshift/{path}.yaml").read_text())
        assert doc["apiVersion"] == "config.openshift.io/v1" and doc["kind"] == kind
        assert doc["metadata"]["name"]
        for e in doc["spec"][key]:  # the API's pattern for a mirror (openshift/api)
            assert all(IMAGE_MIRROR.match(m) for m in [e["source"], *e["mirrors"]]), e
        assert {e["source"]: e["mirrors"] for e in doc["spec"][key]} == {
            "docker.io/library/cfgredis": [f"{t}/{PREFIX}/library/cfgredis"],
            "docker.io/library/cfgshort": [f"{t}/{PREFIX}/cfgshort"],
            "ghcr.io/org/cfgapp": [f"{t}/{PREFIX}/org/cfgapp"]}
    assert not (out / "docker").exists()  # a prefix: Docker's mirror cannot express it


def test_what_a_client_cannot_express_is_listed_with_the_reason(loaded: Loaded) -> None:
    t = loaded.target.host
    left = {(x["client"], x["source"]): x for x in loaded.report["client_config"]["left_out"]}
    assert set(left) == {("containerd", "docker.io/library/cfgshort"),
                         ("docker", "docker.io/library/cfgredis"),
                         ("docker", "docker.io/library/cfgshort"),
                         ("docker", "ghcr.io/org/cfgapp")}
    assert "not rewrite the path" in left["containerd", "docker.io/library/cfgshort"]["reason"]
    assert left["containerd", "docker.io/library/cfgshort"]["target"] == f"{t}/{PREFIX}/cfgshort"
    assert "cannot rewrite paths" in left["docker", "docker.io/library/cfgredis"]["reason"]
    assert "Docker Hub images only" in left["docker", "ghcr.io/org/cfgapp"]["reason"]
    readme = (loaded.out / "README.txt").read_text()
    lines = [ln for ln in loaded.stderr.splitlines() if "not written:" in ln]
    assert len(lines) == 4, loaded.stderr
    for ln in lines:  # each on stderr and in README.txt, one line each
        assert ln.split("client config: ", 1)[1] in readme
    files = loaded.report["client_config"]["files"]
    assert str(loaded.out / "containerd/certs.d/docker.io/hosts.toml") in files
    assert f"{HUB} -> {t}/{PREFIX}/library/cfgredis:7" in readme


@pytest.mark.slow
def test_containerd_pulls_the_source_names_from_the_target(loaded: Loaded,
                                                           tmp_path: Path) -> None:
    with Containerd(tmp_path / "ctrd") as c:
        for name in (HUB, GHCR):
            c.ctr("images", "pull", "--snapshotter", "native", "--hosts-dir",
                  loaded.out / "containerd/certs.d", name)
            assert c.images()[name]["digest"] == loaded.digests[name]
    log = _log(loaded.target)
    assert f"GET /v2/{PREFIX}/library/cfgredis/manifests/" in log
    assert f"GET /v2/{PREFIX}/org/cfgapp/manifests/" in log


@pytest.mark.slow
def test_podman_pulls_the_source_names_from_the_target(loaded: Loaded, tmp_path: Path) -> None:
    p = Podman(tmp_path / "podman")
    try:
        # registries.conf: podman's own settings, then the drop-in's entries
        conf = p.root / "registries.conf"
        conf.write_text(conf.read_text() + (
            loaded.out / "containers/registries.conf.d/50-mirror.conf").read_text())
        for name in (HUB, SHORT):  # SHORT: by its full name, docker.io/library/cfgshort:2
            full = name if "/" in name else f"docker.io/library/{name}"
            p.cli("pull", "-q", full)
            assert p.image(full)["Digest"] == loaded.digests[name]
    finally:
        p.stop()
    log = _log(loaded.target)
    assert f"GET /v2/{PREFIX}/library/cfgredis/manifests/7" in log
    assert f"GET /v2/{PREFIX}/cfgshort/manifests/2" in log


@pytest.mark.slow
def test_client_config_without_a_load_and_no_fallback(loaded: Loaded, tmp_path: Path) -> None:
    """`mirror client-config` gives the load's mapping from the bundle alone (one ping of the
    target for its scheme); --no-fallback makes the mirror containerd's server."""
    out = tmp_path / "cfg"
    proc = run_mirror("client-config", loaded.layout, "--to",
                      f"{loaded.target.host}/{PREFIX}", "-o", out, "--no-fallback")
    assert proc.returncode == 0, proc.stderr
    t = loaded.target.host
    hub = tomllib.loads((out / "containerd/certs.d/docker.io/hosts.toml").read_text())
    mirror = {"override_path": True, "capabilities": ["pull", "resolve"]}
    assert hub == {"server": f"http://{t}/v2/{PREFIX}", **mirror,  # no upstream anywhere
                   "host": {f"http://{t}/v2/{PREFIX}": mirror}}
    conf = tomllib.loads((out / "containers/registries.conf.d/50-mirror.conf").read_text())
    assert conf["registry"][0] == {"prefix": "docker.io/library/cfgredis", "insecure": True,
                                   "location": f"{t}/{PREFIX}/library/cfgredis"}
    idms = yaml.safe_load((out / "openshift/imagedigestmirrorset.yaml").read_text())
    assert {e["mirrorSourcePolicy"] for e in idms["spec"]["imageDigestMirrors"]} == {
        "NeverContactSource"}
    assert "--disable-default-registry-endpoint" in (out / "k3s/registries.yaml").read_text()
    # cfgshort, left out for containerd (its path rewritten), under the docker.io file that
    # now sends every docker.io repository to the mirror: its line says so, and what to pull
    short = next(ln.split("client config: ", 1)[1] for ln in proc.stderr.splitlines()
                 if "containerd: docker.io/library/cfgshort " in ln)
    assert f"pull it as {t}/{PREFIX}/cfgshort:2" in short and "--no-fallback" in short, short
    assert short in (out / "README.txt").read_text()
    with Containerd(tmp_path / "ctrd") as c:
        c.ctr("images", "pull", "--snapshotter", "native", "--hosts-dir",
              out / "containerd/certs.d", GHCR)
        assert c.images()[GHCR]["digest"] == loaded.digests[GHCR]
        # what the line says: its source name fails at the mirror, with no other host asked;
        # the name it gives pulls
        proc = c.ctr("images", "pull", "--snapshotter", "native", "--hosts-dir",
                     out / "containerd/certs.d", "docker.io/library/cfgshort:2", check=False)
        assert proc.returncode != 0 and "not found" in proc.stderr, proc.stderr
        assert "registry-1.docker.io" not in proc.stderr, proc.stderr
        c.ctr("images", "pull", "--snapshotter", "native", "--plain-http",
              f"{t}/{PREFIX}/cfgshort:2")
        assert c.images()[f"{t}/{PREFIX}/cfgshort:2"]["digest"] == loaded.digests[SHORT]
        # an image the mirror lacks: with the fallback ghcr.io is asked next; without, never
        missing = "ghcr.io/org/cfgmissing:1"
        for hosts, upstream in ((loaded.out, True), (out, False)):
            proc = c.ctr("images", "pull", "--snapshotter", "native", "--hosts-dir",
                         hosts / "containerd/certs.d", missing, check=False)
            assert proc.returncode != 0
            assert ("https://ghcr.io/v2/" in proc.stderr) is upstream, proc.stderr
            assert "notfound" in proc.stderr.lower() and f'host="{t}"' in proc.stderr, \
                proc.stderr  # the mirror was asked first, and said no
    p = Podman(tmp_path / "podman")
    try:  # Podman: the mirror is the location; an image it lacks is not looked for elsewhere
        conf_file = p.root / "registries.conf"
        conf_file.write_text(conf_file.read_text() + (
            out / "containers/registries.conf.d/50-mirror.conf").read_text())
        p.cli("pull", "-q", HUB)
        assert p.image(HUB)["Digest"] == loaded.digests[HUB]
        proc = p.cli("pull", "-q", "docker.io/library/cfgredis:8", check=False)
        assert proc.returncode != 0 and f"{t}/{PREFIX}/library/cfgredis" in proc.stderr
        assert "registry-1.docker.io" not in proc.stderr, proc.stderr  # with it: asked next
    finally:
        p.stop()
    # the same mapping as the load's, file for file but the fallback
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == sorted(
        p.relative_to(loaded.out) for p in loaded.out.rglob("*") if p.is_file())


@pytest.mark.slow
def test_docker_pulls_hub_images_through_registry_mirrors(
        loaded: Loaded, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Loaded with no prefix, Docker Hub images are at their own paths: Docker 20.10 given
    the daemon.json written pulls docker.io/library/cfgredis:7 from the target (the ghcr.io
    one is left out for Docker); containerd's hosts.toml has no override_path then."""
    with Registry(extra_config={"log": {"accesslog": {"disabled": False}}}) as target:
        t, out = target.host, tmp_path / "cfg"
        mirror_ok("load", loaded.layout, "--to", t, "--write-client-config", out)
        doc = json.loads((out / "docker/daemon.json").read_text())
        assert doc == {"registry-mirrors": [f"http://{t}"], "insecure-registries": [t]}
        hub = tomllib.loads((out / "containerd/certs.d/docker.io/hosts.toml").read_text())
        assert hub["host"] == {f"http://{t}": {"capabilities": ["pull", "resolve"]}}
        assert "docker: ghcr.io/org/cfgapp" in (out / "README.txt").read_text()
        # a short root: dockerd's containerd socket path must fit a sockaddr_un
        with Dockerd(tmp_path_factory.mktemp("dk"), config=doc) as d:
            d.cli("pull", HUB)
            assert d.image(HUB)["RepoDigests"] == [f"cfgredis@{loaded.digests[HUB]}"]
        # Docker's own request for the tag, answered by the target (not the load's)
        assert _asked(_log(target), "/v2/library/cfgredis/manifests/7", "Docker-Client/"), \
            _log(target)[-3000:]


def test_flags_that_write_no_configuration_are_refused_before_any_work(loaded: Loaded,
                                                               tmp_path: Path) -> None:
    proc = run_mirror("load", loaded.layout, "--to", f"{loaded.target.host}/x", "--dry-run",
                      "--write-client-config", tmp_path / "cfg")
    assert proc.returncode == 2 and "--dry-run pushes nothing" in proc.stderr, proc.stderr
    assert not (tmp_path / "cfg").exists()
    proc = run_mirror("load", loaded.layout, "--to", f"{loaded.target.host}/x", "--no-fallback")
    assert proc.returncode == 2 and "give --write-client-config" in proc.stderr, proc.stderr
    assert list_tags(loaded.target.url, "x/library/cfgredis") == []  # nothing pushed


@pytest.mark.parametrize("trust", ["ca-file", "insecure"])
@pytest.mark.slow
def test_a_tls_target_is_reached_as_mirror_reached_it(loaded: Loaded, registry_factory,
                                                      tmp_path: Path, trust: str) -> None:
    """A TLS target: with --ca-file the clients get the CA (containerd `ca`, k3s `ca_file`,
    a note for Podman's certs.d); with --insecure-registry they skip verification, as the
    load did. containerd pulls through it either way."""
    target = registry_factory(tls=True)
    t, out = target.host, tmp_path / "cfg"
    flag = ["--ca-file", f"{t}={target.ca_path}"] if trust == "ca-file" else \
        ["--insecure-registry", t]
    mirror_ok("load", loaded.layout, "--to", f"{t}/{PREFIX}", *flag, "--write-client-config",
              out)
    hub = tomllib.loads((out / "containerd/certs.d/docker.io/hosts.toml").read_text())
    k3s = yaml.safe_load((out / "k3s/registries.yaml").read_text())
    conf = tomllib.loads((out / "containers/registries.conf.d/50-mirror.conf").read_text())
    readme = (out / "README.txt").read_text()
    host = hub["host"][f"https://{t}/v2/{PREFIX}"]
    if trust == "ca-file":
        assert host["ca"] == str(target.ca_path) and "skip_verify" not in host
        assert k3s["configs"] == {t: {"tls": {"ca_file": str(target.ca_path)}}}
        assert all("insecure" not in m for r in conf["registry"] for m in r["mirror"])
        assert f"/etc/containers/certs.d/{t}/ca.crt" in readme
        assert f"CA is named by its path here, {target.ca_path}" in readme
    else:
        assert host["skip_verify"] is True and "ca" not in host
        assert k3s["configs"] == {t: {"tls": {"insecure_skip_verify": True}}}
        assert all(m["insecure"] for r in conf["registry"] for m in r["mirror"])
        assert "insecureRegistries" in readme
    with Containerd(tmp_path / "ctrd") as c:
        c.ctr("images", "pull", "--snapshotter", "native", "--hosts-dir",
              out / "containerd/certs.d", HUB)
        assert c.images()[HUB]["digest"] == loaded.digests[HUB]


def test_images_without_a_source_name_and_by_digest_only() -> None:
    """The mapping itself (mirror.clientconfig's model and render, no registry): an entry
    with no ref name or a bare tag (skopeo's oci-archive:FILE[:TAG]) names no source: left
    out for every client; an image by digest only is in the ImageDigestMirrorSet, not the
    ImageTagMirrorSet; one source loaded at two places gives the clients the first."""
    from mirror.clientconfig.model import Access, mappings
    from mirror.clientconfig.openshift import IDMS, ITMS
    from mirror.clientconfig.readme import README
    from mirror.clientconfig.render import render

    digest, other = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    maps, left = mappings([
        (None, "site", None, other), ("v3", "site", "v3", other),
        (f"ghcr.io/org/pinned@{digest}", "site/org/pinned", None, digest),
        ("docker.io/library/redis:7", "site/library/redis", "7", other),
        ("redis:8", "site/redis", "8", other),  # the short name: another place for the same
    ], "reg.local")
    assert [(x.client, x.source, x.target) for x in left] == [
        ("all", "(no ref name)", "reg.local/site"), ("all", "v3", "reg.local/site:v3")]
    cfg = render(maps, Access("https"), left_out=left)
    assert [(x.client, x.source) for x in cfg.left_out[2:3]] == [
        ("all", "docker.io/library/redis")]
    assert "also loaded at reg.local/site/library/redis" in cfg.left_out[2].reason
    idms = yaml.safe_load(cfg.files[IDMS])["spec"]["imageDigestMirrors"]
    itms = yaml.safe_load(cfg.files[ITMS])["spec"]["imageTagMirrors"]
    assert [e["source"] for e in idms] == ["ghcr.io/org/pinned", "docker.io/library/redis"]
    assert [e["source"] for e in itms] == ["docker.io/library/redis"]
    readme = cfg.files[README]
    assert f"ghcr.io/org/pinned@{digest} -> reg.local/site/org/pinned@{digest}" in readme
    assert "all: v3 -> reg.local/site:v3 not written: the bundle does not name its source" \
        in readme


def test_a_target_that_asks_for_credentials_is_named_and_no_secret_written(
        loaded: Loaded, tmp_path: Path) -> None:
    """The load's credentials (--authfile) stay out of the files; README.txt says the
    clients need their own."""
    from tests.test_auth import SECRET, USER, authfile_for

    with Registry(htpasswd=(USER, SECRET)) as target:
        out = tmp_path / "cfg"
        mirror_ok("load", loaded.layout, "--to", f"{target.host}/{PREFIX}", "--authfile",
                  authfile_for(tmp_path, target.host), "--write-client-config", out)
        assert f"{target.host} asks for credentials" in (out / "README.txt").read_text()
        for f in out.rglob("*"):
            if f.is_file():
                assert SECRET not in f.read_text() and USER not in f.read_text(), f


def test_a_renamed_tag_is_said_to_be_out_of_the_clients_reach() -> None:
    """images.yaml `tag_as:` loads `redis:7` as `stable`: a client asking the mirror for
    docker.io/library/redis:7 finds no such tag, and no client configuration can rename a
    tag. The mapping of the repository stays (by digest and under other tags it works), and
    the renamed tag is listed, for every client, with where to find it; `tags_also:` keeps
    the original tag, so it is not listed."""
    from mirror.clientconfig.model import mappings

    d = "sha256:" + "c" * 64
    maps, left = mappings([
        ("docker.io/library/redis:7", "site/library/redis", "stable", d),
        ("docker.io/library/nginx:1", "site/library/nginx", "1", d),
        ("docker.io/library/nginx:1", "site/library/nginx", "latest", d),
    ], "reg.local")
    assert [m.source.repository for m in maps] == ["library/redis", "library/nginx"]
    assert [(x.client, x.source, x.target) for x in left] == [
        ("all", "docker.io/library/redis:7", "reg.local/site/library/redis:stable")]
    assert "tag 7" in left[0].reason and "stable" in left[0].reason, left[0].reason


def test_readme_lists_the_tags_tags_also_added() -> None:
    """images.yaml `tags_also: [stable]`: README.txt's list named `ops/agent:1.0 -> ...:1.0`
    alone, leaving out `stable`, which the target has as well."""
    from mirror.clientconfig.model import Access, mappings
    from mirror.clientconfig.readme import README
    from mirror.clientconfig.render import render

    d = "sha256:" + "c" * 64
    maps, left = mappings([
        ("docker.io/ops/agent:1.0", "site/ops/agent", "1.0", d),
        ("docker.io/ops/agent:1.0", "site/ops/agent", "stable", d),
        ("docker.io/ops/db:2", "site/ops/db", "2", d),
    ], "reg.local")
    readme = render(maps, Access(), left_out=left).files[README]
    assert "  docker.io/ops/agent:1.0 -> reg.local/site/ops/agent:1.0 (also tagged stable)\n" \
        in readme, readme
    assert "  docker.io/ops/db:2 -> reg.local/site/ops/db:2\n" in readme, readme


def test_no_fallback_says_which_images_the_containerd_file_makes_unpullable() -> None:
    """containerd's hosts.toml is one per source registry: with --no-fallback the mirror is
    its server, so every repository of that registry is asked at the mirror, those left out
    for containerd (moved by --map or to:, a path hosts.toml cannot rewrite) too, at their
    source path, where they are not: "not found", and no other host asked (operator pass
    o19, D6). Their line said only "not written", as if the client were left as it was; it
    says they are not pullable so, and the name to pull, and the file lists them. With the
    fallback, or where the registry has no file, the line stays as it was."""
    from mirror.clientconfig.containerd import CONTAINERD_DIR
    from mirror.clientconfig.model import Access, mappings
    from mirror.clientconfig.render import render

    d = "sha256:" + "d" * 64
    maps, left = mappings([
        ("src.example/org/dl:1", "site/vendor/dl", "1", d),  # moved: --map org/*=vendor/*
        (f"src.example/org/pin@{d}", "site/vendor/pin", None, d),
        ("src.example/app:1", "site/app", "1", d),  # the path kept: the file serves it
        ("other.example/x/y:2", "site/z", "2", d),  # moved, and its registry has no file
    ], "reg.local")
    lines = {fb: {x.source: x for x in render(maps, Access(), fallback=fb, left_out=left)
                  .left_out if x.client == "containerd"} for fb in (True, False)}
    assert set(lines[False]) == set(lines[True]) == {
        "src.example/org/dl", "src.example/org/pin", "other.example/x/y"}
    for fb, names in lines.items():
        assert ("--no-fallback" in names["src.example/org/dl"].reason) is not fb
        assert "--no-fallback" not in names["other.example/x/y"].reason  # no file took over
    dl = lines[False]["src.example/org/dl"].line()
    assert dl.startswith("containerd: src.example/org/dl -> reg.local/site/vendor/dl not "
                         "written: hosts.toml can put a prefix before the repository path, "
                         "not rewrite the path (org/dl -> site/vendor/dl); with --no-fallback "
                         "the file for src.example sends all its repositories to "
                         "reg.local/site/*, so containerd finds nothing for src.example/org/dl "
                         "there and asks no other: pull it as reg.local/site/vendor/dl:1"), dl
    assert f"pull it as reg.local/site/vendor/pin@{d}," in \
        lines[False]["src.example/org/pin"].reason
    hosts = render(maps, Access(), fallback=False).files[
        f"{CONTAINERD_DIR}/src.example/hosts.toml"]
    assert "# not at their source path there, so not pullable through this file (README.txt): " \
        "src.example/org/dl, src.example/org/pin\n" in hosts, hosts
    assert "not pullable" not in render(maps, Access()).files[
        f"{CONTAINERD_DIR}/src.example/hosts.toml"]


def test_an_image_pushed_under_another_tag_is_named_with_the_tag_it_has(
        src_registry: Registry, dst_registry: Registry, repo_name: str, tmp_path: Path) -> None:
    """images.yaml's tag_as: README.txt's list of names used to say `SRC:2 -> TARGET:2`, a
    tag the target does not have; it names TARGET:two (the source tag is listed as out of
    the clients' reach, test_a_renamed_tag_is_said_to_be_out_of_the_clients_reach)."""
    rng = random.Random(61)
    img = ig.make_image(rng, ig.AMD64)
    push_image(src_registry.url, f"{repo_name}/app", img, ["2"])
    src = f"{src_registry.host}/{repo_name}/app"
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"version: 1\nimages:\n  - ref: {src}:2\n    tag_as: two\n")
    bundle = tmp_path / "b.tar"
    mirror_ok("pull", "-f", cfg, "-o", bundle, "--cache", tmp_path / "c", "-q")
    report = tmp_path / "r.json"
    mirror_ok("load", bundle, "--to", f"{dst_registry.host}/p", "--write-client-config",
              tmp_path / "cfg", "--report", report, "-q")
    target = f"{dst_registry.host}/p/{repo_name}/app"
    assert list_tags(dst_registry.url, f"p/{repo_name}/app") == ["two"]
    readme = (tmp_path / "cfg/README.txt").read_text()
    assert f"{src}:2 -> {target}:two" in readme, readme
    assert f"{target}:2" not in readme, readme
    left = json.loads(report.read_text())["client_config"]["left_out"]
    assert {"client": "all", "source": f"{src}:2", "target": f"{target}:two"} in [
        {k: x[k] for k in ("client", "source", "target")} for x in left], left


def test_a_converted_image_pinned_by_digest_is_named_with_the_digest_the_target_has(
        src_registry: Registry, dst_registry: Registry, repo_name: str, tmp_path: Path) -> None:
    """A Docker list pinned by digest and pulled `--format oci`: the load pushes the converted
    index (a new digest, in the report's placement) and the target does not serve the source
    digest; README.txt's list said `SRC@OLD -> TARGET@OLD`, a manifest the target does not
    have (operator pass o19). It names TARGET@NEW, and SRC@OLD is listed as out of every
    client's reach (no client configuration renames a digest), by load --write-client-config
    and by `mirror client-config` alike."""
    rng = random.Random(1919)
    lst = ig.make_index([ig.make_image(rng, ig.AMD64, fmt="docker"),
                         ig.make_image(rng, ig.ARM64, fmt="docker")], fmt="docker")
    push_image(src_registry.url, f"{repo_name}/dl", lst, ["1"])
    src = f"{src_registry.host}/{repo_name}/dl"
    bundle, report = tmp_path / "b.tar", tmp_path / "r.json"
    mirror_ok("pull", f"{src}@{lst.digest}", "--format", "oci", "--platform", "all", "-o",
              bundle, "--cache", tmp_path / "c", "-q")
    mirror_ok("load", bundle, "--to", f"{dst_registry.host}/p", "--write-client-config",
              tmp_path / "cfg", "--report", report, "-q")
    placed = json.loads(report.read_text())["placement"][0]["digest"]
    assert placed != lst.digest  # converted
    target = f"{dst_registry.host}/p/{repo_name}/dl"
    readme = (tmp_path / "cfg/README.txt").read_text()
    assert f"  {src}@{lst.digest} -> {target}@{placed}" in readme, readme
    assert f"{target}@{lst.digest}" not in readme, readme
    left = json.loads(report.read_text())["client_config"]["left_out"]
    assert {"client": "all", "source": f"{src}@{lst.digest}", "target": f"{target}@{placed}"} \
        in [{k: x[k] for k in ("client", "source", "target")} for x in left], left
    assert get_manifest(dst_registry.url, f"p/{repo_name}/dl", placed)[2][
        "Docker-Content-Digest"] == placed
    mirror_ok("client-config", bundle, "--to", f"{dst_registry.host}/p", "-o",
              tmp_path / "later", "-q")
    assert (tmp_path / "later/README.txt").read_text() == readme


def test_client_config_names_no_digest_tag_the_load_did_not_push(
        src_registry: Registry, dst_registry: Registry, repo_name: str, tmp_path: Path) -> None:
    """An image pinned by digest that has a signature goes to a registry with no referrers
    API by digest only (its sha256-<hex> tag is where the referrers index lives; the load
    warns), and load --write-client-config lists it so; `mirror client-config` for the same
    bundle and --to added `(also tagged sha256-<hex>)`, a tag the target does not have
    (operator pass o19)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.support.referrers import push_signature

    rng = random.Random(1920)
    img = ig.make_image(rng, ig.AMD64)
    push_image(src_registry.url, f"{repo_name}/pinned", img, ["1"])
    push_signature(src_registry.url, f"{repo_name}/pinned",
                   ec.generate_private_key(ec.SECP256R1()), img.digest)
    bundle, report = tmp_path / "b.tar", tmp_path / "r.json"
    mirror_ok("pull", f"{src_registry.host}/{repo_name}/pinned@{img.digest}", "-o", bundle,
              "--cache", tmp_path / "c", "-q")
    mirror_ok("load", bundle, "--to", f"{dst_registry.host}/p", "--write-client-config",
              tmp_path / "cfg", "--report", report, "-q")
    assert json.loads(report.read_text())["placement"][0]["tags"] == []
    mirror_ok("client-config", bundle, "--to", f"{dst_registry.host}/p", "-o",
              tmp_path / "later", "-q")
    later = (tmp_path / "later/README.txt").read_text()
    assert "also tagged sha256-" not in later, later
    assert later == (tmp_path / "cfg/README.txt").read_text()


@pytest.mark.slow
def test_sync_writes_the_configuration_for_its_own_placement(
        src_registry: Registry, repo_name: str, tmp_path: Path) -> None:
    """`mirror sync --write-client-config DIR` writes what `load --write-client-config`
    writes, from sync's placement (here a --map rule for one image): the files name the
    repositories the sync pushed to, and Podman pulls both source names from the target
    through them (the target's access log: nothing else answers for those names there)."""
    rng = random.Random(162)
    src = f"{src_registry.host}/{repo_name}"
    digests = {name: push_image(src_registry.url, f"{repo_name}/{name}",
                                ig.make_image(rng, ig.AMD64), ["1"]) for name in ("app", "db")}
    out, report = tmp_path / "cfg", tmp_path / "sync.json"
    with Registry(extra_config={"log": {"accesslog": {"disabled": False}}}) as target:
        t = target.host
        mirror_ok("sync", f"{src}/app:1", f"{src}/db:1", "--to", f"{t}/{PREFIX}",
                  "--map", f"{src}/db=data/db", "--lock-file", tmp_path / "s.lock",
                  "--write-client-config", out, "--report", report, "-q")
        conf = tomllib.loads((out / "containers/registries.conf.d/50-mirror.conf").read_text())
        assert {r["prefix"]: [m["location"] for m in r["mirror"]] for r in conf["registry"]} \
            == {f"{src}/app": [f"{t}/{PREFIX}/{repo_name}/app"],
                f"{src}/db": [f"{t}/{PREFIX}/data/db"]}
        readme = (out / "README.txt").read_text()
        assert f"{src}/db:1 -> {t}/{PREFIX}/data/db:1" in readme, readme
        doc = json.loads(report.read_text())
        assert doc["client_config"]["dir"] == str(out), doc
        assert ("containerd", f"{src}/db") in {
            (x["client"], x["source"]) for x in doc["client_config"]["left_out"]}  # a rename
        p = Podman(tmp_path / "podman")
        try:
            conf_file = p.root / "registries.conf"
            conf_file.write_text(conf_file.read_text() + (
                out / "containers/registries.conf.d/50-mirror.conf").read_text())
            for name in ("app", "db"):
                p.cli("pull", "-q", f"{src}/{name}:1")
                assert p.image(f"{src}/{name}:1")["Digest"] == digests[name]
        finally:
            p.stop()
        log = _log(target)
        assert f"GET /v2/{PREFIX}/{repo_name}/app/manifests/1" in log
        assert f"GET /v2/{PREFIX}/data/db/manifests/1" in log
        # a dry run pushes nothing to write about
        proc = run_mirror("sync", f"{src}/app:1", "--to", f"{t}/{PREFIX}", "--dry-run",
                          "--write-client-config", tmp_path / "no", "--lock-file",
                          tmp_path / "s.lock")
        assert proc.returncode == 2 and "--write-client-config" in proc.stderr, proc.stderr
        assert not (tmp_path / "no").exists()


def test_sync_names_the_ca_its_images_yaml_gives_for_the_target(
        src_registry: Registry, registry_factory, repo_name: str, tmp_path: Path) -> None:
    """A sync reaches a TLS target with images.yaml's `registries: HOST: ca_file:` (no
    --ca-file): the clients are given that CA, as load's --ca-file gives them its own."""
    push_image(src_registry.url, f"{repo_name}/app", ig.make_image(random.Random(163),
                                                                    ig.AMD64), ["1"])
    target = registry_factory(tls=True)
    t, out = target.host, tmp_path / "cfg"
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"version: 1\nregistries:\n  {t}:\n    ca_file: {target.ca_path}\n"
                   f"images:\n  - {src_registry.host}/{repo_name}/app:1\n")
    mirror_ok("sync", "-f", cfg, "--to", f"{t}/{PREFIX}", "--write-client-config", out, "-q")
    host = tomllib.loads(next((out / "containerd/certs.d").glob("*/hosts.toml")).read_text())
    assert host["host"][f"https://{t}/v2/{PREFIX}"]["ca"] == str(target.ca_path), host
    assert yaml.safe_load((out / "k3s/registries.yaml").read_text())["configs"] == {
        t: {"tls": {"ca_file": str(target.ca_path)}}}


@pytest.mark.slow
def test_the_fallback_is_the_source_as_the_sync_reached_it(
        src_registry: Registry, repo_name: str, tmp_path: Path) -> None:
    """A sync from a plain-HTTP source (127.0.0.1:PORT, as mirror reached it): the files'
    fallback named it https://, so with the mirror down containerd's `server` and Podman's
    primary location failed; they say http (containerd) and insecure (Podman), and both
    pull the source name through the fallback once the target is gone."""
    img = ig.make_image(random.Random(164), ig.AMD64)
    digest = push_image(src_registry.url, f"{repo_name}/app", img, ["1"])
    src, name = src_registry.host, f"{src_registry.host}/{repo_name}/app:1"
    out = tmp_path / "cfg"
    with Registry() as target:
        mirror_ok("sync", name, "--to", f"{target.host}/{PREFIX}", "--lock-file",
                  tmp_path / "s.lock", "--write-client-config", out, "-q")
    # the mirror is down from here on: only the fallback can answer
    hosts = tomllib.loads((out / f"containerd/certs.d/{src}/hosts.toml").read_text())
    assert hosts["server"] == f"http://{src}", hosts
    conf = tomllib.loads((out / "containers/registries.conf.d/50-mirror.conf").read_text())
    [entry] = conf["registry"]
    assert entry["location"] == f"{src}/{repo_name}/app" and entry["insecure"] is True, entry
    _pull_with_ctr_and_podman(tmp_path, out, name, digest)


@pytest.mark.slow
def test_several_targets_are_mirrors_in_the_order_given(
        src_registry: Registry, repo_name: str, tmp_path: Path) -> None:
    """`mirror sync --to A/one --to B/two --write-client-config DIR` was refused (one target
    only); every target is now a mirror, in the order given: containerd's [host] tables,
    registries.conf's [[registry.mirror]], k3s's endpoints (one rewrite for all: B's other
    prefix is left out for k3s, said so), OpenShift's mirrors. With A down, containerd and
    Podman pull the source name from B (B's access log), the source never needed."""
    img = ig.make_image(random.Random(165), ig.AMD64)
    digest = push_image(src_registry.url, f"{repo_name}/app", img, ["1"])
    src, name = src_registry.host, f"{src_registry.host}/{repo_name}/app:1"
    out, report = tmp_path / "cfg", tmp_path / "r.json"
    with Registry(extra_config={"log": {"accesslog": {"disabled": False}}}) as b:
        with Registry() as a:
            mirror_ok("sync", name, "--to", f"{a.host}/one", "--to", f"{b.host}/two",
                      "--lock-file", tmp_path / "s.lock", "--write-client-config", out,
                      "--report", report, "-q")
        one, two = f"{a.host}/one/{repo_name}/app", f"{b.host}/two/{repo_name}/app"
        hosts = tomllib.loads((out / f"containerd/certs.d/{src}/hosts.toml").read_text())
        assert list(hosts["host"]) == [f"http://{a.host}/v2/one", f"http://{b.host}/v2/two"]
        conf = tomllib.loads((out / "containers/registries.conf.d/50-mirror.conf").read_text())
        assert [m["location"] for m in conf["registry"][0]["mirror"]] == [one, two]
        k3s = yaml.safe_load((out / "k3s/registries.yaml").read_text())
        assert k3s["mirrors"][src] == {"endpoint": [f"http://{a.host}"],
                                       "rewrite": {"^(.*)$": "one/$1"}}
        left = json.loads(report.read_text())["client_config"]["left_out"]
        k3s_left = [x for x in left if x["client"] == "k3s"]  # docker: not Docker Hub
        assert [x["target"] for x in k3s_left] == [two], left
        assert "one rewrite" in k3s_left[0]["reason"], left
        assert {x["client"] for x in left} == {"k3s", "docker"}, left
        idms = yaml.safe_load((out / "openshift/imagedigestmirrorset.yaml").read_text())
        assert idms["spec"]["imageDigestMirrors"][0]["mirrors"] == [one, two]
        readme = (out / "README.txt").read_text()
        assert f"{name} -> {one}:1" in readme and f"{name} -> {two}:1" in readme, readme
        _pull_with_ctr_and_podman(tmp_path, out, name, digest)
        log, tag = _log(b), f"/v2/two/{repo_name}/app/manifests/1"
        # ctr and podman each asked the second mirror for the tag (the first one stopped)
        assert _asked(log, tag, "containerd/") and _asked(log, tag, "containers/"), log[-3000:]
