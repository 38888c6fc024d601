"""Tag rules in images.yaml (issue 18): `tags:` items that choose from the repository's
listing (mirror/tagrules.py, mirror/semver.py), against the real registry holding semver,
non-semver and pre-release tags, listed over several pages; the lock file records what each
rule chose, `--locked` pulls exactly that (no listing) even after a new matching tag appears,
and the report and --dry-run show rule -> tags."""

from __future__ import annotations

import json
import tarfile

import pytest

from mirror.errors import EXIT_CODES
from tests.support import imagegen as ig
from tests.support.faultproxy import Fault
from tests.support.oracle import damaged_on_read, error_line, mirror_ok, run_mirror
from tests.support.pusher import push_image, push_raw_manifest

TAGS = ["1.0.0", "1.2.0", "1.2.5", "1.3.0-rc.1", "1.4.1", "v1.5.0", "2.0.0", "2.1.0-beta.1",
        "latest", "stable", "nightly-20240101", "1.4.1-rc2", "3.20"]

CONFIG = """\
images:
  - repository: {repo}
    tags:
      - semver: ">=1.2 <2"
      - regex: '^v?\\d+\\.\\d+\\.\\d+$'
        exclude: ["^v", "^2"]
      - latest: 2
      - semver: "^2"
        prerelease: true
      - regex: "^(latest|stable)$"
"""

CHOSEN = [["1.2.0", "1.2.5", "1.4.1", "v1.5.0"], ["1.0.0", "1.2.0", "1.2.5", "1.4.1"],
          ["2.0.0", "3.20"], ["2.0.0", "2.1.0-beta.1"], ["latest", "stable"]]


def seed(registry, repo: str, rng, tags: list[str]) -> str:
    img = ig.make_image(rng, ig.AMD64, "oci")
    from tests.support.pusher import push_image

    push_image(registry.url, repo, img, tags=[tags[0]])
    for tag in tags[1:]:
        push_raw_manifest(registry.url, repo, tag, img.manifest.data, img.manifest.media_type)
    return img.digest


def paged(proxy) -> None:
    """The registry lists 3 tags a page (`Link` headers lead on)."""
    proxy.add(Fault("paginate", method="GET", path=r"/tags/list", offset=3, times=None))


def listings(proxy) -> list[str]:
    return [p for p in proxy.paths("GET") if "/tags/list" in p]


