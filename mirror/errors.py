"""The error tree and the exit codes, in one place.

    MirrorError                      exit 1   anything else we anticipated
    ├── UsageError                   exit 2   bad command line
    ├── ConfigError                  exit 2   images.yaml: names file:line and the key
    ├── InvalidReference             exit 2
    ├── InvalidPlatform              exit 2
    ├── RegistryError                exit 3   carries registry, repository, HTTP status, OCI codes
    │   ├── AuthError                exit 4   401/403, bad or missing credentials
    │   ├── NotFound                 exit 5   tag, manifest, blob or repository unknown
    │   └── RateLimited              exit 6   429 / 503 after the retry budget
    │       └── BudgetSpent          exit 14  a registry's requests for this run are spent
    │                                         (max_requests_per_run, or RateLimit-Remaining 0
    │                                         for longer than --max-wait): images wait
    ├── IntegrityError               exit 7   bytes that do not match their digest or size
    │   ├── DigestMismatch
    │   └── SizeMismatch
    ├── NoMatchingPlatform           exit 8   lists the platforms the image does have
    ├── UnsupportedContent           exit 9   schema 1, unconvertible content
    ├── BundleError                  exit 10  not a tar, no oci-layout, unsafe member, missing blob,
    │                                         trailing data, a malformed digest, an inventory
    │                                         (mirror.json) that does not match the bundle
    ├── IncompleteBase               exit 11  an incremental bundle's blobs are not at the target
    └── LockHeld                     exit 12  another run holds the lock
    PartialSuccess (not an error class): exit 13, `--keep-going` with some images failed;
    exit 14 too when the images that failed wait for a registry's rate limit (BudgetSpent).
    Interrupted: exit 130 on SIGINT (Ctrl-C), 143 on SIGTERM (mirror.signals), after the same
    cleanup.

`str(err)` is one line naming the image, registry or file; `err.hint` is an optional second line.
Library code raises; only `mirror.cli` turns errors into exit codes.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PARTIAL = 13
EXIT_RATE_LIMITED_PARTIAL = 14

EXIT_CODES: dict[str, int] = {
    "success": 0,
    "error": 1,
    "usage": 2,
    "registry": 3,
    "auth": 4,
    "not-found": 5,
    "rate-limited": 6,
    "integrity": 7,
    "no-matching-platform": 8,
    "unsupported": 9,
    "bundle": 10,
    "incomplete-base": 11,
    "lock-held": 12,
    "partial": 13,
    "rate-limited-partial": 14,
    "interrupted": 130,
    "terminated": 143,
    "stdout-closed": 141,
}


class MirrorError(Exception):
    """Base of every error the tool anticipates."""

    exit_code = EXIT_CODES["error"]

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(MirrorError):
    exit_code = EXIT_CODES["usage"]


class ConfigError(MirrorError):
    exit_code = EXIT_CODES["usage"]


class InvalidReference(MirrorError):
    exit_code = EXIT_CODES["usage"]


class InvalidPlatform(MirrorError):
    exit_code = EXIT_CODES["usage"]


class RegistryError(MirrorError):
    """A registry answered with an error, or could not be reached."""

    exit_code = EXIT_CODES["registry"]

    def __init__(
        self,
        message: str,
        *,
        registry: str = "",
        repository: str = "",
        status: int | None = None,
        codes: tuple[str, ...] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.registry = registry
        self.repository = repository
        self.status = status
        self.codes = codes


class AuthError(RegistryError):
    exit_code = EXIT_CODES["auth"]


class NotFound(RegistryError):
    exit_code = EXIT_CODES["not-found"]


class RateLimited(RegistryError):
    exit_code = EXIT_CODES["rate-limited"]


class BudgetSpent(RateLimited):
    """No request left for a registry in this run: the images that need one wait for the
    next run, the others finish."""

    exit_code = EXIT_CODES["rate-limited-partial"]
    unasked = 0  # a tag rule's candidates whose times it left unasked (mirror.created)
    candidates = 0  # of how many
    # a push's source blobs left unread (digest -> why), each image waiting for its own
    unread: dict[str, BudgetSpent] | None = None


class IntegrityError(MirrorError):
    exit_code = EXIT_CODES["integrity"]


class DamagedInTransit(IntegrityError):
    """Bytes a registry (or a foreign layer's URL) sent for a blob that do not match its
    digest or size: another GET may bring the right ones. A sync's upload of the blob starts
    over once, in a new session (mirror.registry.upload), as a pull fetches a blob once more
    (mirror.fetch); a bundle's bytes, read again, would be the same."""


class ManifestLost(IntegrityError):
    """A manifest a run released to the cache's store (RawManifest.release) is no longer
    there when read back: `digest` can be fetched again from its registry."""

    def __init__(self, message: str, digest: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.digest = digest


class DigestMismatch(IntegrityError):
    def __init__(self, expected: str, actual: str, source: str) -> None:
        super().__init__(f"{source}: digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual
        self.source = source


class SizeMismatch(IntegrityError):
    def __init__(self, expected: int, actual: int, source: str, digest: str = "") -> None:
        what = f" {digest}" if digest else ""
        super().__init__(f"{source}:{what} size mismatch: expected {expected} bytes, got {actual}")
        self.expected = expected
        self.actual = actual
        self.source = source


class NoMatchingPlatform(MirrorError):
    exit_code = EXIT_CODES["no-matching-platform"]

    def __init__(self, message: str, *, hint: str | None = None,
                 available: list[str] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.available = available or []  # the platforms there are (for a caller's own line)


class UnsupportedContent(MirrorError):
    exit_code = EXIT_CODES["unsupported"]


class BundleError(MirrorError):
    exit_code = EXIT_CODES["bundle"]


class IncompleteBase(MirrorError):
    exit_code = EXIT_CODES["incomplete-base"]


class LockHeld(MirrorError):
    exit_code = EXIT_CODES["lock-held"]


def naming(e: OSError, path: object) -> OSError:
    """`e` with the file it is about (os.pwrite and friends don't say): the CLI's one line
    then names the bundle or cache file that could not be written."""
    if e.filename is not None:
        return e
    named = OSError(e.errno, e.strerror, str(path))
    named.__cause__ = e.__cause__
    return named
