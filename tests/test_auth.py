"""Issue 3, auth: Basic against the real registry's htpasswd, the Bearer token flow against the
real registry's `auth.token` with a token server written for the tests, and credentials from
where users keep them (Docker config.json, credential helpers, containers auth.json,
--authfile, images.yaml). The secret never shows up in output, reports or exceptions.

The CLI runs as a subprocess with HOME, DOCKER_CONFIG, REGISTRY_AUTH_FILE and XDG_RUNTIME_DIR
pointed at the test's own directory, so the machine's real credentials never take part.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import subprocess
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirror.errors import AuthError
from mirror.registry.client import Client
from mirror.registry.credentials import HUB_KEY, Credential, CredentialStore, RegistryLogin
from mirror.registry.transport import RetryPolicy, Transport
from tests.support import imagegen as ig
from tests.support import pusher
from tests.support.faultproxy import Fault
from tests.support.oracle import ROOT, check_layout, mirror_cmd, mirror_env, run
from tests.support.registry import Registry
from tests.support.tokenserver import TokenServer
from tests.test_faults import RecordingProxy, recproxy

__all__ = ["recproxy"]  # the fixture, shared with test_faults

USER = "mirror-user"
SECRET = "Zq8-s3cret-pw-41c7"  # searched for in every output
ENV_KEYS = ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_AUTH_CONFIG")


def b64(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def forbidden_strings(*secrets: str) -> list[str]:
    out = []
    for s in secrets:
        out += [s, b64(USER, s), base64.b64encode(s.encode()).decode()]
    return out


def cli(tmp_path: Path, *args: object, env: dict[str, str] | None = None,
        timeout: float = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`python -m mirror ARGS` with credentials looked up only under tmp_path."""
    e = mirror_env()
    for k in ENV_KEYS:
        e.pop(k, None)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    e["HOME"] = str(home)
    e.update(env or {})
    return run(mirror_cmd(*args), env=e, cwd=cwd, timeout=timeout)