def test_each_rule_kind_resolved_locked_and_reported(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    proxy = faultproxy(src_registry.url)
    digest = seed(src_registry, repo_name, rng, TAGS)
    paged(proxy)
    cfg = tmp_path / "images.yaml"
    repo = f"{proxy.host}/{repo_name}"
    cfg.write_text(CONFIG.format(repo=repo))
    cache = tmp_path / "cache"

    mirror_ok("lock", "-f", cfg, "--cache", cache, "--no-referrers")
    assert len(listings(proxy)) >= 5  # the 13 tags over pages of 3, listed once
    lock = json.loads((tmp_path / "images.lock").read_text())
    rules = lock["tagRules"]
    assert [r["tags"] for r in rules] == CHOSEN
    assert [r["where"] for r in rules] == [f"{cfg}:{n}" for n in (4, 5, 7, 8, 10)]
    assert rules[0]["rule"] == {"semver": ">=1.2 <2"}
    chosen = {t for tags in CHOSEN for t in tags}
    assert set(lock["images"]) == {f"{repo}:{t}" for t in chosen}
    assert {e["sourceDigest"] for e in lock["images"].values()} == {digest}

    dry = mirror_ok("pull", "-f", cfg, "--cache", cache, "--dry-run", "--no-referrers",
                    "-o", tmp_path / "x.tar")
    lines = dry.stdout.splitlines()
    assert f'{repo}\tsemver=">=1.2 <2"\t1.2.0,1.2.5,1.4.1,v1.5.0' in lines
    assert f"{repo}\tlatest=2\t2.0.0,3.20" in lines

    # a new tag the first rule matches: --locked pulls what the lock recorded, unlisted
    seed(src_registry, repo_name, rng, ["1.6.0"])
    proxy.reset_counters()
    report = tmp_path / "report.json"
    mirror_ok("pull", "-f", cfg, "--locked", "--cache", cache, "--no-referrers",
              "-o", tmp_path / "locked.tar", "--report", report)
    assert listings(proxy) == []
    doc = json.loads(report.read_text())
    assert [r["tags"] for r in doc["tag_rules"]] == CHOSEN
    assert {e["reference"] for e in doc["images"]} == {f"{repo}:{t}" for t in chosen}

    # without --locked the rule is resolved again and finds it
    dry = mirror_ok("pull", "-f", cfg, "--cache", cache, "--dry-run", "--no-referrers",
                    "-o", tmp_path / "y.tar")
    assert f'{repo}\tsemver=">=1.2 <2"\t1.2.0,1.2.5,1.4.1,v1.5.0,1.6.0' in dry.stdout


def test_a_rule_matching_nothing_names_the_image_and_the_rules_line(
        src_registry, repo_name, rng, tmp_path):
    seed(src_registry, repo_name, rng, ["1.0.0", "latest"])
    cfg = tmp_path / "images.yaml"
    repo = f"{src_registry.host}/{repo_name}"
    cfg.write_text(f"images:\n  - repository: {repo}\n    tags:\n      - \"1.0.0\"\n"
                   f"      - semver: \">=9\"\n")
    r = run_mirror("pull", "-f", cfg, "--cache", tmp_path / "cache", "-o", tmp_path / "o.tar")
    assert r.returncode == 2, r.stderr
    line = error_line(r)
    assert line.startswith(f"mirror: error: {cfg}:5: {repo}: the tag rule"), line
    assert "matches none of the repository's 2 tag(s)" in line
    assert not (tmp_path / "o.tar").exists()


def test_tags_a_regex_finds_that_read_as_pre_releases_are_said_not_silently_dropped(
        src_registry, repo_name, rng, tmp_path):
    """o25 D3: a date (2024-05-01) or a variant (3.19-alpine) reads as VERSION-PRERELEASE, so
    a rule whose regex names it left it out without a word: a warning names the tags and
    what to write; `prerelease: true` keeps them, `prerelease: false` leaves them out
    silently, and a rule that keeps nothing else says why (exit 2)."""
    seed(src_registry, repo_name, rng, ["latest", "2024-05-01", "3.19-alpine", "3.19"])
    cfg = tmp_path / "images.yaml"
    repo = f"{src_registry.host}/{repo_name}"

    def run(rule: str):
        cfg.write_text(f"images:\n  - repository: {repo}\n    tags:\n      - {rule}\n")
        return run_mirror("pull", "-f", cfg, "--cache", tmp_path / "cache", "--dry-run",
                          "--no-referrers", "-o", tmp_path / "o.tar")

    r = run("regex: '^(latest|2024-05-01)$'")
    assert r.returncode == 0, r.stderr
    assert [ln.split("\t")[0] for ln in r.stdout.splitlines() if ln.startswith(repo + ":")] == \
        [f"{repo}:latest"]
    warning = [ln for ln in r.stderr.splitlines() if "pre-release" in ln]
    assert len(warning) == 1, r.stderr
    assert f" warning: {cfg}:4: {repo}: the tag rule" in warning[0], warning
    assert "leaves out 2024-05-01, which its regex finds, as pre-release versions" in \
        warning[0]
    assert "add `prerelease: true`" in warning[0]

    r = run("{regex: '^(latest|2024-05-01)$', prerelease: true}")
    assert r.returncode == 0, r.stderr
    assert {ln.split("\t")[0] for ln in r.stdout.splitlines() if ln.startswith(repo + ":")} == \
        {f"{repo}:latest", f"{repo}:2024-05-01"}
    assert "pre-release" not in r.stderr

    r = run("{regex: '^(latest|2024-05-01)$', prerelease: false}")
    assert r.returncode == 0, r.stderr
    assert "pre-release" not in r.stderr

    r = run("semver: '>=3'")  # a range leaves pre-releases out as semver does: no warning
    assert r.returncode == 0, r.stderr
    assert "pre-release" not in r.stderr

    r = run("regex: '-alpine$'")
    assert r.returncode == 2, r.stderr
    line = error_line(r)
    assert line.startswith(f"mirror: error: {cfg}:4: {repo}: the tag rule"), line
    assert "keeps none of the repository's 4 tag(s): its regex finds 3.19-alpine, read as " \
        "pre-release versions" in line


def _locked(src_registry, faultproxy, repo_name, rng, tmp_path, tags, rule):
    """A repository holding `tags` (one image each) behind a fault proxy, an images.yaml
    with one tag `rule` over it, and `mirror lock` run once: (proxy, repository, config,
    cache)."""
    proxy = faultproxy(src_registry.url)
    for tag in tags:
        push_image(src_registry.url, repo_name, ig.make_image(rng, ig.AMD64, "oci"), tags=[tag])
    repo = f"{proxy.host}/{repo_name}"
    cfg, cache = tmp_path / "images.yaml", tmp_path / "cache"
    cfg.write_text(f"images:\n  - repository: {repo}\n    tags:\n      - {rule}\n")
    mirror_ok("lock", "-f", cfg, "--cache", cache, "-q")
    return proxy, repo, cfg, cache


def test_a_lock_whose_new_tag_waited_locks_the_rules_others(src_registry, faultproxy,
                                                            repo_name, rng, tmp_path):
    """o25 D1: a rule chose a new tag that then waited (429s through all tries: exit 14,
    "images.lock has no entry for them yet"); the lock file listed that tag in the rule's
    `tagRules` with no entry for it, and `--locked` refused the whole run (exit 2). The rule's
    tags as locked are those with an entry: `--locked` pulls them; the next `mirror lock`
    without the storm takes the new tag."""
    proxy, repo, cfg, cache = _locked(src_registry, faultproxy, repo_name, rng, tmp_path,
                                      ("1.0", "1.1"), "semver: '^1'")
    push_image(src_registry.url, repo_name, ig.make_image(rng, ig.AMD64, "oci"), tags=["1.2"])
    proxy.add(Fault("status", path=rf"/{repo_name}/manifests/1\.2$", status=429,
                    headers={"Retry-After": "0"}, times=None))
    r = run_mirror("lock", "-f", cfg, "--cache", cache, "-q", "--retries", "1")
    assert r.returncode == EXIT_CODES["rate-limited-partial"], r.stderr
    lock = json.loads((tmp_path / "images.lock").read_text())
    assert lock["tagRules"][0]["tags"] == ["1.0", "1.1"], lock["tagRules"]
    assert sorted(lock["images"]) == [f"{repo}:1.0", f"{repo}:1.1"]
    proxy.clear_faults()
    r = run_mirror("pull", "-f", cfg, "--cache", cache, "-q", "--locked", "--no-referrers",
                   "-o", tmp_path / "b.tar", "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(i["reference"] for i in report["images"]) == [f"{repo}:1.0", f"{repo}:1.1"]
    mirror_ok("lock", "-f", cfg, "--cache", cache, "-q")
    lock = json.loads((tmp_path / "images.lock").read_text())
    assert lock["tagRules"][0]["tags"] == ["1.0", "1.1", "1.2"], lock["tagRules"]


def test_a_lock_whose_rule_moved_to_a_waiting_tag_keeps_what_it_locked_before(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """o26 D2: `latest: 2` locked 2.0.0 and 3.20; then 2.0.1 and 9.0 appear and wait (429s):
    the rule's new choice (3.20, 9.0) cannot be locked whole, and locking its tags with an
    entry (3.20) dropped 2.0.0, which the site had, with exit 0 at `--locked`. The rule keeps
    the tags the lock before gave it (and their entries); a rule that never had a lock and
    whose only tag waits is left out, and `--locked` says so (exit 2)."""
    proxy, repo, cfg, cache = _locked(src_registry, faultproxy, repo_name, rng, tmp_path,
                                      ("2.0.0", "3.20"), "latest: 2")
    first = json.loads((tmp_path / "images.lock").read_text())
    for tag in ("2.0.1", "9.0"):
        push_image(src_registry.url, repo_name, ig.make_image(rng, ig.AMD64, "oci"), tags=[tag])
    proxy.add(Fault("status", path=rf"/{repo_name}/manifests/(2\.0\.1|9\.0)$", status=429,
                    headers={"Retry-After": "0"}, times=None))
    cfg.write_text(f"images:\n  - repository: {repo}\n    tags:\n      - latest: 2\n"
                   f"      - regex: '^9'\n")
    r = run_mirror("lock", "-f", cfg, "--cache", cache, "-q", "--retries", "1")
    assert r.returncode == EXIT_CODES["rate-limited-partial"], r.stderr
    lock = json.loads((tmp_path / "images.lock").read_text())
    assert [(x["rule"], x["tags"]) for x in lock["tagRules"]] == \
        [({"latest": 2}, ["2.0.0", "3.20"])], lock["tagRules"]  # regex '^9': none before
    assert lock["images"] == first["images"]
    r = run_mirror("pull", "-f", cfg, "--cache", cache, "-q", "--locked", "--no-referrers",
                   "-o", tmp_path / "b.tar")
    assert r.returncode == 2, r.stderr
    assert "the tag rule of" in error_line(r) and "is not in" in error_line(r), error_line(r)
    cfg.write_text(f"images:\n  - repository: {repo}\n    tags:\n      - latest: 2\n")
    r = run_mirror("pull", "-f", cfg, "--cache", cache, "-q", "--locked", "--no-referrers",
                   "-o", tmp_path / "b.tar", "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(i["reference"] for i in report["images"]) == [f"{repo}:2.0.0", f"{repo}:3.20"]


def test_a_bad_rule_is_a_config_error_before_any_request(tmp_path):
    cfg = tmp_path / "images.yaml"
    for rule, says in [('semver: ">=1.2 <<2"', "is not a comparator"),
                       ('regex: "(unclosed"', "is not a regular expression"),
                       ("latest: 0", "'latest' must be 1 or more"),
                       ("exclude: [x]", "needs 'semver', 'regex' or 'latest'"),
                       ("semvr: '1'", "did you mean 'semver'"),
                       ("{regex: x, order: created}", "'order' goes with 'latest'"),
                       ("{latest: 2, order: create}", "did you mean 'created'")]:
        cfg.write_text("images:\n  - repository: localhost:1/app\n    tags:\n"
                       f"      - {rule}\n")
        r = run_mirror("lock", "-f", cfg, "--cache", tmp_path / "cache")
        assert r.returncode == 2, r.stderr
        assert error_line(r).startswith(f"mirror: error: {cfg}:4:"), error_line(r)
        assert says in error_line(r), error_line(r)


def test_config_readmes_tag_rule_example_chooses_what_its_comments_say():
    """config/README.md's example: each rule of its YAML block, run over the listing the text
    gives, keeps the tags its comment names."""
    import re
    from pathlib import Path

    from mirror.config import parse_config

    text = (Path(__file__).parent.parent / "config" / "README.md").read_text()
    section = text.split("## Tag rules", 1)[1].split("\n## ", 1)[0]
    listing = re.search(r"holding `([^`]+)`", section.replace("\n", " ")).group(1).split()
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    rules = [s for s in parse_config(block).images if s.rule is not None]
    said = [line.split("#", 1)[1].split() for line in block.splitlines()
            if "#" in line]
    assert len(rules) == len(said) == 5
    for spec, tags in zip(rules, said, strict=True):
        assert spec.rule is not None
        assert spec.rule.select(listing) == tags, spec.rule.describe()


def test_semver_order_and_ranges():
    from mirror.semver import Range, Version

    order = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta.2",
             "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "v1.0.1", "1.1", "2"]
    assert sorted(reversed(order), key=lambda t: Version.parse(t).key()) == order
    for text in ("latest", "1.2.3.4", "v", "1.x", "01a"):
        assert Version.parse(text) is None, text
    cases = {">=1.2 <2": (["1.2.0", "1.9.9", "v1.5"], ["1.1.9", "2.0.0"]),
             "1.2": (["1.2.0", "1.2.99"], ["1.3.0", "1.1.0"]),
             "~1.2.3": (["1.2.3", "1.2.9"], ["1.3.0", "1.2.2"]),
             "^0.2.3": (["0.2.3", "0.2.9"], ["0.3.0"]),
             "^1.2": (["1.2.0", "1.9.0"], ["2.0.0", "1.1.0"]),
             ">1.2 <=2": (["1.3.0", "2.0.0", "2.9.9"], ["1.2.9", "3.0.0"]),
             "<1 || >=3": (["0.9.0", "3.0.0"], ["1.0.0", "2.9.9"]),
             ">= 1.2": (["1.2.0"], ["1.1.0"])}
    for text, (inside, outside) in cases.items():
        r = Range.parse(text)
        assert all(Version.parse(v) in r for v in inside), text
        assert not any(Version.parse(v) in r for v in outside), text


CREATED = "org.opencontainers.image.created"


def test_latest_by_creation_time(src_registry, faultproxy, repo_name, rng, tmp_path):
    """`latest: N` with `order: created`: a tag's time is its manifest's (or index's)
    `org.opencontainers.image.created` annotation, else its config's `created` (for an index,
    the first platform's the entry asks for); tags without one rank oldest and are named on
    stderr; ties go by tag name. Only the candidates the other keys leave are asked about,
    each manifest once in the run; a warm rerun asks one HEAD per candidate and nothing else.
    The lock and the report keep the tags in the order used, oldest first."""
    proxy = faultproxy(src_registry.url)
    reg = src_registry.url

    def image(created: str | None, platform=ig.AMD64, at: str | None = None) -> ig.Image:
        return ig.make_image(rng, platform, "oci", created=created,
                             annotations={CREATED: at} if at else None)

    old = image("2024-01-01T00:00:00Z")
    push_image(reg, repo_name, old, tags=["a-old", "a-twin"])  # one manifest, a tie
    push_image(reg, repo_name, image("2020-01-01T00:00:00Z", at="2024-06-01T12:00:00+02:00"),
               tags=["b-new"])  # the annotation wins over the config
    push_image(reg, repo_name, ig.make_index(
        [image("2019-01-01T00:00:00Z"), image("2019-01-01T00:00:00Z", ig.ARM64)], "oci",
        annotations={CREATED: "2024-03-01T00:00:00.123456789Z"}), tags=["c-mid"])
    listed = ig.make_index(  # a Docker list: the first platform the entry asks for
        [ig.make_image(rng, ig.AMD64, "docker", created="2024-05-01T00:00:00Z"),
         ig.make_image(rng, ig.ARM64, "docker", created="2025-01-01T00:00:00Z")], "docker")
    push_image(reg, repo_name, listed, tags=["d-list"])
    b_new = image("2020-01-01T00:00:00Z", ig.ARM64, at="2024-06-01T12:00:00+02:00")
    push_image(reg, repo_name + "-arm", listed, tags=["d-list"])
    push_image(reg, repo_name + "-arm", b_new, tags=["b-new"])
    push_image(reg, repo_name, image(None), tags=["e-none"])
    push_image(reg, repo_name, image("2026-01-01T00:00:00Z"), tags=["skip-me", "1.0.0-rc.1"])
    proxy.add(Fault("paginate", method="GET", path=r"/tags/list", offset=3, times=None))
    cfg = tmp_path / "images.yaml"
    repo = f"{proxy.host}/{repo_name}"
    cfg.write_text(f"images:\n  - repository: {repo}\n    tags:\n"
                   "      - latest: 5\n        order: created\n        exclude: ['^skip']\n"
                   "      - latest: 1\n        order: created\n        regex: '^[ae]-'\n"
                   f"  - repository: {repo}-arm\n    platforms: [linux/arm64]\n    tags:\n"
                   "      - latest: 1\n        order: created\n")
    cache = tmp_path / "cache"

    r = mirror_ok("lock", "-f", cfg, "--cache", cache, "--no-referrers")
    rules = json.loads((tmp_path / "images.lock").read_text())["tagRules"]
    assert [r["tags"] for r in rules] == [["a-old", "a-twin", "c-mid", "d-list", "b-new"],
                                          ["a-twin"], ["d-list"]]  # arm64's: 2025
    assert rules[0]["rule"] == {"latest": 5, "order": "created", "exclude": ["^skip"]}
    assert "e-none" in r.stderr and "no creation time" in r.stderr, r.stderr
    asked = [p for p in proxy.paths() if "/manifests/" in p]
    tags = ["a-old", "a-twin", "b-new", "c-mid", "d-list", "e-none"]
    for tag in tags:  # each candidate once, the chosen ones too (no HEAD after the GET)
        assert asked.count(f"/v2/{repo_name}/manifests/{tag}") == 1, (tag, asked)
    assert not any(p.endswith(("/skip-me", "/1.0.0-rc.1")) for p in asked), asked
    config = f"/v2/{repo_name}/blobs/{old.config.digest}"
    assert proxy.paths("GET").count(config) == 1  # one manifest under two tags: read once

    proxy.reset_counters()
    report = tmp_path / "report.json"
    dry = mirror_ok("pull", "-f", cfg, "--cache", cache, "--no-referrers", "--dry-run",
                    "-o", tmp_path / "o.tar", "--report", report)
    assert [p for p in proxy.paths("GET") if "/manifests/" in p or "/blobs/" in p] == []
    heads = proxy.paths("HEAD")
    assert sorted(heads) == sorted([*(f"/v2/{repo_name}/manifests/{t}" for t in tags),
                                    f"/v2/{repo_name}-arm/manifests/b-new",
                                    f"/v2/{repo_name}-arm/manifests/d-list"]), heads
    assert f'{repo}\texclude=["^skip"] latest=5 order="created"\t' \
           "a-old,a-twin,c-mid,d-list,b-new" in dry.stdout.splitlines(), dry.stdout
    doc = json.loads(report.read_text())
    assert [r["tags"] for r in doc["tag_rules"]] == [r["tags"] for r in rules]


def test_latest_by_creation_time_in_config_readme():
    """The rule config/README.md shows for `order: created` is one images.yaml reads."""
    from pathlib import Path

    from mirror.config import parse_config

    text = (Path(__file__).parent.parent / "config" / "README.md").read_text()
    block = text.split("## Tag rules", 1)[1].split("\n## ", 1)[0].split("```yaml\n")[2]
    rules = [s.rule for s in parse_config(block.split("```", 1)[0]).images if s.rule]
    assert rules and all(r.order == "created" and r.latest for r in rules)


def test_a_tag_two_rules_choose_is_one_image(src_registry, faultproxy, repo_name, rng,
                                             tmp_path):
    """config/README's rules overlap (1.2.0 is chosen by the semver rule and by the regex
    rule, 2.0.0 by `latest: 2` and by `^2`): each tag is one image of the run, asked about
    once (one GET by tag cold, one HEAD warm), one entry of the report as of the bundle, and
    the summary counts the bundle's images; each rule still records all it chose. It was one
    image per rule choosing it: 14 report entries and '14 image(s)' for a bundle of 10, and
    the tag resolved once per rule."""
    proxy = faultproxy(src_registry.url)
    seed(src_registry, repo_name, rng, TAGS)
    cfg = tmp_path / "images.yaml"
    repo = f"{proxy.host}/{repo_name}"
    cfg.write_text(CONFIG.format(repo=repo))
    chosen = sorted({t for tags in CHOSEN for t in tags})
    report = tmp_path / "report.json"
    args = ["pull", "-f", cfg, "--cache", tmp_path / "cache", "--no-referrers",
            "-o", tmp_path / "b.tar", "--report", report]
    for method in ("GET", "HEAD"):  # cold, then warm
        proxy.reset_counters()
        proc = mirror_ok(*args)
        by_tag = sorted(p.rsplit("/", 1)[1] for p in proxy.paths(method)
                        if "/manifests/" in p and "sha256:" not in p)
        assert by_tag == chosen, (method, by_tag)
        doc = json.loads(report.read_text())
        assert sorted(e["reference"] for e in doc["images"]) == [f"{repo}:{t}" for t in chosen]
        assert [r["tags"] for r in doc["tag_rules"]] == CHOSEN
        assert f"{len(chosen)} image(s)" in proc.stderr, proc.stderr
    lock = json.loads((tmp_path / "images.lock").read_text())
    assert [r["tags"] for r in lock["tagRules"]] == CHOSEN
    assert sorted(lock["images"]) == [f"{repo}:{t}" for t in chosen]


def test_a_repository_with_rules_is_listed_once_with_its_signatures(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """A repository whose tags a rule chooses is listed once per run: that listing also
    answers the referrers' questions (its cosign `.sig` tag here), which listed the
    repository a second time (every repository twice a night at scale; on a registry with
    `max_requests_per_run`, requests spent for nothing). The signature is carried."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.support.referrers import push_signature

    proxy = faultproxy(src_registry.url)
    digest = seed(src_registry, repo_name, rng, TAGS)
    sig_tag, _ = push_signature(src_registry.url, repo_name, ec.generate_private_key(
        ec.SECP256R1()), digest)
    cfg = tmp_path / "images.yaml"
    repo = f"{proxy.host}/{repo_name}"
    cfg.write_text(f"images:\n  - repository: {repo}\n    tags:\n      - latest: 2\n")
    report = tmp_path / "report.json"
    mirror_ok("pull", "-f", cfg, "--cache", tmp_path / "cache", "-o", tmp_path / "b.tar",
              "--report", report)
    assert len(listings(proxy)) == 1, listings(proxy)
    assert json.loads(report.read_text())["requests"][proxy.host]["tags list"] == 1
    with tarfile.open(tmp_path / "b.tar") as tf:
        inventory = tf.extractfile("mirror.json").read().decode()  # type: ignore[union-attr]
    assert sig_tag in inventory, inventory


def _stale_lock(src_registry, repo_name, rng, tmp_path):
    """A rule's lock (1.0.0 and 1.1.0), then 1.0.0's manifest deleted upstream: the
    images.yaml, the repository and the deleted image."""
    from tests.support.pusher import _request

    old = ig.make_image(rng, ig.AMD64, "oci")
    push_image(src_registry.url, repo_name, old, tags=["1.0.0"])
    push_image(src_registry.url, repo_name, ig.make_image(rng, ig.AMD64, "oci"), tags=["1.1.0"])
    cfg = tmp_path / "images.yaml"
    repo = f"{src_registry.host}/{repo_name}"
    cfg.write_text(f"images:\n  - repository: {repo}\n    tags:\n      - semver: '*'\n")
    mirror_ok("lock", "-f", cfg, "--cache", tmp_path / "c1", "--no-referrers")
    status, _, _ = _request("DELETE", f"{src_registry.url}/v2/{repo_name}/manifests/{old.digest}")
    assert status == 202
    return cfg, repo, old


def test_locked_with_a_manifest_gone_upstream_names_the_image_and_the_lock(
        src_registry, repo_name, rng, tmp_path):
    """--locked with a stale lock: a tag the rule recorded whose manifest the registry has
    since deleted. The error named the repository and digest alone ('.../app: manifest
    sha256:...: HTTP 404'); it now names the image, its images.yaml line, that the digest is
    the lock's, and what to do (exit 5)."""
    cfg, repo, old = _stale_lock(src_registry, repo_name, rng, tmp_path)
    proc = run_mirror("pull", "-f", cfg, "--locked", "--cache", tmp_path / "c2",
                      "--no-referrers", "-o", tmp_path / "b.tar")
    assert proc.returncode == 5, proc.stderr
    line = error_line(proc)
    assert f"{repo}:1.0.0 (locked at {old.digest}, {cfg}:4): " in line and "HTTP 404" in line, proc.stderr
    assert "hint: the registry no longer serves the manifest the lock file names" in \
        proc.stderr, proc.stderr


def test_locked_keep_going_names_the_image_once(src_registry, repo_name, rng, tmp_path):
    """--locked --keep-going with a manifest gone upstream: the warning named the image twice
    ('REF: failed: REF (locked at ...)'); an error that names its image already is said
    once."""
    cfg, repo, old = _stale_lock(src_registry, repo_name, rng, tmp_path)
    proc = run_mirror("pull", "-f", cfg, "--locked", "--keep-going", "--cache",
                      tmp_path / "c2", "--no-referrers", "-o", tmp_path / "b.tar")
    lines = [ln for ln in proc.stderr.splitlines() if old.digest in ln and "failed" in ln]
    assert len(lines) == 1, proc.stderr
    assert f"{repo}:1.0.0: failed (locked at {old.digest}, {cfg}:4): " in lines[0], lines
    assert lines[0].count(f"{repo}:1.0.0") == 1, lines


def test_tags_also_on_a_rule_choosing_several_tags_says_so(src_registry, repo_name, rng,
                                                           tmp_path):
    """`tags_also: [stable]` on a rule that chooses two tags puts both images on `stable`:
    refused (exit 2) with a hint about the rule (`latest: 1`), not the one for two sources
    on one name (another destination, bundles of their own), which does not apply."""
    push_image(src_registry.url, repo_name, ig.make_image(rng, ig.AMD64, "oci"), tags=["1.0.0"])
    push_image(src_registry.url, repo_name, ig.make_image(rng, ig.AMD64, "oci"), tags=["1.1.0"])
    cfg = tmp_path / "images.yaml"
    repo = f"{src_registry.host}/{repo_name}"
    cfg.write_text(f"images:\n  - repository: {repo}\n    tags:\n      - semver: '*'\n"
                   "    tags_also: [stable]\n")
    proc = run_mirror("pull", "-f", cfg, "--cache", tmp_path / "c", "--no-referrers",
                      "-o", tmp_path / "b.tar")
    assert proc.returncode == 2, proc.stderr
    assert f"{repo}:1.0.0 and {repo}:1.1.0 would both be loaded as PREFIX/{repo_name}:stable" \
        in error_line(proc), proc.stderr
    assert f"hint: the tag rule at {cfg}:4 chooses 2 tags (1.0.0, 1.1.0) and tags_also puts " \
        "each on stable: give the rule `latest: 1`" in proc.stderr, proc.stderr


@pytest.mark.parametrize("fixed", ["in_the_rules_repository", "planned_meanwhile"])
def test_a_run_stopped_at_its_tag_rules_reports_every_image(src_registry, repo_name, rng,
                                                            tmp_path, fixed):
    """The report lists every image of the run, in the order given, also after an error: a
    run stopped while choosing tags (a rule that matches nothing here; a signal or a
    registry's error there alike) reported no image at all. Each is now there with the
    run's error (a rule by its repository), for pull and sync. A fixed tag in a repository
    no rule lists is planned while the rules run, and stands in its place: the pull's stop
    read the images as given from the report before they were made (Report.add_later), a
    KeyError traceback, exit 1 and no report."""
    seed(src_registry, repo_name, rng, ["1.0.0"])
    repo = f"{src_registry.host}/{repo_name}"
    first = f"{repo}:1.0.0"
    if fixed == "planned_meanwhile":
        seed(src_registry, f"{repo_name}-fixed", rng, ["1"])
        first = f"{repo}-fixed:1"
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"images:\n  - {first}\n  - repository: {repo}\n    tags:\n"
                   "      - semver: '>=9'\n")
    report = tmp_path / "r.json"
    for cmd in (["pull", "-o", tmp_path / "b.tar"], ["sync", "--to", f"{src_registry.host}/x"]):
        report.unlink(missing_ok=True)
        proc = run_mirror(*cmd, "-f", cfg, "--cache", tmp_path / "c", "--no-referrers",
                          "--report", report)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        doc = json.loads(report.read_text())
        assert [(e["reference"], e["where"]) for e in doc["images"]] == \
            [(first, f"{cfg}:2"), (repo, f"{cfg}:5")], doc["images"]
        assert all(e["error"] == doc["error"] and e["error_code"] == 2
                   for e in doc["images"]), doc["images"]


def _two_nightlies(registry, repo: str, rng, tmp_path, host: str, latest: int):
    """Two images a month apart, tagged nightly-0 and nightly-1, and an images.yaml taking
    the `latest` of them by creation time from `host`: (the images, the config's path)."""
    imgs = [ig.make_image(rng, ig.AMD64, "oci", created=f"2024-0{n}-01T00:00:00Z")
            for n in (1, 2)]
    for n, img in enumerate(imgs):
        push_image(registry.url, repo, img, tags=[f"nightly-{n}"])
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"images:\n  - repository: {host}/{repo}\n    tags:\n"
                   f"      - latest: {latest}\n        order: created\n")
    return imgs, cfg


def test_configs_order_created_read_count_as_fetched(src_registry, faultproxy, repo_name,
                                                     rng, tmp_path):
    """The configs `order: created` reads to rank the tags cross the network once, in the
    run, into the cache: a cold pull counts them as fetched (the report's blobs_fetched,
    bytes_fetched, and the image's own), not as found in the cache; a rerun reuses them."""
    proxy = faultproxy(src_registry.url)
    imgs, cfg = _two_nightlies(src_registry, repo_name, rng, tmp_path, proxy.host, latest=2)
    rep = tmp_path / "r.json"
    pull = ("pull", "-f", cfg, "--cache", tmp_path / "cache", "-o", tmp_path / "b.tar",
            "--report", rep, "-q")
    mirror_ok(*pull)
    blobs = {d.digest: d.size for img in imgs for d in [img.config, *img.layers]}
    gets = [p.rsplit("/", 1)[-1] for p in proxy.paths("GET") if "/blobs/" in p]
    assert sorted(gets) == sorted(blobs), gets  # each blob crossed once, configs first
    doc = json.loads(rep.read_text())
    assert (doc["blobs_fetched"], doc["bytes_fetched"], doc["blobs_reused"],
            doc["bytes_reused"]) == (len(blobs), sum(blobs.values()), 0, 0), doc
    assert [(e["bytes_fetched"], e["bytes_reused"]) for e in doc["images"]] == \
        [(img.config.size + sum(x.size for x in img.layers), 0) for img in imgs]
    mirror_ok(*pull)
    doc = json.loads(rep.read_text())
    assert (doc["blobs_fetched"], doc["blobs_reused"], doc["bytes_reused"]) == \
        (0, len(blobs), sum(blobs.values())), doc


def test_a_config_order_created_cannot_keep_on_a_full_disk_leaves_no_temporary_file(
        src_registry, repo_name, rng, tmp_path, small_disk):
    """The configs `order: created` reads are kept in the cache's blobs; on a full disk the
    run said only "No space left on device" (the run lock's pid failed first; with room for
    that, the config's write, which left its `.<hex>.<pid>.tmp` beside the blob). The run
    lock holds without its pid (the flock is the lock), the config's write fails naming its
    file and leaves no temporary file, and the next run, with room, gets through."""
    _, cfg = _two_nightlies(src_registry, repo_name, rng, tmp_path, src_registry.host,
                            latest=1)
    cache = small_disk(256 << 10) / "cache"
    (cache / "blobs" / "sha256").mkdir(parents=True)
    (cache / "manifests").mkdir()
    filler = cache.parent / "filler"
    with open(filler, "wb", buffering=0) as f:  # the disk full to its last byte
        try:
            while f.write(b"\0" * 4096):
                pass
        except OSError:
            pass
    pull = ("pull", "-f", cfg, "--cache", cache, "-o", tmp_path / "b.tar", "-q")
    proc = run_mirror(*pull)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = error_line(proc)
    assert str(cache / "blobs" / "sha256") in line and "No space left" in line, line
    assert [p.name for p in cache.rglob("*.tmp")] == []
    filler.unlink()
    mirror_ok(*pull)


def test_a_rule_whose_repository_cannot_be_listed_fails_alone_with_keep_going(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """A tag rule whose listing fails (the repository gone upstream: 404; 500s through the
    retries) is one failed entry of a nightly --keep-going run, as a fixed tag that fails is:
    the other images are carried (exit 13), where it stopped the whole run (exit 5, both
    images failed, no bundle). With a lock recording the rule's tags, those tags fail, named,
    and the lock keeps their entries; without --keep-going the run stops as before."""
    proxy = faultproxy(src_registry.url)
    seed(src_registry, repo_name, rng, ["1.0.0"])
    fixed, ruled = f"{proxy.host}/{repo_name}", f"{proxy.host}/{repo_name}-later"
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"images:\n  - {fixed}:1.0.0\n  - repository: {ruled}\n    tags:\n"
                   "      - latest: 1\n")
    common = ["-f", cfg, "--cache", tmp_path / "c", "--no-referrers", "--retries", "0"]
    report = tmp_path / "r.json"

    def pull(out: str, *more) -> tuple[object, dict]:
        proc = run_mirror("pull", *common, "-o", tmp_path / out, "--report", report, *more)
        return proc, json.loads(report.read_text())

    proc, doc = pull("b1.tar", "--keep-going")
    assert proc.returncode == 13, proc.stderr
    assert [(e["reference"], e["where"], e["error_code"]) for e in doc["images"]] == \
        [(f"{fixed}:1.0.0", f"{cfg}:2", None), (ruled, f"{cfg}:5", 5)], doc["images"]
    assert f"{ruled}: failed: list tags: HTTP 404" in proc.stderr, proc.stderr
    with tarfile.open(tmp_path / "b1.tar") as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert [m["annotations"]["org.opencontainers.image.ref.name"]
            for m in index["manifests"]] == [f"{fixed}:1.0.0"]
    proc, doc = pull("b2.tar")
    assert proc.returncode == 5 and "list tags: HTTP 404" in error_line(proc), proc.stderr
    assert not (tmp_path / "b2.tar").exists()

    seed(src_registry, f"{repo_name}-later", rng, ["2.0.0"])
    proc, doc = pull("b3.tar", "--keep-going")
    assert proc.returncode == 0, proc.stderr
    locked = json.loads((tmp_path / "images.lock").read_text())
    assert set(locked["images"]) == {f"{fixed}:1.0.0", f"{ruled}:2.0.0"}
    proxy.add(Fault("status", method="GET", path=rf"/{repo_name}-later/tags/list",
                    status=500, times=None))
    proc, doc = pull("b4.tar", "--keep-going")
    assert proc.returncode == 13, proc.stderr
    assert f"{ruled}:2.0.0: failed: {ruled}: list tags: HTTP 500" in proc.stderr, proc.stderr
    assert [(e["reference"], e["error_code"]) for e in doc["images"]] == \
        [(f"{fixed}:1.0.0", None), (f"{ruled}:2.0.0", 3)], doc["images"]
    assert [r["tags"] for r in doc["tag_rules"]] == [["2.0.0"]], doc["tag_rules"]
    assert json.loads((tmp_path / "images.lock").read_text())["images"] == locked["images"]


def test_order_created_leaves_out_a_tag_deleted_since_the_listing(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """A registry pruning old nightly builds while the job runs: a candidate tag the listing
    named is gone (404) when `order: created` asks for its time. It is no tag to choose, so
    the rule chooses among the others (a warning names it), on a cold run (GET) as on a warm
    one (HEAD); it stopped the run (exit 5), or with --keep-going failed the rule's images."""
    proxy = faultproxy(src_registry.url)
    for day in (1, 2, 3):
        img = ig.make_image(rng, ig.AMD64, "oci", created=f"2024-01-0{day}T00:00:00Z")
        push_image(src_registry.url, repo_name, img, tags=[f"nightly-{day}"])
    repo = f"{proxy.host}/{repo_name}"
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"images:\n  - repository: {repo}\n    tags:\n"
                   "      - latest: 2\n        order: created\n")
    common = ["pull", "-f", cfg, "--no-referrers", "--report", tmp_path / "r.json"]
    mirror_ok(*common, "--cache", tmp_path / "warm", "-o", tmp_path / "first.tar")
    gone = proxy.add(Fault("status", path=rf"/{repo_name}/manifests/nightly-1$", status=404,
                           code="MANIFEST_UNKNOWN", times=None))
    for night in ("cold", "warm"):  # a cache that never saw nightly-1 (GET), one that did
        proc = run_mirror(*common, "--cache", tmp_path / night, "-o", tmp_path / f"{night}.tar")
        assert proc.returncode == 0, proc.stderr
        assert "nightly-1 listed but gone when asked about" in proc.stderr, proc.stderr
        doc = json.loads((tmp_path / "r.json").read_text())
        assert doc["tag_rules"][0]["tags"] == ["nightly-2", "nightly-3"], doc["tag_rules"]
    asked = [(m, status) for m, p, status in proxy.requests if p.endswith("/nightly-1")]
    # the first night's GET, the cold night's GET, the warm night's HEAD (and the GET the
    # client tries after a HEAD's 404)
    assert asked == [("GET", 200), ("GET", 404), ("HEAD", 404), ("GET", 404)], asked
    assert gone.hits == 3


def test_a_rule_never_chooses_the_tags_of_signatures_and_referrers(
        src_registry, repo_name, rng, tmp_path):
    """A signed repository's listing holds cosign's `sha256-<hex>.sig` tags and the OCI
    fallback tags `sha256-<hex>` (an SBOM here) beside its images' tags: they are not images
    of the repository but what refers to them, carried with their subjects. A rule took them
    as candidates: `order: created` fetched each one's manifest and warned, every run (on
    stderr with -q too), that they had no creation time; `latest: 5` of two builds chose
    them as images, and the run failed (exit 2, "invalid platform '/'"), as would a `regex`
    they match. Now the rule sees the images' tags alone; the signatures and SBOMs still
    travel with the images the rule chose."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.support.referrers import push_sbom, push_signature

    key = ec.generate_private_key(ec.SECP256R1())
    signed = {}
    for n, at in ((1, "2024-01-01T00:00:00Z"), (2, "2024-02-01T00:00:00Z")):
        img = ig.make_image(rng, ig.AMD64, "oci", created=at)
        push_image(src_registry.url, repo_name, img, tags=[f"nightly-{n}"])
        signed[f"nightly-{n}"] = push_signature(src_registry.url, repo_name, key, img.digest)[0]
        push_sbom(src_registry.url, repo_name, img.manifest)
    repo = f"{src_registry.host}/{repo_name}"
    cfg = tmp_path / "images.yaml"
    for rule, chosen in (("latest: 1\n        order: created", ["nightly-2"]),
                         ("latest: 5\n        order: created", ["nightly-1", "nightly-2"]),
                         ("regex: '-'", ["nightly-1", "nightly-2"])):
        cfg.write_text(f"images:\n  - repository: {repo}\n    tags:\n      - {rule}\n")
        report, out = tmp_path / "r.json", tmp_path / "b.tar"
        proc = run_mirror("pull", "-q", "-f", cfg, "--cache", tmp_path / "cache", "-o", out,
                          "--report", report)
        assert proc.returncode == 0 and proc.stderr == "", (rule, proc.stderr)
        doc = json.loads(report.read_text())
        assert [r["tags"] for r in doc["tag_rules"]] == [chosen], (rule, doc["tag_rules"])
        with tarfile.open(out) as tf:
            inventory = json.loads(tf.extractfile("mirror.json").read())  # type: ignore[union-attr]
        kinds = sorted(r["annotations"]["dev.mirror.referrer.kind"]
                       for r in inventory["referrers"])
        assert kinds == sorted(["sbom", "signature"] * len(chosen)), (rule, kinds)
        text = json.dumps(inventory)
        assert all(signed[t] in text for t in chosen), (rule, text)


def test_the_times_a_spent_budget_cut_short_keep_what_was_paid_for(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """`order: created` over 12 nightly builds on a registry whose max_requests_per_run (10:
    the ping, the listing and 8 manifest GETs, the candidates asked 8 at once) runs out
    while it asks their times: the first answer's config GET is refused, and the 7 GETs
    still on their way were cancelled, their manifests (requests spent, Docker Hub pulls)
    thrown away: the next run asked the same 7 tags with a GET again, and every run after
    (1 HEAD, 7 GETs each night). The questions already under way now finish: every manifest
    the run paid for is kept, and the next run asks those tags with a HEAD."""
    proxy = faultproxy(src_registry.url)
    for n in range(12):
        push_image(src_registry.url, repo_name, ig.make_image(
            rng, ig.AMD64, "oci", created=f"2024-01-{n + 1:02d}T00:00:00Z"),
            tags=[f"nightly-{n:02d}"])
    proxy.add(Fault("stall", method="GET", path="/manifests/nightly-", skip=1, times=None,
                    delay=0.5))
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"registries:\n  {proxy.host}:\n    max_requests_per_run: 10\n"
                   f"images:\n  - repository: {proxy.host}/{repo_name}\n    tags:\n"
                   "      - latest: 2\n        order: created\n")
    report = tmp_path / "r.json"
    args = ["pull", "-f", cfg, "--cache", tmp_path / "cache", "-o", tmp_path / "b.tar",
            "--report", report]
    proc = run_mirror(*args)
    assert proc.returncode == 14
    # the least a run needs counts the candidates it could not ask about (12: 8 configs,
    # 4 manifests), not only the 10 requests spent and a blob GET: 12 would never do
    assert f"{proxy.host}: max_requests_per_run: 10 was spent before any image could be " \
        "fetched (manifest GET 8, ping 1, tags list 1): a run of these 1 image(s) needs at " \
        "least 23 requests (what this one spent resolving them, a request per tag rule " \
        "candidate it left unasked (12), and a blob GET each)" in proc.stderr, proc.stderr
    sent = json.loads(report.read_text())["requests"][proxy.host]
    assert sent["manifest GET"] == 8, sent
    assert len(list((tmp_path / "cache" / "manifests" / "tags").iterdir())) == 8
    got = {p.rsplit("/", 1)[1] for m, p, st in proxy.requests
           if m == "GET" and "/manifests/" in p and st == 200}
    assert len(got) == 8, proxy.requests

    proxy.reset_counters()
    assert run_mirror(*args).returncode == 14
    again = {p.rsplit("/", 1)[1] for m, p, _ in proxy.requests
             if m == "GET" and "/manifests/" in p}
    assert not again & got, (again & got, proxy.requests)


def test_order_created_on_a_budget_smaller_than_its_candidates_converges(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """`latest: 2, order: created` over 14 nightly builds (indexes without annotations:
    a tag's time costs its index, one platform's manifest and that config) on a registry
    whose max_requests_per_run (12) is smaller than its candidates: each run spent the
    budget on the times, asking every candidate again, and the next started over (exit 14
    every night, for ever). What a run read stays in the cache and the next asks only what
    is still unknown, so repeated runs get there, each saying the rule waits (exit 14);
    the tags, lock file and bundle are then an unbudgeted run's."""
    proxy = faultproxy(src_registry.url)
    for n in range(14):
        index = ig.make_index([ig.make_image(rng, p, "oci", created=f"2024-01-{n + 1:02d}T00:00:00Z")
                               for p in (ig.AMD64, ig.ARM64)], "oci")
        push_image(src_registry.url, repo_name, index, tags=[f"nightly-{n:02d}"])
    rule = (f"images:\n  - repository: {proxy.host}/{repo_name}\n    tags:\n"
            "      - latest: 2\n        order: created\n")
    free, tight = tmp_path / "free", tmp_path / "tight"
    for d, budget in ((free, None), (tight, 12)):
        d.mkdir()
        (d / "images.yaml").write_text(
            (f"registries:\n  {proxy.host}:\n    max_requests_per_run: {budget}\n"
             if budget else "") + rule)
    mirror_ok("pull", "-f", free / "images.yaml", "--cache", free / "cache", "-o",
              free / "b.tar", "--report", free / "r.json")
    want = json.loads((free / "r.json").read_text())["tag_rules"]
    assert [r["tags"] for r in want] == [["nightly-12", "nightly-13"]], want
    args = ["pull", "-f", tight / "images.yaml", "--cache", tight / "cache", "-o",
            tight / "b.tar", "--report", tight / "r.json"]
    codes: list[int] = []
    waits: list[list[str]] = []
    for _ in range(8):
        proc = run_mirror(*args)
        codes.append(proc.returncode)
        doc = json.loads((tight / "r.json").read_text())
        if proc.returncode == 0:
            break
        assert proc.returncode == 14, proc.stderr
        # the rule waits, named by its repository; once it chose, the images that wait
        waits.append(doc["waiting"])
        if doc["waiting"] == [f"{proxy.host}/{repo_name}"]:  # named so, with how far it got
            assert f"tag rule at {tight / 'images.yaml'}:" in proc.stderr and \
                "candidate tags still to read (what this run read is kept" in proc.stderr, \
                proc.stderr
        assert doc["waiting"] in ([f"{proxy.host}/{repo_name}"], *(
            [f"{proxy.host}/{repo_name}:{t}" for t in tags]
            for tags in (["nightly-12", "nightly-13"], ["nightly-13"]))), doc
        assert sum(doc["requests"][proxy.host].values()) <= 12, doc["requests"]
    assert codes[-1] == 0 and len(codes) > 1, (codes, waits)
    assert doc["waiting"] == [] and [r["tags"] for r in doc["tag_rules"]] == \
        [r["tags"] for r in want], doc["tag_rules"]
    assert (tight / "b.tar").read_bytes() == (free / "b.tar").read_bytes()
    locks = [json.loads((d / "images.lock").read_text()) for d in (tight, free)]
    assert locks[0]["images"] == locks[1]["images"], locks
    assert [r["tags"] for r in locks[0]["tagRules"]] == [["nightly-12", "nightly-13"]], locks


def _budgeted_nightlies(src_registry, proxy, repo_name: str, rng, tmp_path, n: int, *,
                        budget: int):
    """`n` one-platform nightly indexes (their configs dated a day apart), and an images.yaml
    with `latest: 1, order: created` over them through `proxy`, on a max_requests_per_run of
    `budget`: its path."""
    for i in range(n):
        index = ig.make_index([ig.make_image(rng, ig.AMD64, "oci",
                                             created=f"2024-01-{i + 1:02d}T00:00:00Z")], "oci")
        push_image(src_registry.url, repo_name, index, tags=[f"nightly-{i:02d}"])
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"registries:\n  {proxy.host}:\n    max_requests_per_run: {budget}\n"
                   f"images:\n  - repository: {proxy.host}/{repo_name}\n    tags:\n"
                   "      - latest: 1\n        order: created\n")
    return cfg


def test_a_budget_the_listing_spends_says_the_rule_waits_every_run(
        src_registry, faultproxy, repo_name, rng, tmp_path):
    """`order: created` on a registry whose max_requests_per_run (2) goes on the ping and the
    tag listing: no candidate's time is read, so no run gets further than the last. The
    warning said the opposite ('what it read of the candidates is kept ... runs on this
    budget get through them'); it says to raise the budget, as for a budget that reads
    nothing else, and each run is the same."""
    proxy = faultproxy(src_registry.url)
    cfg = _budgeted_nightlies(src_registry, proxy, repo_name, rng, tmp_path, 3, budget=2)
    runs = []
    for _ in range(2):
        proxy.reset_counters()
        proc = run_mirror("pull", "-f", cfg, "--cache", tmp_path / "cache", "-o",
                          tmp_path / "b.tar", "--report", tmp_path / "r.json")
        assert proc.returncode == 14, proc.stderr
        asked = [(m, p) for m, p, _ in proxy.requests]
        assert not [p for _, p in asked if "/manifests/" in p], asked  # no time read
        runs.append(asked)
        warning = [line for line in proc.stderr.splitlines()
                   if "max_requests_per_run: 2 was spent" in line]
        assert len(warning) == 1, proc.stderr
        assert "get through them" not in warning[0], warning
        assert "raise it, or the same images wait every run" in warning[0], warning
    assert runs[0] == runs[1]


def test_a_sync_without_a_cache_does_not_say_it_keeps_the_times(
        src_registry, dst_registry, faultproxy, repo_name, rng, tmp_path):
    """`order: created` on a budget too small for its candidates, synced without --cache:
    nothing is kept (no cache), so every run asks them all again. The rule's waiting line
    said 'what this run read is kept: the next run goes on from there'; it says how far
    it got, and no such thing."""
    proxy = faultproxy(src_registry.url)
    cfg = _budgeted_nightlies(src_registry, proxy, repo_name, rng, tmp_path, 4, budget=4)
    proc = run_mirror("sync", "-f", cfg, "--to", f"{dst_registry.host}/nc")
    assert proc.returncode == 14, proc.stderr
    assert "candidate tags still to read" in proc.stderr, proc.stderr
    assert "is kept" not in proc.stderr and "goes on from there" not in proc.stderr, \
        proc.stderr


def test_a_candidate_damaged_in_the_cache_as_order_created_reads_it_is_fetched_again(
        src_registry, repo_name, rng, tmp_path):
    """`order: created` reads a candidate's manifest back from the cache's store, where its
    GET left it, for the time it names: damaged there meanwhile (tests.support.damage), the
    rule failed (exit 7, `... run again`). It is fetched again by digest (checked, stored
    again), one more manifest GET in the report, the rule chooses as an undamaged run does
    and the bundle is that run's, byte for byte."""
    digests = []
    for day in (1, 2, 3):
        img = ig.make_image(rng, ig.AMD64, "oci", created=f"2024-01-0{day}T00:00:00Z")
        push_image(src_registry.url, repo_name, img, tags=[f"nightly-{day}"])
        digests.append(img.digest)
    cfg = tmp_path / "images.yaml"
    cfg.write_text(f"images:\n  - repository: {src_registry.host}/{repo_name}\n    tags:\n"
                   "      - latest: 2\n        order: created\n")
    mirror_ok("pull", "-f", cfg, "--no-referrers", "--report", tmp_path / "clean.json",
              "--cache", tmp_path / "c0", "-o", tmp_path / "clean.tar")
    done = damaged_on_read(digests[1], "pull", "-f", cfg, "--no-referrers", "--report",
                           tmp_path / "r.json", "--cache", tmp_path / "cache", "-o",
                           tmp_path / "b.tar")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "b.tar").read_bytes() == (tmp_path / "clean.tar").read_bytes()
    doc, clean = (json.loads((tmp_path / n).read_text()) for n in ("r.json", "clean.json"))
    assert doc["tag_rules"][0]["tags"] == clean["tag_rules"][0]["tags"] == \
        ["nightly-2", "nightly-3"]
    asked, before = (d["requests"][src_registry.host] for d in (doc, clean))
    assert asked["manifest GET"] == before["manifest GET"] + 1, (asked, before)
