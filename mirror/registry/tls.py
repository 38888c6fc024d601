"""The client's TLS contexts, and aiohttp imported without loading the system's CAs twice.

aiohttp makes two SSL contexts when it is imported (`aiohttp.connector`'s verified and
unverified defaults), each loading the system's CA file: 2 x 20 ms of every run, plain-HTTP
runs (a registry on the local network) included, and a sixth of a rerun with nothing new.
Our requests never use them: every request to an HTTPS URL is given a context of ours
(`verified()`, made once, on the first HTTPS request; one with `ca_file` or a client
certificate; or False, insecure, where aiohttp's unverified default checks nothing and
needs no CA). So `import_aiohttp()` imports aiohttp with OpenSSL's `SSL_CERT_FILE` and
`SSL_CERT_DIR` pointed at nothing, and puts back what the user had (a CA bundle given that
way is read by `verified()`, as OpenSSL documents). aiohttp's verified default then holds
no CA: used by mistake, it would fail verification, never pass it."""

from __future__ import annotations

import os
import ssl
import sys
import threading

_NOWHERE = {"SSL_CERT_FILE": os.devnull, "SSL_CERT_DIR": os.path.join(os.devnull, "none")}
_lock = threading.Lock()
_verified: ssl.SSLContext | None = None
_making: threading.Thread | None = None


def import_aiohttp() -> None:
    """Import aiohttp (once a process; a no-op when something imported it already)."""
    if "aiohttp" in sys.modules:
        return
    saved = {k: os.environ.get(k) for k in _NOWHERE}
    os.environ.update(_NOWHERE)
    try:
        import aiohttp  # noqa: F401
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def prepare() -> None:
    """Start making the verified context in a thread (OpenSSL lets go of the GIL while it
    reads the CAs): the CLI does so as soon as aiohttp is imported, for a command that talks
    to registries (a transport when it opens, too), and the 20 ms pass beside the run's
    imports and set-up, not in its first request (which, to a registry that may speak plain
    HTTP, tries HTTPS first). Not a daemon: a run that ends first (an error at once) waits for it, for
    a daemon thread still in OpenSSL when the process exits is crashed by OpenSSL's cleanup
    (SIGSEGV instead of the run's exit code)."""
    global _making
    with _lock:
        if _verified is None and _making is None:
            _making = threading.Thread(target=_make, name="mirror-tls")
            _making.start()


def _make() -> None:
    global _verified
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(("http/1.1",))
    with _lock:
        if _verified is None:
            _verified = ctx


def verified() -> ssl.SSLContext:
    """The system's CAs (`SSL_CERT_FILE`/`SSL_CERT_DIR` where set), hostnames checked: one
    context for the run's every host that has no TLS settings of its own."""
    if _verified is None:
        making = _making
        if making is not None:
            making.join()
        if _verified is None:  # not prepared, or the thread failed: here, raising if it must
            _make()
    assert _verified is not None
    return _verified