def pull(tmp_path: Path, ref: str, *extra: object, env: dict[str, str] | None = None,
         out: str = "out.tar") -> subprocess.CompletedProcess[str]:
    return cli(tmp_path, "pull", ref, "-o", tmp_path / out, "--cache", tmp_path / "cache",
               "--report", tmp_path / "report.json", *extra, env=env)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def assert_no_secret(tmp_path: Path, proc: subprocess.CompletedProcess[str],
                     *secrets: str) -> None:
    texts = {"stdout": proc.stdout, "stderr": proc.stderr}
    report = tmp_path / "report.json"
    if report.exists():
        texts["report"] = report.read_text()
    for bad in forbidden_strings(*(secrets or (SECRET,))):
        for where, text in texts.items():
            assert bad not in text, f"the secret leaked into {where}: {text}"


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mirror: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def write_json(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def write_helper(bin_dir: Path, name: str, user: str, secret: str) -> Path:
    """A `docker-credential-<name>` that logs the server URL it was asked about and answers
    with `user`/`secret` for any registry."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    log = bin_dir / f"{name}.log"
    script = bin_dir / f"docker-credential-{name}"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = get ] || exit 1\n'
        f"read -r server\n"
        f'echo "$server" >> "{log}"\n'
        f"printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{secret}\"}}' "
        '"$server"\n')
    script.chmod(0o755)
    return log


def with_path(bin_dir: Path) -> dict[str, str]:
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


# -- a registry with htpasswd (Basic) -------------------------------------------------------


@pytest.fixture(scope="module")
def basic() -> Iterator[tuple[Registry, str, ig.Image]]:
    rng = random.Random("test_auth.basic")
    img = ig.make_image(rng, ig.AMD64, "oci", layer_size=2048)
    with Registry(htpasswd=(USER, SECRET)) as reg:
        pusher.push_image(reg.url, "private/app", img, ["v1"], auth=(USER, SECRET))
        yield reg, f"{reg.host}/private/app:v1", img


def pulled_digest(tmp_path: Path, out: str = "out.tar") -> str:
    lay = check_layout(tmp_path / out)
    [entry] = lay.index["manifests"]
    return entry["digest"]


@pytest.mark.parametrize("key", ["host", "https://host/v1/", "http://host"])
def test_basic_from_docker_config_auths(basic, tmp_path: Path, key: str) -> None:
    reg, ref, img = basic
    cfg = tmp_path / "docker"
    write_json(cfg / "config.json",
               {"auths": {key.replace("host", reg.host): {"auth": b64(USER, SECRET)}}})
    proc = ok(pull(tmp_path, ref, env={"DOCKER_CONFIG": str(cfg)}))
    assert pulled_digest(tmp_path) == img.digest
    assert_no_secret(tmp_path, proc)


def test_basic_from_docker_auth_config_env(basic, tmp_path: Path) -> None:
    """DOCKER_AUTH_CONFIG (recent docker/cli): a config.json `auths` object in the env."""
    reg, ref, img = basic
    env = {"DOCKER_AUTH_CONFIG": json.dumps({"auths": {reg.host: {"auth": b64(USER, SECRET)}}})}
    proc = ok(pull(tmp_path, ref, env=env))
    assert pulled_digest(tmp_path) == img.digest
    assert_no_secret(tmp_path, proc)


def test_basic_from_home_docker_config(basic, tmp_path: Path) -> None:
    """No DOCKER_CONFIG: ~/.docker/config.json."""
    reg, ref, img = basic
    write_json(tmp_path / "home/.docker/config.json",
               {"auths": {reg.host: {"username": USER, "password": SECRET}}})
    ok(pull(tmp_path, ref))
    assert pulled_digest(tmp_path) == img.digest


@pytest.mark.parametrize("where", ["REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "--authfile"])
def test_basic_from_containers_auth_json(basic, tmp_path: Path, where: str) -> None:
    reg, ref, img = basic
    doc = {"auths": {reg.host: {"auth": b64(USER, SECRET)}}}
    extra: list[object] = []
    if where == "REGISTRY_AUTH_FILE":
        env = {"REGISTRY_AUTH_FILE": str(write_json(tmp_path / "auth.json", doc))}
    elif where == "XDG_RUNTIME_DIR":
        write_json(tmp_path / "run/containers/auth.json", doc)
        env = {"XDG_RUNTIME_DIR": str(tmp_path / "run")}
    else:
        extra = ["--authfile", write_json(tmp_path / "elsewhere.json", doc)]
        env = {}
    proc = ok(pull(tmp_path, ref, *extra, env=env))
    assert pulled_digest(tmp_path) == img.digest
    assert_no_secret(tmp_path, proc)


@pytest.mark.parametrize("how", ["password_env", "password_file"])
def test_basic_from_images_yaml(basic, tmp_path: Path, how: str) -> None:
    """The YAML names an environment variable or a file; the secret is never in the YAML."""
    reg, ref, img = basic
    env = {}
    if how == "password_env":
        env["MIRROR_TEST_PW"] = SECRET
        value = "MIRROR_TEST_PW"
    else:
        (tmp_path / "pw.txt").write_text(SECRET + "\n")
        value = str(tmp_path / "pw.txt")
    yml = tmp_path / "images.yaml"
    yml.write_text(f"version: 1\nregistries:\n  {reg.host}:\n    username: {USER}\n"
                   f"    {how}: {value}\nimages:\n  - {ref}\n")
    # a wrong password in config.json must lose against images.yaml
    write_json(tmp_path / "docker/config.json",
               {"auths": {reg.host: {"auth": b64(USER, "wrong")}}})
    env["DOCKER_CONFIG"] = str(tmp_path / "docker")
    proc = ok(cli(tmp_path, "pull", "-f", yml, "-o", tmp_path / "out.tar", "--cache",
                  tmp_path / "cache", "--report", tmp_path / "report.json", env=env))
    assert pulled_digest(tmp_path) == img.digest
    assert_no_secret(tmp_path, proc)


@pytest.mark.parametrize("kind", ["credHelpers", "credsStore"])
def test_basic_through_credential_helper(basic, tmp_path: Path, kind: str) -> None:
    reg, ref, img = basic
    log = write_helper(tmp_path / "bin", "mirrortest", USER, SECRET)
    doc: dict = {"auths": {reg.host: {}}}
    if kind == "credHelpers":
        doc["credHelpers"] = {reg.host: "mirrortest"}
    else:
        doc["credsStore"] = "mirrortest"
    write_json(tmp_path / "docker/config.json", doc)
    env = {"DOCKER_CONFIG": str(tmp_path / "docker"), **with_path(tmp_path / "bin")}
    proc = ok(pull(tmp_path, ref, env=env))
    assert pulled_digest(tmp_path) == img.digest
    assert log.read_text().split() == [reg.host]  # asked once, about this registry
    assert_no_secret(tmp_path, proc)


def test_helper_not_on_path_is_a_clear_error(basic, tmp_path: Path) -> None:
    reg, ref, _ = basic
    write_json(tmp_path / "docker/config.json", {"credHelpers": {reg.host: "nosuchhelper"}})
    proc = pull(tmp_path, ref, env={"DOCKER_CONFIG": str(tmp_path / "docker")})
    assert proc.returncode == 4, proc.stderr
    assert "docker-credential-nosuchhelper" in error_line(proc)


def test_missing_creds_store_counts_as_empty(basic, src_registry: Registry, repo_name: str,
                                             rng: random.Random, tmp_path: Path) -> None:
    """`credsStore: desktop` copied from a laptop, no such helper here: public pulls work,
    and `auths` entries still count."""
    reg, ref, img = basic
    pub = ig.make_image(rng, ig.ARM64, layer_size=500)
    pusher.push_image(src_registry.url, repo_name, pub, ["v1"])
    write_json(tmp_path / "docker/config.json", {
        "credsStore": "mirror-test-not-installed",
        "auths": {reg.host: {"auth": b64(USER, SECRET)}}})
    env = {"DOCKER_CONFIG": str(tmp_path / "docker")}
    ok(pull(tmp_path, f"{src_registry.host}/{repo_name}:v1", env=env, out="pub.tar"))
    assert pulled_digest(tmp_path, "pub.tar") == pub.digest
    ok(pull(tmp_path, ref, env=env))
    assert pulled_digest(tmp_path) == img.digest


@pytest.mark.parametrize("source", ["config.json", "images.yaml", "env.yaml", "helper"])
def test_basic_wrong_credentials_exit_4(basic, tmp_path: Path, source: str) -> None:
    """One line naming the registry and where the credentials came from (the YAML file by
    the name it was given, `-f env.yaml`, and where the secret came from); no secret."""
    reg, ref, _ = basic
    wrong = "Wr0ng-" + SECRET[::-1]
    env: dict[str, str] = {}
    args: list[object] = ["pull", ref]
    if source == "config.json":
        cfg = write_json(tmp_path / "docker/config.json",
                         {"auths": {reg.host: {"auth": b64(USER, wrong)}}})
        env["DOCKER_CONFIG"] = str(cfg.parent)
        expect = str(cfg)
    elif source.endswith(".yaml"):
        env["MIRROR_TEST_PW"] = wrong
        yml = tmp_path / source
        yml.write_text(f"registries:\n  {reg.host}:\n    username: {USER}\n"
                       f"    password_env: MIRROR_TEST_PW\nimages: [{ref}]\n")
        args = ["pull", "-f", yml]
        expect = f"password from $MIRROR_TEST_PW named in {yml}:4"
    else:
        write_helper(tmp_path / "bin", "wrongpw", USER, wrong)
        write_json(tmp_path / "docker/config.json", {"credHelpers": {reg.host: "wrongpw"}})
        env.update(DOCKER_CONFIG=str(tmp_path / "docker"), **with_path(tmp_path / "bin"))
        expect = "docker-credential-wrongpw"
    proc = cli(tmp_path, *args, "-o", tmp_path / "out.tar", "--cache", tmp_path / "cache",
               "--report", tmp_path / "report.json", env=env)
    assert proc.returncode == 4, proc.stderr
    line = error_line(proc)
    assert reg.host in line and expect in line, line
    if source == "env.yaml":
        assert "images.yaml" not in proc.stderr, proc.stderr
    assert_no_secret(tmp_path, proc, wrong, SECRET)
    assert not (tmp_path / "out.tar").exists()


def test_password_env_not_set_names_the_yaml_file_and_line(basic, tmp_path: Path) -> None:
    reg, ref, _ = basic
    yml = tmp_path / "env.yaml"
    yml.write_text(f"registries:\n  {reg.host}:\n    username: {USER}\n"
                   f"    password_env: MIRROR_TEST_UNSET_PW\nimages: [{ref}]\n")
    proc = cli(tmp_path, "pull", "-f", yml, "-o", tmp_path / "out.tar", "--cache",
               tmp_path / "cache")
    assert proc.returncode == 4, proc.stderr
    line = error_line(proc)
    assert reg.host in line and "MIRROR_TEST_UNSET_PW" in line and f"{yml}:4" in line, line
    assert "images.yaml" not in proc.stderr, proc.stderr


def test_basic_no_credentials_exit_4_with_hint(basic, tmp_path: Path) -> None:
    reg, ref, _ = basic
    proc = pull(tmp_path, ref)
    assert proc.returncode == 4, proc.stderr
    assert reg.host in error_line(proc)
    assert "hint:" in proc.stderr and "docker login" in proc.stderr


async def test_secret_not_in_exceptions(basic, tmp_path: Path) -> None:
    reg, _, _ = basic
    wrong = "Wr0ng-" + SECRET[::-1]
    pw = tmp_path / "pw"
    pw.write_text(wrong)
    creds = CredentialStore({reg.host: RegistryLogin(USER, password_file=str(pw))})
    async with Transport(credentials=creds, policy=RetryPolicy(tries=2)) as t:
        with pytest.raises(AuthError) as info:
            await Client(t).get_manifest(reg.host, "private/app", "v1")
    e = info.value
    text = "".join(traceback.format_exception(e)) + repr(e) + str(e.hint) + repr(vars(e))
    text += repr(creds.get(reg.host))
    for bad in forbidden_strings(wrong):
        assert bad not in text
    assert "images.yaml" in str(e) and reg.host in str(e)


# -- Docker config.json details, without a network -----------------------------------------


def test_docker_hub_uses_the_historical_key(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    log = write_helper(tmp_path / "bin", "hub", "hubuser", SECRET)
    monkeypatch.setenv("PATH", with_path(tmp_path / "bin")["PATH"])
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    write_json(tmp_path / "docker/config.json", {
        "auths": {HUB_KEY: {"auth": b64("hubauth", SECRET)},
                  "ghcr.io": {"identitytoken": "idtok-" + SECRET}},
        "credHelpers": {"quay.io": "hub"}})
    store = CredentialStore()
    hub = store.get("docker.io")
    assert hub is not None and hub.username == "hubauth" and hub.password == SECRET
    assert store.get("index.docker.io") is hub
    gh = store.get("ghcr.io")
    assert gh is not None and gh.identity_token == "idtok-" + SECRET and not gh.username
    quay = store.get("quay.io")
    assert quay is not None and quay.username == "hubuser"
    assert log.read_text().split() == ["quay.io"]
    assert store.get("example.com") is None
    # a helper answering for Docker Hub is asked about the historical key
    write_json(tmp_path / "docker/config.json", {"credHelpers": {HUB_KEY: "hub"}})
    assert CredentialStore().get("docker.io").username == "hubuser"
    assert log.read_text().split()[-1] == HUB_KEY
    for cred in (hub, gh, quay):
        assert SECRET not in repr(cred) and SECRET not in str(cred)


def test_helper_token_username_means_identity_token(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    write_helper(tmp_path / "bin", "tok", "<token>", "refresh-" + SECRET)
    monkeypatch.setenv("PATH", with_path(tmp_path / "bin")["PATH"])
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    write_json(tmp_path / "docker/config.json", {"credsStore": "tok"})
    cred = CredentialStore().get("registry.example.com:5000")
    assert cred == Credential(identity_token="refresh-" + SECRET,
                              source="docker-credential-tok")


# -- the Bearer token flow against the real registry's auth.token ---------------------------


def private_only_for_users(user: str | None, rtype: str, name: str,
                           actions: list[str]) -> list[str]:
    if rtype != "repository" or name.startswith("denied/"):
        return []
    if name.startswith("ro/"):  # read-only for everyone
        return [a for a in actions if a == "pull"]
    if user:
        return list(actions)
    return [] if name.startswith("private/") else [a for a in actions if a == "pull"]


@contextlib.contextmanager
def bearer(token: str) -> Iterator[None]:
    """Make the raw-HTTP pusher send a Bearer token (to seed the token registry)."""
    orig = pusher._request

    def request(method: str, url: str, *, headers=None, **kw):  # type: ignore[no-untyped-def]
        return orig(method, url, headers={**(headers or {}), "Authorization": f"Bearer {token}"},
                    **kw)

    pusher._request = request
    try:
        yield
    finally:
        pusher._request = orig


@pytest.fixture(scope="module")
def tokens() -> Iterator[tuple[TokenServer, Registry, dict[str, ig.Image]]]:
    rng = random.Random("test_auth.tokens")
    ts = TokenServer(users={USER: SECRET}, identity_tokens={"idtok-" + SECRET: USER},
                     grant=private_only_for_users).start()
    reg = Registry(extra_config=ts.registry_config())
    try:
        reg.start()
        shared = ig.make_layer(rng, 3000)
        imgs = {"public/app": ig.make_image(rng, ig.AMD64, layers=[shared]),
                "private/app": ig.make_image(rng, ig.AMD64, layers=[shared]),
                "private/other": ig.make_image(rng, ig.ARM64, layers=[shared])}
        scopes = [f"repository:{r}:pull,push" for r in imgs]
        with bearer(ts.mint(scopes)):
            for repo, img in imgs.items():
                pusher.push_image(reg.url, repo, img, ["v1"])
        yield ts, reg, imgs
    finally:
        reg.stop()
        ts.stop()


@pytest.fixture
def ts(tokens) -> Iterator[TokenServer]:
    server = tokens[0]
    server.reset()
    server.expires_in, server.token_field, server.bad_tokens = 300, "token", 0
    server.fail_next, server.forbid_denied = 0, False
    yield server
    server.expires_in, server.token_field, server.bad_tokens = 300, "token", 0
    server.fail_next, server.forbid_denied = 0, False


def basic_config(tmp_path: Path, host: str, password: str = SECRET) -> dict[str, str]:
    write_json(tmp_path / "docker/config.json", {"auths": {host: {"auth": b64(USER, password)}}})
    return {"DOCKER_CONFIG": str(tmp_path / "docker")}


def test_bearer_anonymous_pull(tokens, ts: TokenServer, tmp_path: Path) -> None:
    _, reg, imgs = tokens
    proc = ok(pull(tmp_path, f"{reg.host}/public/app:v1"))
    assert pulled_digest(tmp_path) == imgs["public/app"].digest
    got = [(r.method, r.user, r.scopes) for r in ts.requests]
    assert got and all(r == ("GET", None, ["repository:public/app:pull"]) for r in got), got
    assert_no_secret(tmp_path, proc)
    # the report counts the token requests under the registry that asked for them
    counts = json.loads((tmp_path / "report.json").read_text())["requests"]
    assert counts[reg.host]["token"] == len(got), counts


def test_bearer_private_needs_credentials(tokens, ts: TokenServer, tmp_path: Path) -> None:
    _, reg, imgs = tokens
    ref = f"{reg.host}/private/app:v1"
    proc = pull(tmp_path, ref)
    assert proc.returncode == 4, proc.stderr
    assert reg.host in error_line(proc) and "docker login" in proc.stderr
    ts.reset()
    proc = ok(pull(tmp_path, ref, env=basic_config(tmp_path, reg.host)))
    assert pulled_digest(tmp_path) == imgs["private/app"].digest
    assert {(r.user, r.grant_type) for r in ts.requests} == {(USER, "basic")}
    assert ["repository:private/app:pull"] in ts.scopes_asked()
    assert_no_secret(tmp_path, proc)


@pytest.mark.parametrize("field", ["access_token", "both"])
def test_bearer_token_field_variants(tokens, ts: TokenServer, tmp_path: Path,
                                     field: str) -> None:
    _, reg, imgs = tokens
    ts.token_field = field
    ts.expires_in = None  # also: no expires_in at all (the default 60 s applies)
    ok(pull(tmp_path, f"{reg.host}/private/app:v1", env=basic_config(tmp_path, reg.host)))
    assert pulled_digest(tmp_path) == imgs["private/app"].digest


def test_bearer_identity_token_is_exchanged_by_post(tokens, ts: TokenServer,
                                                    tmp_path: Path) -> None:
    _, reg, imgs = tokens
    write_json(tmp_path / "docker/config.json",
               {"auths": {reg.host: {"auth": b64(USER, ""), "identitytoken": "idtok-" + SECRET}}})
    proc = ok(pull(tmp_path, f"{reg.host}/private/app:v1",
                   env={"DOCKER_CONFIG": str(tmp_path / "docker")}))
    assert pulled_digest(tmp_path) == imgs["private/app"].digest
    assert {(r.method, r.grant_type, r.user) for r in ts.requests} == {
        ("POST", "refresh_token", USER)}
    assert_no_secret(tmp_path, proc, "idtok-" + SECRET)


def test_bearer_wrong_password_exit_4(tokens, ts: TokenServer, tmp_path: Path) -> None:
    _, reg, _ = tokens
    wrong = "Wr0ng-" + SECRET[::-1]
    env = basic_config(tmp_path, reg.host, wrong)
    proc = pull(tmp_path, f"{reg.host}/private/app:v1", env=env)
    assert proc.returncode == 4, proc.stderr
    line = error_line(proc)
    assert reg.host in line and str(tmp_path / "docker/config.json") in line, line
    assert_no_secret(tmp_path, proc, wrong, SECRET)


def test_bearer_one_reauth_on_401(tokens, ts: TokenServer, tmp_path: Path) -> None:
    """A token the registry rejects (bad signature): fetch a new one once, then go on."""
    _, reg, imgs = tokens
    ts.bad_tokens = 1
    ok(pull(tmp_path, f"{reg.host}/private/app:v1", env=basic_config(tmp_path, reg.host)))
    assert pulled_digest(tmp_path) == imgs["private/app"].digest
    assert ts.scopes_asked()[:2] == [["repository:private/app:pull"]] * 2
    # always rejected: exactly one re-auth, then a clear exit 4
    ts.reset()
    ts.bad_tokens = 100
    proc = pull(tmp_path, f"{reg.host}/private/other:v1", env=basic_config(tmp_path, reg.host),
                out="other.tar")
    assert proc.returncode == 4, proc.stderr
    assert ts.scopes_asked() == [["repository:private/other:pull"]] * 2
    assert "private/other" in error_line(proc)


async def test_bearer_short_expires_in_is_refetched(tokens, ts: TokenServer) -> None:
    """expires_in 2 s: a token is reused while fresh and fetched again once it is not."""
    _, reg, imgs = tokens
    ts.expires_in = 2
    async with Transport() as t:
        client = Client(t)
        for _ in range(3):
            raw = await client.get_manifest(reg.host, "public/app", "v1")
        assert raw.digest == imgs["public/app"].digest
        assert len(ts.requests) == 1  # reused within its life
        await asyncio.sleep(1.5)  # past the 1 s we use a 2 s token for
        await client.get_manifest(reg.host, "public/app", "v1")
        assert len(ts.requests) == 2
    ts.reset()
    ts.expires_in = 300
    async with Transport() as t:
        client = Client(t)
        await client.get_manifest(reg.host, "public/app", "v1")
        await asyncio.sleep(1.5)
        await client.get_manifest(reg.host, "public/app", "v1")
        assert len(ts.requests) == 1


def test_bearer_load_push_scope_and_mount(tokens, ts: TokenServer, src_registry: Registry,
                                          repo_name: str, rng: random.Random,
                                          tmp_path: Path) -> None:
    """Load asks for pull,push; the second repository mounts the shared layer with one token
    holding its own scope and the source repository's pull."""
    _, reg, _ = tokens
    shared = ig.make_layer(rng, 5000)
    a = ig.make_image(rng, ig.AMD64, layers=[shared, ig.make_layer(rng, 1000)])
    b = ig.make_image(rng, ig.AMD64, layers=[shared, ig.make_layer(rng, 1000)])
    pusher.push_image(src_registry.url, f"{repo_name}/a", a, ["v1"])
    pusher.push_image(src_registry.url, f"{repo_name}/b", b, ["v1"])
    ok(cli(tmp_path, "pull", f"{src_registry.host}/{repo_name}/a:v1",
           f"{src_registry.host}/{repo_name}/b:v1", "-o", tmp_path / "ab.tar",
           "--cache", tmp_path / "cache"))
    env = basic_config(tmp_path, reg.host)
    proc = ok(cli(tmp_path, "load", tmp_path / "ab.tar", "--to", f"{reg.host}/mirrored",
                  "--report", tmp_path / "report.json", "-j", "1", env=env))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["blobs_mounted"] == 1, report
    dst_a, dst_b = f"mirrored/{repo_name}/a", f"mirrored/{repo_name}/b"
    asked = [sorted(s) for s in ts.scopes_asked()]
    assert [f"repository:{dst_a}:pull,push"] in asked or \
        [f"repository:{dst_b}:pull,push"] in asked, asked
    mount_scopes = [s for s in asked if len(s) == 2]
    assert mount_scopes, asked
    first, second = (dst_a, dst_b) if any(f"repository:{dst_a}:pull" in s
                                          for s in mount_scopes) else (dst_b, dst_a)
    assert sorted([f"repository:{second}:pull,push",
                   f"repository:{first}:pull"]) in mount_scopes, asked
    assert all(r.user == USER for r in ts.requests)
    with bearer(ts.mint([f"repository:{dst_a}:pull", f"repository:{dst_b}:pull"])):
        for repo, img in ((dst_a, a), (dst_b, b)):
            body, _, _ = pusher.get_manifest(reg.url, repo, "v1")
            assert ig.sha256_digest(body) == img.digest
            assert pusher.blob_exists(reg.url, repo, shared.digest)
    assert_no_secret(tmp_path, proc)


def test_bearer_token_server_hiccup_is_retried(tokens, ts: TokenServer,
                                               tmp_path: Path) -> None:
    _, reg, imgs = tokens
    ts.fail_next = 2
    ok(pull(tmp_path, f"{reg.host}/private/app:v1", "--retries", "2",
            env=basic_config(tmp_path, reg.host)))
    assert pulled_digest(tmp_path) == imgs["private/app"].digest
    assert json.loads((tmp_path / "report.json").read_text())["images"][0]["error"] is None


def _behind(ts: TokenServer, proxy_url: str, registry_factory, rng: random.Random,
            repo: str) -> tuple[Registry, ig.Image]:
    """A registry of its own whose token realm is the proxy in front of `ts`, holding an
    image at REPO:v1."""
    config = ts.registry_config()
    config["auth"]["token"]["realm"] = f"{proxy_url}/token"
    reg = registry_factory(extra_config=config)
    img = ig.make_image(rng, ig.AMD64, layer_size=1500)
    with bearer(ts.mint([f"repository:{repo}:pull,push"])):
        pusher.push_image(reg.url, repo, img, ["v1"])
    return reg, img


def test_token_server_503_is_retried_paused_logged_and_counted(
        tokens, ts: TokenServer, recproxy, registry_factory, rng: random.Random,
        tmp_path: Path) -> None:
    """The token server is one more host to the transport: its 503 with Retry-After is
    tried again after the pause it asks for (not the back-off's fraction of a second), on a
    -v retry line naming it, counted in the report's retries."""
    proxy: RecordingProxy = recproxy(ts.url)
    reg, img = _behind(ts, proxy.url, registry_factory, rng, "public/app")
    proxy.add(Fault("status", method="GET", path="/token", status=503,
                    headers={"Retry-After": "2"}))
    proc = ok(pull(tmp_path, f"{reg.host}/public/app:v1", "-v", "--retries", "2"))
    assert pulled_digest(tmp_path) == img.digest
    assert re.search(rf"retry GET http://{re.escape(proxy.host)}/token: HTTP 503; try 2 of 3 "
                     r"in 2\.0 s", proc.stderr), proc.stderr
    first, second = proxy.seen("GET", "/token")[:2]
    assert (first.status, second.status) == (503, 200)
    assert second.when - first.when >= 1.9
    assert json.loads((tmp_path / "report.json").read_text())["retries"] == 1


@pytest.mark.parametrize("answer,code", [("503", 3), ("500", 3), ("reset", 3), ("429", 6),
                                         ("401", 4), ("403", 4)])
def test_a_token_server_that_stays_unavailable_is_not_an_authentication_failure(
        ts: TokenServer, faultproxy, registry_factory, rng: random.Random, tmp_path: Path,
        answer: str, code: int) -> None:
    """A token server answering 5xx (or no answer) through every try is unavailable: exit 3,
    as a registry is, the line naming the token server and the tries, not exit 4, which sends
    the operator to credentials that are right; 429 through every try is exit 6 (README's
    exit codes); its 401 and 403 stay exit 4."""
    proxy = faultproxy(ts.url)
    reg, _ = _behind(ts, proxy.url, registry_factory, rng, "private/app")
    fault = proxy.add(Fault("reset", method="GET", path="/token", times=None)
                      if answer == "reset" else
                      Fault("status", method="GET", path="/token", status=int(answer),
                            times=None))
    proc = pull(tmp_path, f"{reg.host}/private/app:v1", "--retries", "2",
                env=basic_config(tmp_path, reg.host))
    assert proc.returncode == code, proc.stderr
    line = error_line(proc)
    assert f"the token server http://{proxy.host}" in line, line
    tries = fault.hits  # a reset: aiohttp tries a pooled connection once more itself
    if code == 4:
        assert tries == 1 and "(after" not in line, (tries, line)
    else:
        assert tries in ((3, 6) if answer == "reset" else (3,)), tries
        assert line.endswith("(after 3 tries)"), line
        assert "credentials" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out.tar").exists()
    assert_no_secret(tmp_path, proc)


def test_bearer_one_token_per_scope_set(tokens, ts: TokenServer, tmp_path: Path) -> None:
    """Several blobs, one token: tokens are cached per scope set, not fetched per request."""
    _, reg, _ = tokens
    ok(pull(tmp_path, f"{reg.host}/private/other:v1", env=basic_config(tmp_path, reg.host)))
    assert ts.scopes_asked() == [["repository:private/other:pull"]]


@pytest.mark.parametrize("status", [400, 502])
def test_a_secret_the_server_echoes_back_is_never_shown(basic, faultproxy, tmp_path: Path,
                                                       status: int) -> None:
    """A registry or proxy that puts the request's Authorization (or the password) in its
    error message: the message is shown, with the secrets blanked out, in every output."""
    reg, _, _ = basic
    proxy = faultproxy(reg.url)
    echoed = json.dumps({"errors": [{"code": "PROXY", "message": (
        f"upstream refused; request had Authorization: Basic {b64(USER, SECRET)} "
        f"password {SECRET}")}]}).encode()
    proxy.add(Fault("status", method="GET", path="/manifests/", status=status, body=echoed,
                    times=None))
    proc = pull(tmp_path, f"{proxy.host}/private/app:v1", "--retries", "0", "-v",
                env=basic_config(tmp_path, proxy.host))
    assert proc.returncode == 3, proc.stderr
    assert "PROXY" in proc.stderr and "upstream refused" in proc.stderr, proc.stderr
    assert "***" in error_line(proc)
    assert_no_secret(tmp_path, proc)


# -- refused access is not a wrong password --------------------------------------------------


def authfile_for(tmp_path: Path, host: str, password: str = SECRET) -> Path:
    return write_json(tmp_path / "auth.json", {"auths": {host: {"auth": b64(USER, password)}}})


@pytest.mark.parametrize("forbid", [False, True], ids=["insufficient_scope", "token-403"])
def test_refused_pull_scope_is_access_denied(tokens, ts: TokenServer, tmp_path: Path,
                                             forbid: bool) -> None:
    """Good credentials, a repository they may not pull: the registry's 401 with
    error="insufficient_scope" (or the token server's 403) is "access denied", not "the
    credentials were rejected"; the server's own words are kept."""
    _, reg, _ = tokens
    ts.forbid_denied = forbid
    auth = authfile_for(tmp_path, reg.host)
    proc = pull(tmp_path, f"{reg.host}/denied/app:v1", "--authfile", auth)
    assert proc.returncode == 4, proc.stderr
    line = error_line(proc)
    assert "access denied" in line and "rejected" not in line, line
    assert reg.host in line and "denied/app" in line and "pull" in line, line
    if forbid:
        assert "requested access to the resource is denied" in line, line
    assert "check the username" not in proc.stderr
    assert "pull rights on denied/app" in proc.stderr, proc.stderr
    assert_no_secret(tmp_path, proc)
    # the same credentials still pull what they may, and a wrong password is still that
    ok(pull(tmp_path, f"{reg.host}/private/app:v1", "--authfile", auth))
    wrong = "Wr0ng-" + SECRET[::-1]
    proc = pull(tmp_path, f"{reg.host}/denied/app:v1", "--authfile",
                authfile_for(tmp_path, reg.host, wrong))
    assert proc.returncode == 4, proc.stderr
    assert "rejected the credentials" in error_line(proc)
    assert "check the username and password" in proc.stderr
    assert_no_secret(tmp_path, proc, wrong)


@pytest.mark.parametrize("forbid", [False, True], ids=["insufficient_scope", "token-403"])
def test_refused_push_is_access_denied(tokens, ts: TokenServer, src_registry: Registry,
                                       repo_name: str, rng: random.Random, tmp_path: Path,
                                       forbid: bool) -> None:
    """A read-only account loading into a repository: "access denied ... push"."""
    _, reg, _ = tokens
    img = ig.make_image(rng, ig.AMD64, layer_size=1500)
    pusher.push_image(src_registry.url, repo_name, img, ["v1"])
    ok(cli(tmp_path, "pull", f"{src_registry.host}/{repo_name}:v1", "-o", tmp_path / "pub.tar",
           "--cache", tmp_path / "cache"))
    ts.forbid_denied = forbid
    proc = cli(tmp_path, "load", tmp_path / "pub.tar", "--to", f"{reg.host}/ro",
               "--authfile", authfile_for(tmp_path, reg.host))
    assert proc.returncode == 4, proc.stderr
    line = error_line(proc)
    assert "access denied" in line and "rejected" not in line, line
    assert reg.host in line and f"ro/{repo_name}" in line and "push" in line, line
    assert f"push rights on ro/{repo_name}" in proc.stderr, proc.stderr
    assert "check the username" not in proc.stderr and "images.yaml" not in proc.stderr
    assert_no_secret(tmp_path, proc)


def test_verbose_lists_token_fetches_without_the_token(tokens, ts: TokenServer,
                                                       tmp_path: Path) -> None:
    """-v: each token fetch names the realm host and the scope, never the token."""
    _, reg, _ = tokens
    proc = ok(pull(tmp_path, f"{reg.host}/private/app:v1", "-v",
                   env=basic_config(tmp_path, reg.host)))
    realm = ts.registry_config()["auth"]["token"]["realm"].rsplit("/", 1)[0]
    assert f"token from {realm} for repository:private/app:pull -> 200 (" in proc.stderr, \
        proc.stderr
    assert f"GET http://{reg.host}/v2/private/app/manifests/v1 -> 200 (" in proc.stderr
    assert "eyJ" not in proc.stderr  # no JWT (they all start with the base64 of `{"`)
    assert_no_secret(tmp_path, proc)


@pytest.mark.parametrize("command", ["pull", "load"])
@pytest.mark.parametrize("what", ["missing", "directory"])
def test_authfile_that_cannot_be_read_is_a_usage_error(tokens, ts: TokenServer, tmp_path: Path,
                                                       command: str, what: str) -> None:
    """A named --authfile that is not there is exit 2 before any network work, not a silent
    anonymous run (exit 0 for a public image, or "no credentials found")."""
    _, reg, _ = tokens
    bad = tmp_path / "nope.json"
    if what == "directory":
        bad.mkdir()
    if command == "pull":
        proc = pull(tmp_path, f"{reg.host}/public/app:v1", "--authfile", bad)
    else:
        bundle = tmp_path / "b.tar"
        bundle.write_bytes(b"")
        proc = cli(tmp_path, "load", bundle, "--to", f"{reg.host}/x", "--authfile", bad)
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc)
    assert f"--authfile {bad}" in line, line
    assert ts.requests == [] and not (tmp_path / "out.tar").exists()


