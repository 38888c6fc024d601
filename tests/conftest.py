"""Shared fixtures: real registries, unique repo names, seeded rng, fault proxies, async tests.

`async def` tests run under `asyncio.run` via `pytest_pyfunc_call` (no pytest-asyncio); their
fixtures stay synchronous.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.oracle import run
from tests.support.registry import Registry


def pytest_configure(config: pytest.Config) -> None:
    """The suite runs where its oracles do (Debian's docker-registry, skopeo, dockerd,
    containerd, podman; Linux's /proc): elsewhere it stops at once instead of skipping."""
    if not sys.platform.startswith("linux"):
        raise pytest.UsageError(f"the tests need Linux (the registry, skopeo, the runtimes "
                                f"and /proc are Linux's), not {sys.platform}")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run coroutine test functions with asyncio.run (trio-style hook)."""
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    asyncio.run(func(**kwargs))
    return True


@pytest.fixture(scope="session")
def src_registry() -> Iterator[Registry]:
    """A plain-HTTP registry shared by the whole session (use `repo_name` to stay apart)."""
    with Registry() as reg:
        yield reg


@pytest.fixture(scope="session")
def dst_registry() -> Iterator[Registry]:
    """A second plain-HTTP registry, the usual load target."""
    with Registry() as reg:
        yield reg


@pytest.fixture
def registry_factory() -> Iterator[Callable[..., Registry]]:
    """`registry_factory(htpasswd=..., tls=..., urls_allow=...)` starts a registry for this
    test only; all of them are stopped at teardown."""
    started: list[Registry] = []

    def factory(**options: Any) -> Registry:
        reg = Registry(**options)
        started.append(reg)
        return reg.start()

    yield factory
    for reg in reversed(started):
        reg.stop()


@pytest.fixture
def repo_name(request: pytest.FixtureRequest) -> str:
    """A repository name unique to this test, valid per the distribution name grammar."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"test/{base or 't'}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A Random seeded from the test's node id: stable per test, different across tests."""
    return random.Random(request.node.nodeid)


@pytest.fixture
def faultproxy() -> Iterator[Callable[..., FaultProxy]]:
    """`faultproxy(upstream_url, cafile=None)` starts a FaultProxy; stopped at teardown."""
    started: list[FaultProxy] = []

    def factory(upstream_url: str, cafile: str | None = None) -> FaultProxy:
        proxy = FaultProxy(upstream_url, cafile=cafile)
        started.append(proxy)
        return proxy.start()

    yield factory
    for proxy in reversed(started):
        proxy.stop()


@pytest.fixture
def small_disk(tmp_path: Path):
    """A file system of its own, `small_disk(bytes)`: a tmpfs of that size (the suite runs as
    root, for its runtimes), so a write past it fails with ENOSPC as on a full disk (a file
    size limit cannot: a volume's part is smaller than the bundle written before it, and
    several downloads fill the cache's disk together)."""
    mounted: list[Path] = []

    def make(size: int) -> Path:
        where = tmp_path / "disk"
        where.mkdir()
        res = run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where])
        assert res.returncode == 0, f"cannot mount a tmpfs at {where}: {res.stderr}"
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        run(["umount", "-l", where])
