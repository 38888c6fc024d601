"""mirror.malloc: fixed glibc malloc thresholds (fewer page faults per GiB pulled)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))


def _tune(env: dict[str, str]) -> str:
    code = "import mirror.malloc as m; print(m.tune())"
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env},
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_thresholds_are_set_on_glibc() -> None:
    assert _tune({}) == "True"


@pytest.mark.skipif(not GLIBC, reason="glibc only")
@pytest.mark.parametrize("env", [{"MALLOC_ARENA_MAX": "2"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}])
def test_a_user_who_tunes_malloc_is_left_alone(env: dict[str, str]) -> None:
    assert _tune(env) == "False"