def test_load_hints_name_no_images_yaml(basic, src_registry: Registry, repo_name: str,
                                        rng: random.Random, tmp_path: Path) -> None:
    """load reads no images.yaml: its hints say docker login / --authfile only; pull's
    still offer the `registries:` entry."""
    reg, ref, _ = basic
    img = ig.make_image(rng, ig.AMD64, layer_size=1500)
    pusher.push_image(src_registry.url, repo_name, img, ["v1"])
    ok(cli(tmp_path, "pull", f"{src_registry.host}/{repo_name}:v1", "-o", tmp_path / "b.tar",
           "--cache", tmp_path / "cache"))
    proc = cli(tmp_path, "load", tmp_path / "b.tar", "--to", f"{reg.host}/copy")
    assert proc.returncode == 4, proc.stderr
    assert reg.host in error_line(proc)
    assert f"docker login {reg.host}" in proc.stderr and "--authfile" in proc.stderr
    assert "images.yaml" not in proc.stderr, proc.stderr
    proc = pull(tmp_path, ref)
    assert proc.returncode == 4 and "images.yaml" in proc.stderr, proc.stderr


def test_relative_password_file_is_taken_from_the_yaml_directory(basic, tmp_path: Path) -> None:
    """`cd sub; mirror pull -f ../conf/images.yaml` with `password_file: pw.txt` reads
    conf/pw.txt (as docker-compose resolves paths); a missing one is exit 2 naming the path
    and images.yaml:LINE before any network work."""
    reg, ref, img = basic
    conf, sub = tmp_path / "conf", tmp_path / "sub"
    conf.mkdir()
    sub.mkdir()
    (conf / "pw.txt").write_text(SECRET + "\n")
    yml = conf / "images.yaml"
    yml.write_text(f"version: 1\nregistries:\n  {reg.host}:\n    username: {USER}\n"
                   f"    password_file: pw.txt\nimages:\n  - {ref}\n")
    out = ("-o", tmp_path / "out.tar", "--cache", tmp_path / "cache")
    proc = ok(cli(tmp_path, "pull", "-f", "../conf/images.yaml", *out, cwd=sub))
    assert pulled_digest(tmp_path) == img.digest
    assert_no_secret(tmp_path, proc)
    (conf / "pw.txt").unlink()
    proc = cli(tmp_path, "pull", "-f", "../conf/images.yaml", *out, cwd=sub)
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc)
    assert f"{yml.parent.name}/images.yaml:5" in line and str(conf / "pw.txt") in line, line


