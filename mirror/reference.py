"""Image references, parsed and normalised as Docker does.

`alpine` -> `docker.io/library/alpine:latest`; `localhost:5000/team/app:1.2`;
`ghcr.io/org/app:1.0@sha256:...` (tag and digest together: the digest wins, the tag is kept
as a label). Docker Hub's API host is `registry-1.docker.io`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from mirror.digest import Digest
from mirror.errors import IntegrityError, InvalidReference

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?$"
)


def _is_registry(component: str) -> bool:
    return (
        "." in component
        or ":" in component
        or component == "localhost"
        or component != component.lower()
    )


def is_bare_tag(name: str) -> bool:
    """A bundle's ref name that is a tag only (`v2`, as skopeo writes for
    oci-archive:FILE:TAG): it names no repository, so a load puts it in --to's."""
    return bool(_TAG.match(name)) and "/" not in name and ":" not in name


def registry_problem(host: str) -> str | None:
    """What makes `host` (HOST[:PORT]) no registry address, or None: an empty host, a bad
    name, a port that is not 1-65535 (aiohttp would fail on the URL with a traceback)."""
    if not host:
        return "no registry host before the '/'"
    if not _HOST.match(host):
        return "bad registry" if host.partition(":")[0] else "no host before the port"
    port = host.rsplit("]", 1)[-1].rpartition(":")[2] if ":" in host.rsplit("]", 1)[-1] else ""
    if port and not 0 < int(port) < 65536:
        return f"port {port} is not 1-65535"
    return None


def normalize_registry(host: str) -> str:
    host = host.lower()
    if host in ("index.docker.io", "registry-1.docker.io"):
        return DOCKER_HUB
    return host


def api_host(registry: str) -> str:
    """The host:port the HTTP API is reached at (Docker Hub's differs from its name)."""
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


def is_loopback(registry: str) -> bool:
    """localhost and 127.0.0.0/8 and ::1 may speak plain HTTP without any setting (as Docker)."""
    host = registry
    if host.startswith("["):
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Reference:
    """registry + repository + (tag and/or digest). `str()` gives back a parseable full form."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Raise InvalidReference naming the text and what is wrong with it."""
        original = text
        text = text.strip()
        if not text:
            raise InvalidReference("empty image reference")
        if "://" in text:
            raise InvalidReference(
                f"invalid reference {original!r}: no scheme is allowed",
                hint="write registry.example.com/repo:tag, not https://...",
            )
        digest = None
        if "@" in text:
            text, _, digest = text.partition("@")
            try:
                Digest.parse(digest)
            except IntegrityError as e:
                raise InvalidReference(f"invalid reference {original!r}: {e}") from None
        tag = None
        slash = text.rfind("/")
        colon = text.rfind(":")
        if colon > slash:
            text, tag = text[:colon], text[colon + 1 :]
            if not _TAG.match(tag):
                raise InvalidReference(f"invalid reference {original!r}: bad tag {tag!r}")
        first, sep, rest = text.partition("/")
        if sep and _is_registry(first):
            registry, path = first, rest
            why = registry_problem(registry)
            if why is not None:
                raise InvalidReference(f"invalid reference {original!r}: {why} ({first!r})")
        elif not sep and (text == "localhost" or "." in text):
            # `localhost:5000`, `127.0.0.1:5000`, `registry.example.com`: Docker would read
            # docker.io/library/localhost:5000 (tag 5000), which is never what was meant
            host = f"{text}:{tag}" if tag and tag.isdigit() else text
            raise InvalidReference(
                f"invalid reference {original!r}: {host!r} is a registry, with no repository",
                hint=f"write {host}/REPOSITORY[:TAG]")
        else:
            registry, path = DOCKER_HUB, text
        registry = normalize_registry(registry)
        if registry == DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        if not _PATH.match(path):
            why = "repository names must be lowercase" if path != path.lower() else "bad repository"
            raise InvalidReference(f"invalid reference {original!r}: {why} {path!r}")
        if len(f"{registry}/{path}") > 255:
            raise InvalidReference(f"invalid reference {original!r}: name longer than 255")
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(registry, path, tag, digest)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def ref(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, None)

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, None, digest)

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s
