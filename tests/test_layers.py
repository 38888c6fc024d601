"""Issue 15, the layers: no import cycles in mirror/ (a module's imports, at any depth of it,
TYPE_CHECKING blocks aside: those are for the type checker only), and the registry package
(HTTP: requests, auth, byte streams) imports none of the layers above it: the cache, the
bundle, the pull and load engines, the download driver."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mirror"
ABOVE_REGISTRY = ("mirror.store", "mirror.bundle", "mirror.pull", "mirror.load", "mirror.fetch")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(tree: ast.AST, name: str, is_package: bool) -> list[str]:
    """Every module `name` imports (relative imports resolved), outside TYPE_CHECKING."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_package else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            found.append(base)
            found.extend(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p): p for p in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = _imported(tree, name, path.name == "__init__.py")
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_checker_sees_a_cycle_and_type_checking_imports_apart() -> None:
    """The checker itself: a cycle is found, and an import under TYPE_CHECKING is no edge."""
    a = ast.parse("import mirror.b\nfrom typing import TYPE_CHECKING\n"
                  "if TYPE_CHECKING:\n    from mirror import c\n"
                  "def f():\n    from . import d\n")
    assert set(_imported(a, "mirror.a", False)) == {"mirror.b", "typing",
                                                   "typing.TYPE_CHECKING", "mirror",
                                                   "mirror.d"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_mirror() -> None:
    assert cycles(import_graph()) == []


def test_the_registry_package_imports_no_layer_above_it() -> None:
    graph = import_graph()
    wrong = {f"{mod} -> {dep}" for mod, deps in graph.items()
             if mod.startswith("mirror.registry") for dep in deps
             if dep.startswith(ABOVE_REGISTRY)}
    assert not wrong, sorted(wrong)


# the run of `mirror ARGS...` in a fresh interpreter: which modules it imported
_IMPORTED = """
import json, sys
from mirror.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.__stderr__)
"""


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["pull", "--help"],
                                  ["sync", "--help"], ["pull", "-j", "x", "a/b:1"],
                                  ["pull", "--retries", "-1", "a/b:1"]])
def test_version_help_and_refused_flags_import_no_http_stack_nor_yaml(argv) -> None:
    """Issue 18: start-up. Each command's run is imported by cli.py only when it runs, so
    `mirror --version`, `--help` and a refused flag cost the interpreter and the parser, not
    aiohttp (110 ms) or the config reader."""
    proc = subprocess.run([sys.executable, "-c", _IMPORTED, *argv], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=60)
    modules = json.loads(proc.stderr.strip().splitlines()[-1])
    assert "mirror.cli" in modules and "mirror.cli_args" in modules
    heavy = [m for m in modules if m.split(".")[0] in ("aiohttp", "yaml", "multidict", "yarl")
             or m in ("mirror.commands", "mirror.config", "mirror.config_yaml",
                      "mirror.registry.transport")]
    assert heavy == [], heavy


