"""Where images land (mirror.mapping): images.yaml destinations carried in the bundle,
load-time rules, --max-depth, digest-only images tagged, collisions refused before any push;
the same for sync. Judged from the target registry's own storage and catalog."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import imagegen as ig
from tests.support.faultproxy import Fault
from tests.support.oracle import error_line, mirror_ok, run_mirror
from tests.support.pusher import get_manifest, push_image
from tests.support.referrers import push_signature
from tests.support.registry import Registry, catalog


def tags_at(reg: Registry, repo: str) -> dict[str, str]:
    """Tag -> digest of `repo` at `reg`, from its storage ({} if there is no such repo)."""
    d = reg.storage / "docker/registry/v2/repositories" / repo / "_manifests/tags"
    return {t.name: (t / "current/link").read_text() for t in d.iterdir()} if d.exists() else {}


def seed(reg: Registry, repo: str, rng: random.Random) -> dict[str, str]:
    """redis:7 (a two-platform index, signed: its cosign tag), team/app:1, one image pushed
    by digest only."""
    idx = ig.make_index([ig.make_image(rng, p, "oci") for p in (ig.AMD64, ig.ARM64_V8)], "oci")
    app = ig.make_image(rng, ig.AMD64, "docker")
    one = ig.make_image(rng, ig.AMD64, "oci")
    redis = push_image(reg.url, f"{repo}/redis", idx, ["7"])
    sig_tag, sig = push_signature(reg.url, f"{repo}/redis", ec.generate_private_key(ec.SECP256R1()),
                                  redis)
    return {"redis": redis, sig_tag: sig.digest,
            "app": push_image(reg.url, f"{repo}/team/app", app, ["1"]),
            "one": push_image(reg.url, f"{repo}/one", one, [])}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def images_yaml(tmp_path: Path, src: Registry, repo: str, digests: dict[str, str]) -> Path:
    h = src.host
    return write(tmp_path / "images.yaml", f"""version: 1
