"""The run's HTTP session and TLS per registry: the base of mirror.registry.transport.

One aiohttp session per run with connect and read-inactivity timeouts but no total timeout
(a multi-GB layer must not be cut), no transparent decompression (REFERENCE.md 9), no
`trust_env` (it would send ~/.netrc credentials). TLS per registry: verified with the system
CAs, the system CAs plus `ca_file` (and a client certificate), or none when insecure; the
hints that name the file the command reads. The state is made by `Transport.__init__`.
"""

from __future__ import annotations

import ssl
from typing import Self

import aiohttp
import yarl

from mirror.errors import ConfigError
from mirror.registry import tls
from mirror.registry.endpoint import Endpoint
from mirror.registry.policy import RegistrySettings, Timeouts
from mirror.registry.ratelimit import SMALL_MOST


class SessionSetup:
    """The session (an async context manager) and the TLS settings of each host."""

    config_file: str | None
    settings: dict[str, RegistrySettings]
    timeouts: Timeouts
    jobs: int
    _endpoints: dict[str, Endpoint]
    _ssl_cache: dict[str, ssl.SSLContext | bool]
    _session: aiohttp.ClientSession | None

    def login_hint(self, registry: str) -> str:
        """How to give credentials for `registry` (images.yaml only where the command reads
        one)."""
        if not self.config_file:
            return f"run `docker login {registry}` or pass --authfile"
        return (f"run `docker login {registry}`, pass --authfile, or add it under "
                f"`registries:` in {self.config_file}")

    def in_yaml(self, text: str) -> str:
        """`text` (an images.yaml alternative, with its separator) where there is one, naming
        the file the command reads."""
        return text.replace("images.yaml", self.config_file) if self.config_file else ""

    async def __aenter__(self) -> Self:
        tls.prepare()
        most = SMALL_MOST + self.jobs  # what a registry's limiter may grow to (ratelimit)
        connector = aiohttp.TCPConnector(limit=most * 2, limit_per_host=most)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=self.timeouts.connect, sock_read=self.timeouts.read),
            auto_decompress=False,
            trust_env=False,
            read_bufsize=256 << 10,  # per connection; memory must not grow with jobs
            max_field_size=65536,
            max_line_size=65536,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Transport used outside `async with`"
        return self._session

    def _settings(self, registry: str) -> RegistrySettings:
        return self.settings.get(registry) or RegistrySettings()

    def _ssl(self, registry: str) -> ssl.SSLContext | bool:
        """Verified TLS by default (`tls.verified()`: the system CAs, one context a run); the
        system CAs plus `ca_file`; False only when insecure. Never True: aiohttp's own
        verified context holds no CA (mirror.registry.tls)."""
        if registry in self._ssl_cache:
            return self._ssl_cache[registry]
        s = self._settings(registry)
        ctx: ssl.SSLContext | bool
        if s.insecure and not s.ca_file:
            ctx = False
        elif not s.ca_file and not s.client_cert:
            ctx = tls.verified()
        else:
            ctx = ssl.create_default_context()
            what = "ca_file"
            try:
                if s.ca_file:
                    ctx.load_verify_locations(cafile=s.ca_file)
                if s.client_cert:
                    what = "client certificate"
                    ctx.load_cert_chain(s.client_cert, s.client_key)
            except (OSError, ssl.SSLError) as e:
                path = s.ca_file if what == "ca_file" else s.client_cert
                raise ConfigError(
                    f"{registry}: cannot use the {what} {path}: "
                    f"{getattr(e, 'strerror', None) or e}",
                    hint="check the path given with --ca-file/--client-cert"
                    + self.in_yaml(f" or in `registries: {registry}:` of images.yaml")
                    ) from None
        self._ssl_cache[registry] = ctx
        return ctx

    def ssl_for_url(self, url: str) -> ssl.SSLContext | bool:
        """TLS settings for a host we are sent to (a token realm, object storage): that
        host's own settings when it has some, else verified TLS with the system CAs."""
        u = yarl.URL(url)
        host = url_host(u)
        for key in (f"{host}:{u.port}", host):
            if key in self.settings or key in self._endpoints:
                return self._ssl(key)
        return self._ssl("")


def url_host(u: yarl.URL) -> str:
    """The host of `u` as a registry is named (an IPv6 address in brackets), without port."""
    host = u.host or ""
    return f"[{host}]" if ":" in host else host