def test_a_refused_load_counts_no_retry_it_did_not_make(basic, src_registry: Registry,
                                                         repo_name: str, rng: random.Random,
                                                         tmp_path: Path) -> None:
    """A load with no credentials stopped at the first 401 (exit 4), but the blob checks still
    in flight then hit the closed connection pool and were logged and counted as retries
    ('Connector is closed.; try 2 of 5'; the report's retries 3). Nothing was tried again:
    no retry line and retries 0."""
    reg, _, _ = basic
    imgs = [ig.make_image(rng, p, "oci", layer_size=1500) for p in (ig.AMD64, ig.ARM64)]
    pusher.push_image(src_registry.url, repo_name, ig.make_index(imgs, "oci"), ["v1"])
    ok(cli(tmp_path, "pull", f"{src_registry.host}/{repo_name}:v1", "-o", tmp_path / "b.tar",
           "--cache", tmp_path / "cache"))
    for _ in range(3):  # the in-flight requests race the first 401: give them a few chances
        proc = cli(tmp_path, "load", tmp_path / "b.tar", "--to", f"{reg.host}/copy", "-v",
                   "--report", tmp_path / "r.json")
        assert proc.returncode == 4, proc.stderr
        assert "Connector is closed" not in proc.stderr, proc.stderr
        assert not [ln for ln in proc.stderr.splitlines() if " retry " in ln], proc.stderr
        assert json.loads((tmp_path / "r.json").read_text())["retries"] == 0


