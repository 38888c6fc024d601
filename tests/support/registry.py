"""Run the real CNCF registry (Debian `docker-registry` 2.8) on 127.0.0.1 for tests.

Needs on the machine: the `docker-registry` apt package (binary /usr/bin/docker-registry),
the pip package `bcrypt` (htpasswd entries; distribution only accepts bcrypt hashes) and
`cryptography` (test CA and server certificate). A missing binary raises RuntimeError:
registry tests fail, they never skip.

    with Registry(htpasswd=("user", "pw"), tls=True) as reg:
        reg.url, reg.host, reg.ca_path, reg.storage, reg.log_path

`extra_config` is deep-merged into the generated config.yml last, e.g. `{"auth": {"token":
{...}}}` for the token flow, `{"middleware": {"storage": [...]}}` for blob redirects, or
`{"http": {"tls": {"clientcas": [...]}}}` for client certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

BINARY = "docker-registry"
START_TIMEOUT = 15.0


def free_port() -> int:
    """A TCP port that was free a moment ago (the registry may still lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _htpasswd_line(user: str, password: str) -> str:
    import bcrypt  # pip package `bcrypt`; openssl passwd cannot make bcrypt hashes

    # cost 5 keeps every authenticated request cheap on a loaded 2-core machine
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    return f"{user}:{hashed}\n"


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """Write ca.pem, server.pem and server.key (CA-signed, SAN 127.0.0.1 and localhost)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=7)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("mirror test CA"))
        .issuer_name(name("mirror test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (directory / n for n in ("ca.pem", "server.pem", "server.key"))
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    """Deep-merge `extra` into `base` (mappings merge, anything else replaces)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


class Registry:
    """One `docker-registry serve` process with its own temp storage, port and config."""

    def __init__(
        self,
        *,
        htpasswd: tuple[str, str] | None = None,
        tls: bool = False,
        urls_allow: list[str] | None = None,
        extra_config: dict[str, Any] | None = None,
        start_timeout: float = START_TIMEOUT,
        env: dict[str, str] | None = None,
    ) -> None:
        self.htpasswd = htpasswd
        self.env = env
        self.extra_config = extra_config
        self.tls = tls
        self.urls_allow = urls_allow
        self.start_timeout = start_timeout
        self.port = 0
        self.host = ""
        self.url = ""
        self.ca_path: Path | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    # -- paths, valid once start() has run ----------------------------------------------
    @property
    def root(self) -> Path:
        assert self._tmp is not None, "registry not started"
        return Path(self._tmp.name)

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    @property
    def auth(self) -> tuple[str, str] | None:
        return self.htpasswd

    def ssl_context(self) -> ssl.SSLContext | None:
        """An SSLContext trusting this registry's CA (None for plain HTTP)."""
        if self.ca_path is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_path))

    # -- lifecycle ------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": "mirror-tests-fixed-secret"},
        }
        if self.htpasswd is not None:
            path = self.root / "htpasswd"
            path.write_text(_htpasswd_line(*self.htpasswd))
            cfg["auth"] = {"htpasswd": {"realm": "mirror-tests", "path": str(path)}}
        if self.tls:
            ca, cert, key = make_tls_files(self.root)
            self.ca_path = ca
            cfg["http"]["tls"] = {"certificate": str(cert), "key": str(key)}
        if self.urls_allow is not None:
            cfg["validation"] = {"manifests": {"urls": {"allow": list(self.urls_allow)}}}
        if self.extra_config:
            _merge(cfg, self.extra_config)
        return cfg

    def start(self) -> Registry:
        """Start the registry; return once `GET /v2/` answers 200 or 401.

        Raises RuntimeError (with the log tail) if the binary is missing, the process dies or
        it does not answer within `start_timeout` seconds. Retries a lost port race twice.
        """
        binary = shutil.which(BINARY)
        if binary is None:
            raise RuntimeError(
                f"{BINARY} not found on PATH: install the Debian package `docker-registry`"
            )
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mirror-registry-")
        self.storage.mkdir(exist_ok=True)
        for attempt in range(3):
            self.port = free_port()
            self.host = f"127.0.0.1:{self.port}"
            self.url = f"{'https' if self.tls else 'http'}://{self.host}"
            config_path = self.root / "config.yml"
            config_path.write_text(yaml.safe_dump(self._config(), sort_keys=False))
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
            self._proc = subprocess.Popen(
                [binary, "serve", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=None if self.env is None else {**os.environ, **self.env},
            )
            try:
                self._wait_ready()
                return self
            except RuntimeError:
                self._terminate()
                if attempt < 2 and "address already in use" in self.log_tail():
                    continue
                raise
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        ctx = self.ssl_context()
        last: object = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"docker-registry exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=5, context=ctx) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as err:
                err.close()
                if err.code == 401:
                    return
                last = err
            except (OSError, ssl.SSLError) as err:
                last = err
            time.sleep(0.05)  # polling interval, not a timing assumption
        raise RuntimeError(
            f"docker-registry at {self.url} not ready after {self.start_timeout}s "
            f"(last: {last!r}):\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Terminate the process, wait for it and delete its temp directory."""
        self._terminate()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Registry({self.url or 'not started'})"


def catalog(reg: Registry) -> list[str]:
    """The registry's /v2/_catalog, every page (distribution answers 100 names a page
    unless asked for more: a shared test registry holds more than that)."""
    import json
    import urllib.request

    out: list[str] = []
    url: str | None = f"{reg.url}/v2/_catalog?n=1000"
    while url:
        with urllib.request.urlopen(url) as r:
            out += json.load(r)["repositories"] or []
            link = r.headers.get("Link")
        url = f"{reg.url}{link.split(';')[0].strip('<> ')}" if link else None
    return out
