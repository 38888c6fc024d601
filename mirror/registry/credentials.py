"""Credentials from where users already keep them; secrets never leave this module in text.

Lookup order for a registry host (first hit wins):
  1. the images.yaml `registries.<host>` entry (`username` + `password_env` / `password_file`);
  2. `--authfile FILE` (Docker config.json or containers auth.json format);
  3. containers auth.json: `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`;
  4. Docker config.json (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).
In each file: `credHelpers[host]` (the only source when present), then `credsStore` (a
store that is not installed counts as empty), then `auths` (`auth` = base64 user:password,
`identitytoken`, `registrytoken`, or `username`/`password`) (REFERENCE.md 7.4). Helpers run as
`docker-credential-<name> get`. Docker Hub's key is `https://index.docker.io/v1/`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mirror import secrets
from mirror.errors import AuthError, ConfigError, UsageError
from mirror.reference import DOCKER_HUB

HUB_KEY = "https://index.docker.io/v1/"


@dataclass(frozen=True, slots=True)
class Credential:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # OAuth2 refresh token (Docker's `identitytoken`)
    registry_token: str = ""  # a ready bearer token
    source: str = ""  # where it came from, for messages (never the secret)

    def __post_init__(self) -> None:  # whatever prints a line blanks these out
        secrets.remember(self.password, self.identity_token, self.registry_token,
                         self.basic if self.password else "")

    def __repr__(self) -> str:  # never print secrets, even in a traceback
        return f"Credential(username={self.username!r}, source={self.source!r})"

    @property
    def basic(self) -> str:
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def _host_of_key(key: str) -> str:
    k = key
    for prefix in ("https://", "http://"):
        if k.startswith(prefix):
            k = k[len(prefix):]
    k = k.split("/", 1)[0]
    if k in ("index.docker.io", "registry-1.docker.io", "docker.io"):
        return DOCKER_HUB
    return k.lower()


def _helper_key(registry: str) -> str:
    return HUB_KEY if registry == DOCKER_HUB else registry


def _run_helper(name: str, registry: str) -> Credential | None:
    prog = f"docker-credential-{name}"
    try:
        proc = subprocess.run(
            [prog, "get"], input=_helper_key(registry).encode(), capture_output=True, timeout=60
        )
    except FileNotFoundError:
        raise AuthError(
            f"{registry}: credential helper {prog!r} is configured but not on PATH",
            registry=registry,
        ) from None
    except subprocess.TimeoutExpired:
        raise AuthError(f"{registry}: credential helper {prog!r} timed out", registry=registry)
    if proc.returncode != 0:
        if b"credentials not found" in proc.stdout + proc.stderr:
            return None
        raise AuthError(
            f"{registry}: credential helper {prog!r} failed (exit {proc.returncode})",
            registry=registry,
        )
    try:
        out = json.loads(proc.stdout)
        user, secret = str(out.get("Username", "")), str(out.get("Secret", ""))
    except (ValueError, AttributeError):
        raise AuthError(f"{registry}: credential helper {prog!r} printed no JSON") from None
    if user == "<token>":
        return Credential(identity_token=secret, source=prog)
    return Credential(username=user, password=secret, source=prog)


def _from_auth_entry(entry: dict, source: str) -> Credential | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("identitytoken"):
        return Credential(identity_token=str(entry["identitytoken"]), source=source)
    if entry.get("registrytoken"):
        return Credential(registry_token=str(entry["registrytoken"]), source=source)
    if entry.get("auth"):
        try:
            user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(f"{source}: invalid base64 'auth' entry") from None
        return Credential(username=user, password=pw, source=source)
    if entry.get("username"):
        return Credential(str(entry["username"]), str(entry.get("password", "")), source=source)
    return None


def _from_config_file(path: Path, registry: str, *, helpers: bool) -> Credential | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read credentials file: {e}") from None
    if not isinstance(doc, dict):
        return None
    if helpers:
        cred_helpers = doc.get("credHelpers") or {}
        helper = cred_helpers.get(_helper_key(registry)) or next(
            (v for k, v in cred_helpers.items() if _host_of_key(k) == registry), None)
        if helper:  # a helper named for this registry is the only source (as docker does)
            return _run_helper(str(helper), registry)
        if doc.get("credsStore"):  # the default store for every registry, when it has it
            try:
                cred = _run_helper(str(doc["credsStore"]), registry)
            except AuthError:
                if shutil.which(f"docker-credential-{doc['credsStore']}"):
                    raise
                cred = None  # e.g. "desktop" on a machine without Docker Desktop
            if cred:
                return cred
    for key, entry in (doc.get("auths") or {}).items():
        if _host_of_key(key) == registry:
            cred = _from_auth_entry(entry, str(path))
            if cred:
                return cred
    return None


@dataclass
class RegistryLogin:
    """A per-registry entry of images.yaml: the secret stays in the environment or a file.
    `where`: the file:line of the key naming the secret (of `username` when there is none),
    for messages."""

    username: str = ""
    password_env: str = ""
    password_file: str = ""
    where: str = "images.yaml"

    @property
    def source(self) -> str:
        """Where the credential came from (never the secret): `env.yaml (password from $VAR
        named in env.yaml:12)`."""
        file = self.where.rsplit(":", 1)[0] if self.where[-1:].isdigit() else self.where
        if self.password_env:
            return f"{file} (password from ${self.password_env} named in {self.where})"
        if self.password_file:
            return f"{file} (password from {self.password_file} named in {self.where})"
        return f"{file} (username at {self.where}, no password)"

    def resolve(self, registry: str) -> Credential:
        if self.password_env:
            pw = os.environ.get(self.password_env)
            if pw is None:
                raise AuthError(
                    f"{registry}: environment variable {self.password_env} (password_env in "
                    f"{self.where}) is not set", registry=registry)
        elif self.password_file:
            try:
                pw = Path(self.password_file).expanduser().read_text().rstrip("\r\n")
            except OSError as e:
                raise AuthError(f"{registry}: cannot read password_file {self.password_file} "
                                f"(named in {self.where}): {e.strerror}",
                                registry=registry) from None
        else:
            pw = ""
        return Credential(self.username, pw, source=self.source)


class CredentialStore:
    """Finds the credential for a registry host; caches per host for the run."""

    def __init__(self, logins: dict[str, RegistryLogin] | None = None,
                 authfile: str | None = None) -> None:
        self.logins = {_host_of_key(k): v for k, v in (logins or {}).items()}
        self.authfile = Path(authfile).expanduser() if authfile else None
        if self.authfile is not None:  # a file given by name must be there: checked up front
            try:
                with open(self.authfile, "rb"):
                    pass
            except OSError as e:
                raise UsageError(f"--authfile {authfile}: cannot read it: "
                                 f"{e.strerror or e}") from None
        self._cache: dict[str, Credential | None] = {}

    def _files(self) -> list[tuple[Path, bool]]:
        files: list[tuple[Path, bool]] = []
        if self.authfile:
            files.append((self.authfile, True))
        # containers-auth.json(5) has the same `auths` and may name `credHelpers` too
        if os.environ.get("REGISTRY_AUTH_FILE"):
            files.append((Path(os.environ["REGISTRY_AUTH_FILE"]), True))
        if os.environ.get("XDG_RUNTIME_DIR"):
            files.append((Path(os.environ["XDG_RUNTIME_DIR"]) / "containers/auth.json", True))
        docker_dir = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
        files.append((Path(docker_dir) / "config.json", True))
        return files

    def get(self, registry: str) -> Credential | None:
        registry = _host_of_key(registry)
        if registry not in self._cache:
            self._cache[registry] = self._lookup(registry)
        return self._cache[registry]

    def _lookup(self, registry: str) -> Credential | None:
        if registry in self.logins:
            return self.logins[registry].resolve(registry)
        for path, helpers in self._files():
            cred = _from_config_file(path, registry, helpers=helpers)
            if cred:
                return cred
        env = os.environ.get("DOCKER_AUTH_CONFIG")
        if env:  # recent docker/cli: a config.json `auths` object in the environment
            try:
                doc = json.loads(env)
            except ValueError:
                raise ConfigError("DOCKER_AUTH_CONFIG is not valid JSON") from None
            for key, entry in ((doc or {}).get("auths") or {}).items():
                if _host_of_key(key) == registry:
                    cred = _from_auth_entry(entry, "DOCKER_AUTH_CONFIG")
                    if cred:
                        return cred
        return None