def test_basic_sync_within_one_registry_mounts(basic, tmp_path: Path) -> None:
    """htpasswd (Basic: no scopes): a sync to its source's own registry mounts each blob
    from the source repository, nothing uploaded."""
    reg, ref, img = basic
    ok(cli(tmp_path, "sync", ref, "--to", f"{reg.host}/within", "--report",
           tmp_path / "report.json", env=basic_config(tmp_path, reg.host)))
    done = json.loads((tmp_path / "report.json").read_text())["targets"][0]
    assert (done["blobs_mounted"], done["blobs_pushed"]) == (len(img.all_blobs()), 0), done


def test_bearer_sync_within_one_registry_mounts_with_the_source_pull_scope(
        tokens, ts: TokenServer, tmp_path: Path) -> None:
    """A sync to its source's own registry (token auth, as distribution's) mounts each blob
    from the source repository: the mount's token holds the target repository's pull,push
    and the source repository's pull, and the registry mounts with it (nothing uploaded)."""
    _, reg, imgs = tokens
    env = basic_config(tmp_path, reg.host)
    ok(cli(tmp_path, "sync", f"{reg.host}/private/app:v1", "--to", f"{reg.host}/within",
           "--report", tmp_path / "report.json", env=env))
    done = json.loads((tmp_path / "report.json").read_text())["targets"][0]
    blobs = len(imgs["private/app"].all_blobs())
    assert (done["blobs_mounted"], done["blobs_pushed"]) == (blobs, 0), done
    asked = [sorted(s) for s in ts.scopes_asked()]
    assert ["repository:private/app:pull", "repository:within/private/app:pull,push"] \
        in asked, asked
    with bearer(ts.mint(["repository:within/private/app:pull"])):
        body, _, _ = pusher.get_manifest(reg.url, "within/private/app", "v1")
    assert ig.sha256_digest(body) == imgs["private/app"].digest
