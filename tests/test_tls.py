"""Issue 3, TLS: the real registry over TLS with a CA the test makes. Verification fails
without the CA (exit 3, a hint about --ca-file) and passes with it, given on the command line
or in images.yaml; --insecure-registry skips verification; the same flags serve `mirror load`
targets; a registry that requires client certificates gets one with --client-cert.
"""

from __future__ import annotations

import contextlib
import datetime
import random
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import imagegen as ig
from tests.support.oracle import (
    ROOT,
    check_layout,
    error_line,
    mirror_cmd,
    mirror_env,
    ok,
    run,
    run_mirror,
)
from tests.support.pusher import get_manifest, push_image
from tests.support.registry import Registry


def cli(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_mirror(*args, timeout=timeout)


def pull(tmp_path: Path, *args: object, out: str = "out.tar") -> subprocess.CompletedProcess[str]:
    return cli("pull", *args, "-o", tmp_path / out, "--cache", tmp_path / "cache", "-q")


def digest_of(bundle: Path) -> str:
    [entry] = check_layout(bundle).index["manifests"]
    return entry["digest"]


@pytest.fixture
def tls_image(registry_factory: Callable[..., Registry], repo_name: str,
              rng: random.Random) -> tuple[Registry, str, ig.Image]:
    reg = registry_factory(tls=True)
    img = ig.make_image(rng, ig.AMD64, "oci", layer_size=1500)
    push_image(reg.url, repo_name, img, ["v1"], cafile=str(reg.ca_path))
    return reg, f"{reg.host}/{repo_name}:v1", img


def test_pull_tls_without_ca_fails_with_a_hint(tls_image, tmp_path: Path) -> None:
    reg, ref, _ = tls_image
    proc = pull(tmp_path, ref)
    assert proc.returncode == 3, proc.stderr
    line = error_line(proc)
    assert reg.host in line and "certificate" in line, line
    assert f"--ca-file {reg.host}=" in proc.stderr
    assert not (tmp_path / "out.tar").exists()


def test_pull_tls_with_ca_flag(tls_image, tmp_path: Path) -> None:
    reg, ref, img = tls_image
    ok(pull(tmp_path, ref, "--ca-file", f"{reg.host}={reg.ca_path}"))
    assert digest_of(tmp_path / "out.tar") == img.digest


def test_pull_tls_with_ca_in_images_yaml(tls_image, tmp_path: Path) -> None:
    reg, ref, img = tls_image
    yml = tmp_path / "images.yaml"
    yml.write_text(f"version: 1\nregistries:\n  {reg.host}:\n    ca_file: {reg.ca_path}\n"
                   f"images:\n  - {ref}\n")
    ok(pull(tmp_path, "-f", yml))
    assert digest_of(tmp_path / "out.tar") == img.digest


def test_relative_ca_file_is_taken_from_the_yaml_directory(tls_image, tmp_path: Path) -> None:
    """`ca_file: certs/ca.pem` is next to images.yaml, wherever mirror runs from; a missing
    one is exit 2 naming the resolved path and images.yaml:LINE."""
    reg, ref, img = tls_image
    (tmp_path / "conf/certs").mkdir(parents=True)
    (tmp_path / "sub").mkdir()
    (tmp_path / "conf/certs/ca.pem").write_bytes(reg.ca_path.read_bytes())
    yml = tmp_path / "conf/images.yaml"
    yml.write_text(f"version: 1\nregistries:\n  {reg.host}:\n    ca_file: certs/ca.pem\n"
                   f"images:\n  - {ref}\n")
    args = ("pull", "-f", "../conf/images.yaml", "-o", tmp_path / "out.tar", "--cache",
            tmp_path / "cache", "-q")
    ok(run_mirror(*args, cwd=tmp_path / "sub"))
    assert digest_of(tmp_path / "out.tar") == img.digest
    (tmp_path / "conf/certs/ca.pem").unlink()
    proc = run_mirror(*args, cwd=tmp_path / "sub")
    assert proc.returncode == 2, proc.stderr
    line = error_line(proc)
    assert "images.yaml:4" in line and str(tmp_path / "conf/certs/ca.pem") in line, line


def test_pull_tls_insecure_registry_skips_verification(tls_image, tmp_path: Path) -> None:
    reg, ref, img = tls_image
    ok(pull(tmp_path, ref, "--insecure-registry", reg.host))
    assert digest_of(tmp_path / "out.tar") == img.digest


def test_the_system_trust_store_is_read_as_openssl_says(tls_image, tmp_path: Path) -> None:
    """A CA given the OpenSSL way (`SSL_CERT_FILE`, as a site's CA bundle often is) verifies
    the registry with no flag: mirror.registry.tls imports aiohttp with that variable pointed
    elsewhere (its import-time contexts load no CA) and must put it back for the run's own."""
    reg, ref, img = tls_image
    env = {**mirror_env(), "SSL_CERT_FILE": str(reg.ca_path)}
    ok(run(mirror_cmd("pull", ref, "-o", tmp_path / "out.tar", "--cache", tmp_path / "c",
                      "-q"), cwd=ROOT, env=env, timeout=120))
    assert digest_of(tmp_path / "out.tar") == img.digest


def test_aiohttps_import_time_contexts_load_no_ca(tls_image) -> None:
    """What a run imports leaves aiohttp's two import-time SSL contexts without CAs (2 x 20 ms
    of every run's start saved) and the environment as it was; the run's own verified
    context has the CA the environment names."""
    reg, _, _ = tls_image
    code = ("import os; before = dict(os.environ)\n"
            "import mirror.cli, mirror.pull_run, mirror.sync_run, mirror.load_run\n"
            "import aiohttp.connector as c\n"
            "from mirror.registry import tls\n"
            "assert dict(os.environ) == before\n"
            "print(c._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca'],"
            " tls.verified().cert_store_stats()['x509_ca'])\n")
    env = {**mirror_env(), "SSL_CERT_FILE": str(reg.ca_path)}
    proc = run([sys.executable, "-c", code], cwd=ROOT, env=env, timeout=60)
    assert proc.returncode == 0 and proc.stdout.split() == ["0", "1"], proc


def test_a_run_that_ends_at_once_waits_for_its_tls_context(tmp_path: Path) -> None:
    """The verified context is made in a thread when a transport opens; a run that ends
    before it is made (a bad bundle: load exits 10 at once) must wait for it. As a daemon
    thread it was still inside OpenSSL while the process exited, and OpenSSL's exit-time
    cleanup crashed it: `mirror load` of a file that is no bundle exited 139 (SIGSEGV) in
    most runs instead of 10. Made slow here, so a thread the exit does not wait for never
    gets to say it finished."""
    junk, done = tmp_path / "junk.001", tmp_path / "made"
    junk.write_bytes(b"not a bundle")
    code = ("import ssl, sys, time\n"
            "import mirror.registry  # aiohttp's own contexts made: only ours is slowed\n"
            "make = ssl.create_default_context\n"
            "def slow(*a, **k):\n"
            "    time.sleep(1)\n"
            "    ctx = make(*a, **k)\n"
            f"    open({str(done)!r}, 'w').close()\n"
            "    return ctx\n"
            "ssl.create_default_context = slow\n"
            "from mirror.cli import main\n"
            f"sys.exit(main(['load', {str(junk)!r}, '--to', '127.0.0.1:9', '-q']))\n")
    proc = run([sys.executable, "-c", code], cwd=ROOT, env=mirror_env(), timeout=60)
    assert proc.returncode == 10, proc.stderr
    assert done.exists()


def test_pull_ca_file_that_does_not_exist(tls_image, tmp_path: Path) -> None:
    reg, ref, _ = tls_image
    proc = pull(tmp_path, ref, "--ca-file", f"{reg.host}={tmp_path / 'nope.pem'}")
    assert proc.returncode == 2, proc.stderr
    assert "nope.pem" in error_line(proc) and reg.host in error_line(proc)


@contextlib.contextmanager
def forwarder(bind: str, target_port: int) -> Iterator[int]:
    """Plain TCP from `bind`:PORT to 127.0.0.1:target_port: the same TLS server reached by
    an address its certificate does not name."""
    srv = socket.socket()
    srv.bind((bind, 0))
    srv.listen()

    def pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def relay(conn: socket.socket, up: socket.socket) -> None:
        """Both directions, then both sockets closed (left to the collector, they were
        found unclosed, a ResourceWarning, in whatever test ran then)."""
        with conn, up:
            both = [threading.Thread(target=pipe, args=ab, daemon=True)
                    for ab in ((conn, up), (up, conn))]
            for t in both:
                t.start()
            for t in both:
                t.join()

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = srv.accept()
                up = socket.create_connection(("127.0.0.1", target_port))
                threading.Thread(target=relay, args=(conn, up), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


def test_wrong_certificate_name_with_the_right_ca(tls_image, tmp_path: Path) -> None:
    """The CA is given and trusted; the address is not in the certificate: say so, not
    "give the registry's CA"."""
    reg, ref, _ = tls_image
    with forwarder("127.0.0.2", reg.port) as port:
        host = f"127.0.0.2:{port}"
        proc = pull(tmp_path, ref.replace(reg.host, host), "--ca-file", f"{host}={reg.ca_path}")
    assert proc.returncode == 3, proc.stderr
    assert host in error_line(proc) and "certificate" in error_line(proc)
    assert "--ca-file" not in proc.stderr, proc.stderr
    assert "the certificate is not valid for 127.0.0.2" in proc.stderr, proc.stderr
    assert "127.0.0.2 in subjectAltName" in proc.stderr


def test_load_to_tls_target(registry_factory: Callable[..., Registry],
                            src_registry: Registry, repo_name: str, rng: random.Random,
                            tmp_path: Path) -> None:
    img = ig.make_image(rng, ig.ARM64, "docker", layer_size=1500)
    push_image(src_registry.url, repo_name, img, ["v1"])
    ok(pull(tmp_path, f"{src_registry.host}/{repo_name}:v1", out="b.tar"))
    bundle = tmp_path / "b.tar"
    dst = registry_factory(tls=True)
    proc = cli("load", bundle, "--to", f"{dst.host}/a")
    assert proc.returncode == 3, proc.stderr
    assert dst.host in error_line(proc) and f"--ca-file {dst.host}=" in proc.stderr
    assert "images.yaml" not in proc.stderr, "load reads no images.yaml"
    proc = cli("load", bundle, "--to", f"{dst.host}/a", "--ca-file", f"{dst.host}=nope.pem")
    assert proc.returncode == 2 and "images.yaml" not in proc.stderr, proc.stderr
    ok(cli("load", bundle, "--to", f"{dst.host}/a", "--ca-file", f"{dst.host}={dst.ca_path}"))
    ok(cli("load", bundle, "--to", f"{dst.host}/b", "--insecure-registry", dst.host))
    for prefix in ("a", "b"):
        body, _, _ = get_manifest(dst.url, f"{prefix}/{repo_name}", "v1",
                                  cafile=str(dst.ca_path))
        assert ig.sha256_digest(body) == img.digest


def make_client_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A client CA, and a client certificate (clientAuth) and key it signed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("mirror test client CA"))
          .issuer_name(name("mirror test client CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=7))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("mirror test client"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "client-ca.pem", directory / "client.pem", directory / "client.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.mark.slow
def test_client_certificate(registry_factory: Callable[..., Registry], repo_name: str,
                            rng: random.Random, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """http.tls.clientcas: without a client certificate the pull fails (exit 3, naming the
    registry); with --client-cert HOST=CERT,KEY it works."""
    client_ca, cert, key = make_client_cert(tmp_path)
    orig = ssl.create_default_context

    def with_client_cert(*a, **kw):  # type: ignore[no-untyped-def]
        ctx = orig(*a, **kw)
        ctx.load_cert_chain(cert, key)
        return ctx

    # the fixture's readiness probe and the pusher present the client certificate too
    monkeypatch.setattr(ssl, "create_default_context", with_client_cert)
    reg = registry_factory(tls=True, extra_config={"http": {"tls": {"clientcas": [
        str(client_ca)]}}})
    img = ig.make_image(rng, ig.AMD64, "oci", layer_size=1500)
    push_image(reg.url, repo_name, img, ["v1"], cafile=str(reg.ca_path))
    monkeypatch.undo()
    ref = f"{reg.host}/{repo_name}:v1"
    ca = f"{reg.host}={reg.ca_path}"
    proc = pull(tmp_path, ref, "--ca-file", ca)
    assert proc.returncode == 3, proc.stderr
    assert reg.host in error_line(proc) and "TLS" in error_line(proc)
    assert "--client-cert" in proc.stderr
    ok(pull(tmp_path, ref, "--ca-file", ca, "--client-cert", f"{reg.host}={cert},{key}"))
    assert digest_of(tmp_path / "out.tar") == img.digest
    yml = tmp_path / "images.yaml"
    yml.write_text(f"registries:\n  {reg.host}:\n    ca_file: {reg.ca_path}\n"
                   f"    client_cert: {cert}\n    client_key: {key}\nimages: [{ref}]\n")
    ok(pull(tmp_path, "-f", yml, out="yaml.tar"))
    assert digest_of(tmp_path / "yaml.tar") == img.digest