def test_inspect_of_a_bundle_imports_no_http_stack(tmp_path) -> None:
    """`mirror inspect bundle.tar` reads a file: neither aiohttp (70 ms of imports) nor the
    thread that loads the system's CAs for a run that talks to registries (cli.py's
    _TRANSPORT_COMMANDS). It fails at once here (no such file); its imports are inspect's."""
    proc = subprocess.run([sys.executable, "-c", _IMPORTED, "inspect",
                           str(tmp_path / "missing.tar"), "-q"],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    modules = json.loads(proc.stderr.strip().splitlines()[-1])
    assert "mirror.inspect_run" in modules, proc.stderr
    assert [m for m in modules if m.split(".")[0] in ("aiohttp", "multidict", "yarl")
            or m.startswith("mirror.registry")] == []


@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_a_plain_bundle_is_read_without_zstandard(command, rng, tmp_path) -> None:
    """zstandard is a .tar.zst's: `verify` and `inspect` of a plain .tar (and `load`, which
    reads it with the same reader) import none of it; of the same bundle as a .tar.zst, they
    do (so the check sees it)."""
    import tarfile

    import zstandard

    from tests.support import imagegen as ig

    root = ig.write_layout(tmp_path / "layout", {"v1": ig.make_index(
        [ig.make_image(rng, ig.AMD64, "oci"), ig.make_image(rng, ig.ARM64_V8, "oci")], "oci")})
    plain, packed = tmp_path / "b.tar", tmp_path / "b.tar.zst"
    with tarfile.open(plain, "w") as tar:
        for f in sorted(root.rglob("*")):
            tar.add(f, f.relative_to(root).as_posix(), recursive=False)
    packed.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    for bundle, zstd in ((plain, False), (packed, True)):
        proc = subprocess.run([sys.executable, "-c", _IMPORTED, command, str(bundle)],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=60)
        *said, listed = proc.stderr.strip().splitlines()
        said = "\n".join([proc.stdout, *said])
        # read whole, and found good: verify's verdict, inspect's listing
        assert "error" not in said and (": OK" if command == "verify" else "v1") in said, said
        assert ("zstandard" in json.loads(listed)) is zstd, (bundle.name, said)


def test_a_pull_without_a_config_file_reads_no_yaml(tmp_path) -> None:
    """Issue 18: a warm rerun's start-up. `mirror pull REF...` reads no images.yaml, so PyYAML
    (10 ms of its imports) is never executed: mirror.config names it, to be loaded when a
    config is first parsed. The pull fails at once (nothing listens on port 9); its imports
    are a pull's."""
    proc = subprocess.run([sys.executable, "-c", _IMPORTED, "pull", "127.0.0.1:9/a/b:1",
                           "--retries", "0", "-o", str(tmp_path / "b.tar"),
                           "--cache", str(tmp_path / "cache")],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    modules = json.loads(proc.stderr.strip().splitlines()[-1])
    assert "mirror.pull" in modules and "mirror.config" in modules, proc.stderr
    assert [m for m in modules if m.startswith("yaml.")] == []


# the modules of features a pull with none of them does not import: each is imported where
# its feature starts (images.yaml's tag rule, a lock file, --base, a bundle written or its
# --volume-size parts checked, a .tar.zst), not at the top of a module every pull imports
OPTIONAL = ("mirror.tagrules", "mirror.semver", "mirror.lockfile", "mirror.incremental",
            "mirror.bundle.publish", "mirror.bundle.volumecheck", "zstandard",
            # writing a bundle: a rerun that finds it unchanged writes none
            "mirror.bundle.assembler", "mirror.bundle.prefixhash", "mirror.store.writeback")
# what `mirror pull` imports before its run begins (mirror.cli's COMMANDS), and what its run
# imports on the way to its first request
PULL_PATH = ("mirror.cli", "mirror.cli_progress", "mirror.signals", "mirror.registry.tls",
             "mirror.pull_run", "mirror.pull", "mirror.commands", "mirror.registry.client",
             "mirror.store.blobs", "mirror.store.manifests", "mirror.store.lock")


def test_the_optional_features_are_modules_that_exist() -> None:
    """Else the checks below would pass for a name nothing could import."""
    import importlib.util

    assert [m for m in OPTIONAL if importlib.util.find_spec(m) is None] == []


def test_a_pulls_modules_import_no_optional_feature() -> None:
    """Issue 18: a warm rerun's start-up is its imports (a dataclass costs 0.25-1.2 ms): those
    of a pull import none of the features it may not use."""
    code = (f"import json, sys\nimport {', '.join(PULL_PATH)}\n"
            "print(json.dumps(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout)
    assert [m for m in modules if m in OPTIONAL or m.split(".")[0] == "yaml"] == []


def test_a_warm_rerun_with_nothing_new_imports_no_optional_feature(src_registry, repo_name,
                                                                  rng, tmp_path) -> None:
    """The whole run, not only the imports before it: a rerun that finds the bundle at -o
    already holding its images (given on the command line: no images.yaml, no lock file)
    imports none of them; the cold run before it, which writes the bundle, imports
    mirror.bundle.publish (so the check sees what a run imports late)."""
    from tests.support import imagegen as ig
    from tests.support.pusher import push_image

    push_image(src_registry.url, repo_name, ig.make_image(rng, ig.AMD64, "oci"), tags=["v1"])
    ref = f"{src_registry.host}/{repo_name}:v1"

    def run() -> tuple[list[str], dict]:
        report = tmp_path / "report.json"
        proc = subprocess.run([sys.executable, "-c", _IMPORTED, "pull", "-q", ref, "-o",
                               str(tmp_path / "out.tar"), "--cache", str(tmp_path / "cache"),
                               "--report", str(report)],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=120)
        return json.loads(proc.stderr.strip().splitlines()[-1]), json.loads(report.read_text())

    cold, report = run()
    assert report["exit_code"] == 0 and not report["bundle_unchanged"], report
    assert "mirror.bundle.publish" in cold and "mirror.bundle.assembler" in cold
    warm, report = run()
    assert report["exit_code"] == 0 and report["bundle_unchanged"], report
    assert [m for m in warm if m in OPTIONAL or m.split(".")[0] == "yaml"] == []