map:
  {h}/{repo}/*: mapped/*
images:
  - ref: {h}/{repo}/redis:7
    to: base/redis
    tags_also: [stable]
  - {h}/{repo}/team/app:1
  - {h}/{repo}/one@{digests["one"]}
""")


def pull(tmp_path: Path, cfg: Path) -> Path:
    bundle = tmp_path / "b.tar"
    mirror_ok("pull", "-f", cfg, "-o", bundle, "--cache", tmp_path / "cache", "-q")
    return bundle


def test_images_yaml_destinations_travel_in_the_bundle(src_registry, dst_registry, repo_name,
                                                       rng, tmp_path):
    digests = seed(src_registry, repo_name, rng)
    bundle = pull(tmp_path, images_yaml(tmp_path, src_registry, repo_name, digests))
    prefix = f"{repo_name}/t"
    report = tmp_path / "load.json"
    mirror_ok("load", bundle, "--to", f"{dst_registry.host}/{prefix}", "-q",
              "--report", report)
    # to: with tags_also; the map: rule for the others; the digest-only image tagged
    sig = {t: d for t, d in digests.items() if t.endswith(".sig")}  # with its image
    assert tags_at(dst_registry, f"{prefix}/base/redis") == {"7": digests["redis"],
                                                             "stable": digests["redis"], **sig}
    assert tags_at(dst_registry, f"{prefix}/mapped/team/app") == {"1": digests["app"]}
    hexd = digests["one"].split(":")[1]
    assert tags_at(dst_registry, f"{prefix}/mapped/one") == {f"sha256-{hexd}": digests["one"]}
    assert not [r for r in catalog(dst_registry)
                if r.startswith(f"{prefix}/") and "/mapped/" not in r and "/base/" not in r]
    placement = json.loads(report.read_text())["placement"]
    h = src_registry.host
    assert {(p["source"], p["repository"], tuple(p["tags"])) for p in placement} == {
        (f"{h}/{repo_name}/redis:7", f"{prefix}/base/redis", ("7", "stable")),
        (f"{h}/{repo_name}/team/app:1", f"{prefix}/mapped/team/app", ("1",)),
        (f"{h}/{repo_name}/one@{digests['one']}", f"{prefix}/mapped/one",
         (f"sha256-{hexd}",))}
    # each with the digest its tags name at the target (the report named none: what was
    # loaded could not be checked against the target from the load's own report)
    assert {p["repository"]: p["digest"] for p in placement} == {
        f"{prefix}/base/redis": digests["redis"], f"{prefix}/mapped/team/app": digests["app"],
        f"{prefix}/mapped/one": digests["one"]}, placement


@pytest.mark.slow
def test_load_time_rules_lay_one_bundle_out_two_ways(src_registry, dst_registry,
                                                     registry_factory, repo_name, rng,
                                                     tmp_path):
    digests = seed(src_registry, repo_name, rng)
    h = src_registry.host
    cfg = write(tmp_path / "images.yaml", f"""version: 1
images:
  - {h}/{repo_name}/redis:7
  - {h}/{repo_name}/team/app:1
  - {h}/{repo_name}/one@{digests["one"]}
""")
    bundle = pull(tmp_path, cfg)
    # registry one: --map over the whole source prefix, and the digest tag turned off
    mirror_ok("load", bundle, "--to", f"{dst_registry.host}/{repo_name}", "-q",
              "--map", f"{h}/{repo_name}/*=lib/*", "--no-digest-tag")
    sig = {t: d for t, d in digests.items() if t.endswith(".sig")}
    assert tags_at(dst_registry, f"{repo_name}/lib/redis") == {"7": digests["redis"], **sig}
    assert tags_at(dst_registry, f"{repo_name}/lib/team/app") == {"1": digests["app"]}
    assert (dst_registry.storage / "docker/registry/v2/repositories" / repo_name / "lib/one"
            / "_manifests/revisions/sha256" / digests["one"].split(":")[1]).exists()
    assert tags_at(dst_registry, f"{repo_name}/lib/one") == {}
    # registry two, no prefix: a map file, an exact rule over a prefix rule
    other = registry_factory()
    mf = write(tmp_path / "map.yaml", f"""map:
  {h}/{repo_name}/*: apps/*
  {h}/{repo_name}/redis: base/redis
""")
    mirror_ok("load", bundle, "--to", other.host, "-q", "--map-file", mf)
    assert tags_at(other, "base/redis") == {"7": digests["redis"], **sig}
    assert tags_at(other, "apps/team/app") == {"1": digests["app"]}
    assert set(catalog(other)) == {"base/redis", "apps/team/app", "apps/one"}


@pytest.mark.slow
def test_max_depth_flattens_below_the_prefix(src_registry, dst_registry, repo_name, rng,
                                             tmp_path):
    digests = seed(src_registry, repo_name, rng)
    h = src_registry.host
    cfg = write(tmp_path / "images.yaml", f"version: 1\nimages:\n  - {h}/{repo_name}/team/app:1\n")
    bundle = pull(tmp_path, cfg)
    flat = repo_name.replace("/", "-")
    mirror_ok("load", bundle, "--to", f"{dst_registry.host}/{flat}", "-q", "--max-depth", "3")
    # repo_name is test/<name>: test/<name>/team/app (4) -> test-<name>-team/app under flat
    assert tags_at(dst_registry, f"{flat}/{flat}-team/app") == {"1": digests["app"]}
    # a prefix that leaves no room is refused before anything is pushed
    r = run_mirror("load", bundle, "--to", f"{dst_registry.host}/{flat}/x/y", "--max-depth",
                   "3")
    assert r.returncode == 2 and "--max-depth 3" in error_line(r), r.stderr
    assert not [x for x in catalog(dst_registry) if x.startswith(f"{flat}/x/")]


@pytest.mark.slow
def test_two_sources_on_one_name_are_refused_before_any_push(src_registry, dst_registry,
                                                             repo_name, rng, tmp_path):
    h = src_registry.host
    a = push_image(src_registry.url, f"{repo_name}/a/b-c", ig.make_image(rng, ig.AMD64), ["1"])
    b = push_image(src_registry.url, f"{repo_name}/a-b/c", ig.make_image(rng, ig.AMD64), ["1"])
    assert a != b
    cfg = write(tmp_path / "images.yaml", f"version: 1\nimages:\n  - {h}/{repo_name}/a/b-c:1\n"
                f"  - {h}/{repo_name}/a-b/c:1\n")
    bundle = pull(tmp_path, cfg)
    prefix = repo_name.replace("/", "-") + "-out"
    # flattened to one name: test-<name>-a-b-c
    r = run_mirror("load", bundle, "--to", f"{dst_registry.host}/{prefix}", "--max-depth", "2")
    line = error_line(r)
    assert r.returncode == 2, r.stderr
    assert f"{h}/{repo_name}/a/b-c:1" in line and f"{h}/{repo_name}/a-b/c:1" in line, line
    # mapped to one name
    r = run_mirror("load", bundle, "--to", f"{dst_registry.host}/{prefix}",
                   "--map", f"{h}/{repo_name}/a/b-c=same", "--map", f"{h}/{repo_name}/a-b/c=same")
    assert r.returncode == 2 and "would both be pushed as" in error_line(r), r.stderr
    # a name the registry would refuse
    r = run_mirror("load", bundle, "--to", f"{dst_registry.host}/{prefix}",
                   "--map", f"{h}/{repo_name}/a/*=Upper/*")
    assert r.returncode == 2 and "lowercase" in error_line(r), r.stderr
    # the same with sync: nothing pushed to either target
    r = run_mirror("sync", "-f", cfg, "--to", f"{dst_registry.host}/{prefix}-s",
                   "--lock-file", tmp_path / "s.lock", "--max-depth", "2")
    assert r.returncode == 2 and "would both be pushed as" in error_line(r), r.stderr
    assert not [x for x in catalog(dst_registry) if x.startswith(prefix)]


def test_sync_map_that_parts_two_sources_on_one_name_is_taken(src_registry, dst_registry,
                                                               registry_factory, repo_name,
                                                               rng, tmp_path):
    """Two registries' images on one repository path and tag: a sync's --map that sends one
    of them elsewhere is what the refusal's hint asks for; the sync's own check used to
    place them without the run's rules and refuse them (exit 2) all the same."""
    other = registry_factory()
    a = push_image(src_registry.url, f"{repo_name}/app", ig.make_image(rng, ig.AMD64), ["1"])
    b = push_image(other.url, f"{repo_name}/app", ig.make_image(rng, ig.AMD64), ["1"])
    assert a != b
    cfg = write(tmp_path / "images.yaml", f"version: 1\nimages:\n"
                f"  - {src_registry.host}/{repo_name}/app:1\n  - {other.host}/{repo_name}/app:1\n")
    p = f"{repo_name}/s"
    mirror_ok("sync", "-f", cfg, "--to", f"{dst_registry.host}/{p}", "-q",
              "--lock-file", tmp_path / "s.lock", "--map", f"{other.host}/*=other/*")
    assert tags_at(dst_registry, f"{p}/{repo_name}/app") == {"1": a}
    assert tags_at(dst_registry, f"{p}/other/{repo_name}/app") == {"1": b}
    # without the rule: refused before any push, naming the target's name
    r = run_mirror("sync", "-f", cfg, "--to", f"{dst_registry.host}/{p}2",
                   "--lock-file", tmp_path / "s2.lock")
    assert r.returncode == 2, r.stderr
    assert f"would both be pushed as {dst_registry.host}/{p}2/{repo_name}/app:1" in \
        error_line(r), r.stderr
    assert not [x for x in catalog(dst_registry) if x.startswith(f"{p}2/")]


def test_a_rule_that_matches_no_image_is_said(src_registry, dst_registry, repo_name, rng,
                                              tmp_path):
    """A --map or --map-file rule that no image's source repository matches (a typo, a
    source written without its registry: 'lib/app=x' is docker.io/lib/app) moved nothing,
    and load and sync said nothing: the images landed at their default paths. Each such
    rule is now named on a warning line (the run goes on: a shared map file may hold rules
    for other bundles)."""
    h = src_registry.host
    push_image(src_registry.url, f"{repo_name}/app", ig.make_image(rng, ig.AMD64), ["1"])
    cfg = write(tmp_path / "images.yaml", f"version: 1\nimages:\n  - {h}/{repo_name}/app:1\n")
    bundle = pull(tmp_path, cfg)
    mf = write(tmp_path / "site.yaml", f"map:\n  {h}/{repo_name}/ap: x\n")
    typo = f"{repo_name}/app=y"  # no registry: docker.io/...
    p = f"{repo_name}/l"
    proc = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/{p}", "--map", typo,
                     "--map-file", mf, "-q")
    assert f"--map '{typo}'" in proc.stderr and "matches no image" in proc.stderr, proc.stderr
    assert f"{mf}:2" in proc.stderr, proc.stderr
    assert list(tags_at(dst_registry, f"{p}/{repo_name}/app")) == ["1"]  # where it was
    proc = mirror_ok("sync", "-f", cfg, "--to", f"{dst_registry.host}/{repo_name}/s", "-q",
                     "--lock-file", tmp_path / "s.lock", "--map", typo)
    assert f"--map '{typo}'" in proc.stderr and "matches no image" in proc.stderr, proc.stderr
    proc = mirror_ok("load", bundle, "--to", f"{dst_registry.host}/{p}", "-q",
                     "--map", f"{h}/{repo_name}/app=z")
    assert proc.stderr == "", proc.stderr


def test_sync_takes_the_same_rules(src_registry, dst_registry, repo_name, rng, tmp_path):
    digests = seed(src_registry, repo_name, rng)
    cfg = images_yaml(tmp_path, src_registry, repo_name, digests)
    h = src_registry.host
    report = tmp_path / "sync.json"
    mirror_ok("sync", "-f", cfg, "--to", f"{dst_registry.host}/{repo_name}/s", "-q",
              "--lock-file", tmp_path / "s.lock", "--map", f"{h}/{repo_name}/team/*=t/*",
              "--report", report)
    p = f"{repo_name}/s"
    hexd = digests["one"].split(":")[1]
    sig = {t: d for t, d in digests.items() if t.endswith(".sig")}  # with its image
    assert tags_at(dst_registry, f"{p}/base/redis") == {"7": digests["redis"],
                                                        "stable": digests["redis"], **sig}
    assert tags_at(dst_registry, f"{p}/t/app") == {"1": digests["app"]}  # --map over map:
    assert tags_at(dst_registry, f"{p}/mapped/one") == {f"sha256-{hexd}": digests["one"]}
    placement = json.loads(report.read_text())["targets"][0]["placement"]
    assert {(x["repository"], tuple(x["tags"])) for x in placement} == {
        (f"{p}/base/redis", ("7", "stable")), (f"{p}/t/app", ("1",)),
        (f"{p}/mapped/one", (f"sha256-{hexd}",))}


def revisions_and_tags(reg: Registry, prefix: str) -> tuple[int, int]:
    """How many manifests (revisions) and tags the repositories under `prefix` hold, from
    the registry's storage."""
    root = reg.storage / "docker/registry/v2/repositories" / prefix
    revs = sum(1 for d in root.rglob("_manifests/revisions/sha256/*"))
    tags = sum(1 for d in root.rglob("_manifests/tags/*"))
    return revs, tags


def test_an_extra_tag_is_a_tag_not_another_manifest(src_registry, dst_registry, repo_name,
                                                    rng, tmp_path):
    """`tags_also:` (and two tags of one index) counted each extra tag as one more manifest
    pushed: the report's `manifests_pushed` said 4 where the target holds 3 manifests. Each
    manifest is counted once per repository, pushed or present; a tag is a tag. Judged by
    the target's storage, on a first sync and on a rerun that finds everything there."""
    digests = seed(src_registry, repo_name, rng)
    cfg = images_yaml(tmp_path, src_registry, repo_name, digests)
    p = f"{repo_name}/c"
    report = tmp_path / "sync.json"

    def run() -> dict:
        mirror_ok("sync", "-f", cfg, "--to", f"{dst_registry.host}/{p}", "-q",
                  "--lock-file", tmp_path / "s.lock", "--report", report)
        return json.loads(report.read_text())["targets"][0]

    first = run()
    manifests, tags = revisions_and_tags(dst_registry, p)
    assert tags_at(dst_registry, f"{p}/base/redis")["stable"] == digests["redis"]
    assert (first["manifests_pushed"], first["manifests_present"]) == (manifests, 0), first
    assert len(first["tags"]) == tags, first  # the signature's cosign tag among them
    again = run()
    assert (again["manifests_pushed"], again["manifests_present"]) == (0, manifests), again
    assert again["tags"] == first["tags"]


def test_config_readme_example_places_as_it_says():
    """config/README.md's example, parsed as images.yaml and placed as a load with
    --to reg.local/site would: what its comments say."""
    from mirror.config import parse_config
    from mirror.mapping import Target, place

    doc = (Path(__file__).parent.parent / "config/README.md").read_text()
    text = doc.split("## Where images land")[1].split("```yaml\n")[1].split("```")[0]
    target = Target.parse("reg.local/site")
    got = {}
    for spec in parse_config(text, "config/README.md").images:
        ref = spec.reference
        where = place(target, ref.name, ref.repository, ref.tag, ref.digest, spec.dest)
        got[str(ref)] = (where.repository, where.tags)
    digest = "sha256:4f3c1b9e6bb1a1d5c2a2c1e0b8a0f3e4d5c6b7a8091a2b3c4d5e6f708192a3b4"
    assert got == {
        "docker.io/library/redis:7.4": ("site/cache/redis", ("7.4", "stable")),
        "docker.io/library/nginx:1.27": ("site/base/nginx", ("1.27",)),
        "ghcr.io/org/app:1": ("site/org/app", ("1",)),
        f"ghcr.io/org/tool@{digest}": ("site/org/tool", (digest.replace(":", "-"),))}


@pytest.mark.slow
def test_bad_destinations_in_images_yaml_are_refused_at_their_line(tmp_path):
    """A host in to:, an uppercase path, a prefix rule without its /*, tag_as for several
    tags: exit 2 naming images.yaml:LINE, before any network work."""
    cases = {
        "images:\n  - ref: localhost:9/a:1\n    to: registry.local/base/redis\n":
            (3, "is a registry"),
        "images:\n  - ref: localhost:9/a:1\n    to: Base/redis\n": (3, "lowercase"),
        "map:\n  localhost:9/*: flat\nimages:\n  - localhost:9/a:1\n": (2, "ends with /*"),
        "images:\n  - repository: localhost:9/a\n    tags: [1, 2]\n    tag_as: x\n":
            (4, "one tag"),
    }
    for text, (line, what) in cases.items():
        cfg = write(tmp_path / "images.yaml", "version: 1\n" + text)
        r = run_mirror("pull", "-f", cfg, "-o", tmp_path / "b.tar", "--dry-run")
        err = error_line(r)
        assert r.returncode == 2 and f"images.yaml:{line + 1}" in err and what in err, err


def test_one_reference_with_two_destinations_is_refused(tmp_path):
    cfg = write(tmp_path / "images.yaml", "version: 1\nimages:\n  - ref: localhost:9/a:1\n"
                "    to: x/a\n  - ref: localhost:9/a:1\n    to: y/a\n")
    r = run_mirror("pull", "-f", cfg, "-o", tmp_path / "b.tar", "--dry-run")
    err = error_line(r)
    assert r.returncode == 2 and "listed again" in err and "y/a here" in err, err


@pytest.mark.slow
def test_podman_pulls_mapped_images_through_the_written_configuration(registry_factory,
                                                                      rng, tmp_path):
    """load --map ... --write-client-config: the client configuration follows the mapping
    (one function places images for both): Podman pulls docker.io/library/cfgmap:7 and
    ghcr.io/org/cfgmapapp:1 from where --map put them at the target (its access log);
    containerd, which cannot rewrite a path, is left out for them with the reason."""
    from tests.support.runtimes import Podman

    images = {"docker.io/library/cfgmap:7": ig.make_image(rng, ig.AMD64),
              "ghcr.io/org/cfgmapapp:1": ig.make_image(rng, ig.AMD64)}
    layout = ig.write_layout(tmp_path / "layout", images)
    target = registry_factory(extra_config={"log": {"accesslog": {"disabled": False}}})
    out = tmp_path / "cfg"
    proc = mirror_ok("load", layout, "--to", f"{target.host}/site", "--map",
                     "docker.io/library/*=base/*", "--map", "ghcr.io/org/*=apps/*",
                     "--write-client-config", out, "--no-fallback")
    assert "containerd" in proc.stderr and "site/base/cfgmap" in proc.stderr, proc.stderr
    p = Podman(tmp_path / "podman")
    try:
        conf = p.root / "registries.conf"
        conf.write_text(conf.read_text() + (
            out / "containers/registries.conf.d/50-mirror.conf").read_text())
        for name, img in images.items():
            p.cli("pull", "-q", name)
            assert p.image(name)["Digest"] == img.digest
    finally:
        p.stop()
    log = target.log_path.read_text(errors="replace")
    assert "GET /v2/site/base/cfgmap/manifests/7" in log
    assert "GET /v2/site/apps/cfgmapapp/manifests/1" in log


def test_a_to_keeps_two_registries_images_apart(src_registry, dst_registry,
                                                registry_factory, repo_name, rng, tmp_path):
    """Two registries' images with one repository path and tag: the pull refuses them in one
    bundle (load would put both at PREFIX/<path>:1), unless a to: sends one elsewhere; then
    the load puts each where it was told."""
    other = registry_factory()
    a = push_image(src_registry.url, f"{repo_name}/app", ig.make_image(rng, ig.AMD64), ["1"])
    b = push_image(other.url, f"{repo_name}/app", ig.make_image(rng, ig.AMD64), ["1"])
    refs = f"  - {src_registry.host}/{repo_name}/app:1\n  - ref: {other.host}/{repo_name}/app:1\n"
    cfg = write(tmp_path / "same.yaml", f"version: 1\nimages:\n{refs}")
    r = run_mirror("pull", "-f", cfg, "-o", tmp_path / "same.tar", "--cache", tmp_path / "c")
    assert r.returncode == 2 and "would both be loaded as" in error_line(r), r.stderr
    bundle = pull(tmp_path, write(tmp_path / "images.yaml",
                                  f"version: 1\nimages:\n{refs}    to: other/app\n"))
    mirror_ok("load", bundle, "--to", f"{dst_registry.host}/{repo_name}", "-q")
    assert tags_at(dst_registry, f"{repo_name}/{repo_name}/app") == {"1": a}
    assert tags_at(dst_registry, f"{repo_name}/other/app") == {"1": b}


def test_a_load_that_fails_places_only_what_the_target_holds(
        src_registry, dst_registry, faultproxy, repo_name, rng, tmp_path):
    """A load whose second image's tag the target refuses (a 500 on its manifest PUT, every
    try): its report's placement names the first image, which the target serves by its
    digest and tag, and not the second (null before: nothing said what got there), as a
    sync's placement names only what each target holds."""
    imgs = {name: ig.make_image(rng, ig.AMD64, "oci") for name in ("a", "b")}
    for name, img in imgs.items():
        push_image(src_registry.url, f"{repo_name}/{name}", img, ["1"])
    bundle = tmp_path / "b.tar"
    mirror_ok("pull", *(f"{src_registry.host}/{repo_name}/{n}:1" for n in imgs), "-o", bundle,
              "--cache", tmp_path / "cache", "-q")
    proxy = faultproxy(dst_registry.url)
    proxy.add(Fault("status", method="PUT", path=rf"/{repo_name}/b/manifests/1$", status=500,
                    times=None))
    report = tmp_path / "load.json"
    proc = run_mirror("load", bundle, "--to", f"{proxy.host}/f", "--retries", "0",
                      "--report", report)
    assert proc.returncode == 3, proc.stderr
    placement = json.loads(report.read_text())["placement"]
    assert placement == [{"source": f"{src_registry.host}/{repo_name}/a:1",
                          "repository": f"f/{repo_name}/a", "tags": ["1"],
                          "digest": imgs["a"].digest}], placement
    for ref in (imgs["a"].digest, "1"):
        assert get_manifest(dst_registry.url, f"f/{repo_name}/a", ref)[2][
            "Docker-Content-Digest"] == imgs["a"].digest
