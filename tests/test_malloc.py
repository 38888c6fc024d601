"""mirror.malloc: fixed glibc malloc thresholds (fewer page faults per GiB pulled)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):  # musl: no such name
        return False


GLIBC = _glibc() and sys.maxsize > 2**32

# What a download does to the heap: a megabyte of 256 KiB chunks arrives, is hashed and
# written, and is freed; again and again. Prints the page faults it took.
CHURN = """
import resource, sys
import mirror.malloc as m
tuned = m.tune() if sys.argv[1] == "tune" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    chunks = [bytes(256 << 10) for _ in range(4)]
    del chunks
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(code: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    return subprocess.run([sys.executable, "-c", code, *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, check=True).stdout.split()


def test_tuned_thresholds_stop_the_fault_churn() -> None:
    """Without them glibc gives the freed megabyte back and faults it in again each round
    (about 256 faults a round); with them the pages stay. Wrong mallopt constants would
    leave the churn as it is. Elsewhere (musl) tune() is a no-op and says so."""
    tuned, faults = _run(CHURN, "tune")
    untuned, churn = _run(CHURN, "leave")
    if not _glibc():
        assert (tuned, untuned) == ("False", "False")
        return
    assert (tuned, untuned) == ("True", "False")
    if not GLIBC:  # 32-bit: the same calls, but the churn's figures are the 64-bit heap's
        return
    assert int(churn) > 200 * 100, churn  # the pattern does churn here
    assert int(faults) < int(churn) // 10, (faults, churn)


@pytest.mark.parametrize("env", [{"MALLOC_ARENA_MAX": "2"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}])
def test_a_user_who_tunes_malloc_is_left_alone(env: dict[str, str]) -> None:
    assert _run("import mirror.malloc as m; print(m.tune())", env=env) == ["False"]
