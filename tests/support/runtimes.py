"""Container runtimes as consumers of bundles: dockerd, containerd (ctr) and podman from the
Debian packages, rootful, each with private roots under a temporary directory, stopped by pid.

    with Dockerd(tmp / "docker") as d:      d.cli("load", "-i", bundle)
    with Containerd(tmp / "ctrd") as c:     c.ctr("images", "import", bundle)
    p = Podman(tmp / "podman");             p.cli("load", "-i", bundle)   # no daemon

Nothing here is shared with the host's own daemons: dockerd gets `--data-root`, `--exec-root`,
`--pidfile` and its own socket (vfs storage, no iptables, no bridge); containerd its own
config.toml (root, state, grpc and ttrpc sockets; CRI off); podman `--root`/`--runroot`, vfs,
and private containers.conf / registries.conf / storage.conf.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # the Debian client (another may come first on PATH)
CONTAINERD = shutil.which("containerd") or "/usr/bin/containerd"
CTR = shutil.which("ctr") or "/usr/bin/ctr"
PODMAN = shutil.which("podman") or "/usr/bin/podman"


def _run(argv: list[str], *, env: dict[str, str] | None = None, check: bool = True,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def _start(argv: list[Any], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(proc: subprocess.Popen, name: str, timeout: float = 30) -> None:
    """SIGTERM the one process we started (by its pid), then SIGKILL if it does not go."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"{name} (pid {proc.pid}) did not stop on SIGTERM") from None


def _wait(what: str, ok, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        if ok():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def _umount_under(root: Path) -> None:
    """Mounts a daemon left under its root (vfs has none; the native snapshotter none): a
    lazy unmount of any, so the temporary directory can be removed."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    for line in reversed(mounts):
        point = line.split()[1]
        if point.startswith(str(root) + "/"):
            subprocess.run(["umount", "-l", point], capture_output=True)


class Dockerd:
    """dockerd 20.10 (Debian docker.io) with its own roots and socket; `cli(...)` runs the
    Debian docker client against it."""

    def __init__(self, root: Path, config: dict[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.sock = self.root / "docker.sock"
        self.config = config or {}  # daemon.json's settings (registry-mirrors...)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Dockerd:
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "dockerd.log"
        self.proc = _start(
            [DOCKERD, "--storage-driver", "vfs", "--iptables=false", "--ip-masq=false",
             "--bridge=none", "--data-root", self.root / "data", "--exec-root",
             self.root / "exec", "--pidfile", self.root / "dockerd.pid", "-H",
             f"unix://{self.sock}", "--config-file", self._config()], log)
        _wait("dockerd", lambda: self.cli("version", check=False).returncode == 0,
              self.proc, log)
        return self

    def _config(self) -> Path:
        cfg = self.root / "daemon.json"
        cfg.write_text(json.dumps(self.config))  # not /etc/docker/daemon.json
        return cfg

    def cli(self, *args: Any, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_CONFIG": str(self.root / "client")}
        return _run([DOCKER, "-H", f"unix://{self.sock}", *args], env=env, check=check)

    def image(self, ref: str) -> dict[str, Any]:
        """`docker image inspect REF`: Id, RepoTags, Architecture, Os..."""
        return json.loads(self.cli("image", "inspect", ref).stdout)[0]

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, "dockerd")
            self.proc = None
        _umount_under(self.root)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Containerd:
    """containerd 1.6 (Debian) with its own config, root, state and socket; `ctr(...)` runs
    ctr against it (namespace `default`, snapshotter `native`: no overlay mounts needed)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.sock = self.root / "containerd.sock"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Containerd:
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "config.toml"
        cfg.write_text("\n".join([
            "version = 2",
            f'root = "{self.root / "root"}"',
            f'state = "{self.root / "state"}"',
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "[grpc]", f'  address = "{self.sock}"',
            "[ttrpc]", f'  address = "{self.sock}.ttrpc"',
            "[debug]", '  address = ""',
            "[metrics]", '  address = ""', ""]))
        log = self.root / "containerd.log"
        self.proc = _start([CONTAINERD, "--config", cfg], log)
        _wait("containerd", lambda: self.ctr("version", check=False).returncode == 0,
              self.proc, log)
        return self

    def ctr(self, *args: Any, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([CTR, "--address", self.sock, *args], check=check)

    def import_(self, bundle: Path, *args: Any, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
        """`ctr images import` as k3s/RKE2 do it (unpacking into the native snapshotter)."""
        return self.ctr("images", "import", "--snapshotter", "native", *args, bundle,
                        check=check)

    def images(self) -> dict[str, dict[str, str]]:
        """name -> {"digest", "type", "platforms"} from `ctr images ls`."""
        out: dict[str, dict[str, str]] = {}
        lines = self.ctr("images", "ls").stdout.splitlines()[1:]
        for line in lines:
            cols = line.split()
            if len(cols) >= 6:
                out[cols[0]] = {"type": cols[1], "digest": cols[2], "platforms": cols[5]}
        return out

    def blob(self, digest: str) -> bytes:
        proc = subprocess.run([CTR, "--address", str(self.sock), "content", "get", digest],
                              capture_output=True, timeout=120, check=True)
        return proc.stdout

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, "containerd")
            self.proc = None
        _umount_under(self.root)

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Podman:
    """podman 4.3 (Debian), rootful, with private storage (vfs) and configuration: no daemon
    to start; `stop()` removes its mounts."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # podman refuses a runroot path of 50 characters or more: a short one in /tmp
        self.run = Path(tempfile.mkdtemp(prefix="podrun-", dir="/tmp"))
        (self.root / "containers.conf").write_text(
            '[engine]\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n')
        (self.root / "registries.conf").write_text("unqualified-search-registries = []\n")
        (self.root / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{self.run}"\n'
            f'graphroot = "{self.root / "storage"}"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.root / "containers.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(self.root / "registries.conf"),
                    "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
                    "TMPDIR": str(self.root)}

    def cli(self, *args: Any, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([PODMAN, "--root", self.root / "storage", "--runroot", self.run,
                     "--storage-driver", "vfs", *args], env=self.env, check=check)

    def image(self, ref: str) -> dict[str, Any]:
        """`podman image inspect REF`: Id, RepoTags, Architecture, Os..."""
        return json.loads(self.cli("image", "inspect", ref).stdout)[0]

    def stop(self) -> None:
        _umount_under(self.root)
        _umount_under(self.run)
        shutil.rmtree(self.run, ignore_errors=True)
