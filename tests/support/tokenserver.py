"""A registry token server (distribution token.md and oauth.md) for tests, plus a tiny
"object storage" server that blob redirects can point at.

TokenServer signs ES256 JWTs the way docker distribution 2.8 verifies them: the header carries
`x5c` with a self-signed certificate that is also the registry's `rootcertbundle`, the claims
carry `iss`, `aud` (the service), `exp`/`nbf`/`iat` and an `access` list. Plug it into the
real registry with `registry_factory(extra_config=ts.registry_config())`.

    ts = TokenServer(users={"alice": "pw"}, anonymous_pull=True).start()
    reg = registry_factory(extra_config=ts.registry_config())
    ...; ts.requests  # what was asked: method, scopes, user, grant type
    ts.stop()

Knobs: `expires_in` (None: left out of the answer), `token_field` ("token", "access_token" or
"both"), `identity_tokens` (refresh token -> user, for the OAuth2 POST form), `bad_tokens` (the
next N tokens get a broken signature, so the registry answers 401), `fail_next` (the next N GETs
answer 503), `grant` (a policy function). Wrong Basic credentials or an unknown refresh token
get 401 with a JSON body. `forbid_denied` answers 403 with a DENIED error ("requested access to
the resource is denied", as Harbor and Docker Hub say) instead of a token lacking the access,
when the grant refuses an action that was asked for. `mint(scopes)` makes a token directly, for seeding the registry.

StorageServer serves files from a directory (the registry's storage root) by path, records
the headers of every request, and can answer 403 to the next N GETs (an expired presigned URL).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

SERVICE = "mirror-tests-registry"
ISSUER = "mirror-tests-issuer"

Grant = Callable[[str | None, str, str, list[str]], list[str]]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenRequest:
    method: str
    scopes: list[str]
    user: str | None  # None: anonymous
    grant_type: str  # "basic", "anonymous", "refresh_token", "password"
    when: float = field(default_factory=time.monotonic)


def parse_scope(scope: str) -> tuple[str, str, list[str]]:
    """`repository:team/app:pull,push` -> (type, name, actions); names may hold `host:port`."""
    rtype, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return rtype, name, [a for a in actions.split(",") if a]


def default_grant(user: str | None, rtype: str, name: str, actions: list[str]) -> list[str]:
    """Users get what they ask for; anonymous callers get `pull` only."""
    if rtype != "repository":
        return []
    return list(actions) if user else [a for a in actions if a == "pull"]


class _Thread:
    """An aiohttp app on 127.0.0.1 (or `host`) served from a background thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.bind = host
        self.host = ""
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def _app(self) -> web.Application:
        raise NotImplementedError

    def start(self) -> Any:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=type(self).__name__)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._astart(), self._loop).result(timeout=30)
        return self

    async def _astart(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.bind, 0, shutdown_timeout=1)
        await site.start()
        port = self._runner.addresses[0][1]
        self.host = f"{self.bind}:{port}"
        self.url = f"http://{self.host}"

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if self._runner is not None:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TokenServer(_Thread):
    def __init__(
        self,
        *,
        users: dict[str, str] | None = None,
        identity_tokens: dict[str, str] | None = None,
        anonymous_pull: bool = True,
        expires_in: int | None = 300,
        token_field: str = "token",
        grant: Grant | None = None,
        directory: Path | str | None = None,
    ) -> None:
        super().__init__()
        self.users = dict(users or {})
        self.identity_tokens = dict(identity_tokens or {})
        self.anonymous_pull = anonymous_pull
        self.expires_in = expires_in
        self.token_field = token_field
        self.grant = grant or default_grant
        self.bad_tokens = 0
        self.fail_next = 0  # answer that many requests with 503 (a token server hiccup)
        self.forbid_denied = False  # 403 instead of a token without the refused access
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._dir = Path(directory) if directory else None
        self._tmp: Any = None
        self.cert_path = Path()
        self._key: Any = None
        self._cert_der = b""

    # -- keys --------------------------------------------------------------------------------
    def _make_key(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        if self._dir is None:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="mirror-tokenserver-")
            self._dir = Path(self._tmp.name)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mirror test token signer")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.cert_path = self._dir / "token-signer.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def sign(self, claims: dict[str, Any], *, broken: bool = False) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        header = {"typ": "JWT", "alg": "ES256",
                  "x5c": [base64.b64encode(self._cert_der).decode()]}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        if broken:
            sig = bytes([sig[0] ^ 0xFF]) + sig[1:]
        return signing_input + "." + _b64url(sig)

    def mint(self, scopes: list[str], user: str = "seeder", lifetime: int = 600) -> str:
        """A valid token for `scopes` made directly (not recorded): for seeding the registry
        with the raw-HTTP pusher."""
        now = int(time.time())
        access = []
        for scope in scopes:
            rtype, name, actions = parse_scope(scope)
            access.append({"type": rtype, "name": name, "actions": actions})
        return self.sign({"iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + lifetime,
                          "nbf": now - 1, "iat": now, "jti": secrets.token_hex(8),
                          "access": access})

    def registry_config(self) -> dict[str, Any]:
        """The `auth.token` section for the registry (pass as `extra_config`)."""
        return {"auth": {"token": {"realm": f"{self.url}/token", "service": SERVICE,
                                   "issuer": ISSUER, "rootcertbundle": str(self.cert_path)}}}

    def start(self) -> TokenServer:
        self._make_key()
        return super().start()

    def stop(self) -> None:
        super().stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- queries from the test ---------------------------------------------------------------
    def scopes_asked(self) -> list[list[str]]:
        with self._lock:
            return [list(r.scopes) for r in self.requests]

    def reset(self) -> None:
        with self._lock:
            self.requests = []

    # -- the server --------------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self._get)
        app.router.add_post("/token", self._post)
        return app

    @staticmethod
    def _deny(message: str) -> web.Response:
        body = {"errors": [{"code": "UNAUTHORIZED", "message": message}]}
        return web.json_response(body, status=401,
                                 headers={"WWW-Authenticate": 'Basic realm="token"'})

    def _issue(self, user: str | None, scopes: list[str], service: str, method: str,
               grant_type: str, oauth: bool) -> web.Response:
        with self._lock:
            self.requests.append(TokenRequest(method, scopes, user, grant_type))
            broken = self.bad_tokens > 0
            if broken:
                self.bad_tokens -= 1
        access = []
        for scope in scopes:
            rtype, name, actions = parse_scope(scope)
            granted = self.grant(user, rtype, name, actions)
            if self.forbid_denied and set(actions) - set(granted):
                body = {"errors": [{"code": "DENIED",
                                    "message": "requested access to the resource is denied"}]}
                return web.json_response(body, status=403)
            if granted:
                access.append({"type": rtype, "name": name, "actions": granted})
        now = int(time.time())
        lifetime = self.expires_in if self.expires_in is not None else 60
        claims = {"iss": ISSUER, "sub": user or "", "aud": service or SERVICE,
                  "exp": now + lifetime, "nbf": now - 1, "iat": now,
                  "jti": secrets.token_hex(8), "access": access}
        token = self.sign(claims, broken=broken)
        doc: dict[str, Any] = {}
        if oauth or self.token_field in ("access_token", "both"):
            doc["access_token"] = token
        if not oauth and self.token_field in ("token", "both"):
            doc["token"] = token
        if self.expires_in is not None:
            doc["expires_in"] = self.expires_in
        doc["issued_at"] = datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat()
        if oauth:
            doc["scope"] = " ".join(scopes)
        return web.json_response(doc)

    def _hiccup(self) -> bool:
        with self._lock:
            fail = self.fail_next > 0
            if fail:
                self.fail_next -= 1
        return fail

    async def _get(self, request: web.Request) -> web.Response:
        if self._hiccup():
            return web.json_response({"errors": [{"code": "UNAVAILABLE"}]}, status=503)
        scopes = request.query.getall("scope", [])
        service = request.query.get("service", "")
        header = request.headers.get("Authorization", "")
        user: str | None = None
        if header.startswith("Basic "):
            try:
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return self._deny("malformed Basic credentials")
            if self.users.get(name) != password:
                with self._lock:
                    self.requests.append(TokenRequest("GET", scopes, name, "denied"))
                return self._deny("invalid username or password")
            user = name
        elif not self.anonymous_pull:
            with self._lock:
                self.requests.append(TokenRequest("GET", scopes, None, "denied"))
            return self._deny("authentication required")
        return self._issue(user, scopes, service, "GET", "basic" if user else "anonymous",
                           oauth=False)

    async def _post(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant_type = str(form.get("grant_type", ""))
        scopes = [s for s in str(form.get("scope", "")).split(" ") if s]
        service = str(form.get("service", ""))
        if not form.get("client_id"):
            return web.json_response({"error": "invalid_request",
                                      "error_description": "client_id required"}, status=400)
        if grant_type == "refresh_token":
            user = self.identity_tokens.get(str(form.get("refresh_token", "")))
        elif grant_type == "password":
            name = str(form.get("username", ""))
            user = name if self.users.get(name) == str(form.get("password", "")) else None
        else:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if user is None:
            with self._lock:
                self.requests.append(TokenRequest("POST", scopes, None, "denied"))
            return self._deny("invalid grant")
        return self._issue(user, scopes, service, "POST", grant_type, oauth=True)


@dataclass
class StorageRequest:
    method: str
    path: str
    headers: dict[str, str]
    status: int


class StorageServer(_Thread):
    """Serves `root/<path>` for GET and HEAD (with Range), as object storage behind a redirect.

    Bind it to another loopback address (127.0.0.2) so it is another host, not just another
    port. `expire_next` answers 403 (an expired signature) to that many GETs.
    """

    def __init__(self, root: Path | str | None = None, host: str = "127.0.0.2") -> None:
        super().__init__(host)
        self.root = Path(root) if root else None
        self.expire_next = 0
        self.requests: list[StorageRequest] = []
        self.bytes_served = 0
        self._lock = threading.Lock()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def _log(self, request: web.Request, status: int) -> None:
        with self._lock:
            self.requests.append(StorageRequest(request.method, request.path,
                                                dict(request.headers), status))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            self._log(request, 405)
            return web.Response(status=405)
        with self._lock:
            expire = request.method == "GET" and self.expire_next > 0
            if expire:
                self.expire_next -= 1
        if expire:
            self._log(request, 403)
            return web.Response(status=403, content_type="application/xml",
                                text="<Error><Code>AccessDenied</Code>"
                                "<Message>Request has expired</Message></Error>")
        assert self.root is not None, "StorageServer.root not set"
        path = (self.root / request.path.lstrip("/")).resolve()
        if not path.is_relative_to(self.root.resolve()) or not path.is_file():
            self._log(request, 404)
            return web.Response(status=404)
        data = path.read_bytes()
        status, headers = 200, {"Content-Type": "application/octet-stream"}
        rng = request.headers.get("Range", "")
        if rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            data, status = data[start:], 206
        self._log(request, status)
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return web.Response(status=status, headers=headers)
        with self._lock:
            self.bytes_served += len(data)
        return web.Response(status=status, body=data, headers=headers)
