"""The README cannot drift from the code: exit codes and command names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mirror.cli import COMMANDS
from mirror.cli_args import build_parser
from mirror.errors import EXIT_CODES

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_exit_code_table_matches_errors_module() -> None:
    rows = re.findall(r"^\| (\d+) \| ([a-z-]+) \|", README, re.M)
    assert {name: int(code) for code, name in rows} == EXIT_CODES


def test_every_command_is_documented() -> None:
    for name in COMMANDS:
        assert f"`mirror {name}" in README, name


def test_every_command_the_parser_takes_has_a_run() -> None:
    """The parser (mirror.cli_args) and the runs (mirror.cli's COMMANDS) name the same
    commands: one the parser took with no run would fail with a trace, not an error line."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)


def test_every_pull_option_in_readme_exists() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    pull = sub.choices["pull"]
    flags = {s for a in pull._actions for s in a.option_strings}
    section = README.split("Main options of `pull`:")[1].split("## ")[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    for flag in re.findall(r"`(--?[a-z][a-z-]*)", table):
        assert flag in flags, flag


def test_every_option_of_every_command_is_in_the_readme() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, cmd in sub.choices.items():
        for action in cmd._actions:
            longs = [s for s in action.option_strings if s.startswith("--") and s != "--help"]
            if longs:
                shown = [s for s in action.option_strings
                         if re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", README)]
                assert shown, f"mirror {name} {longs[0]} is not in the README"


def test_only_the_cli_imports_tqdm() -> None:
    for path in (Path(__file__).parent.parent / "mirror").rglob("*.py"):
        if path.name not in ("cli_progress.py",):
            assert not re.search(r"^\s*(from|import) tqdm", path.read_text(), re.M), path


def test_the_bundle_package_does_not_import_the_engines() -> None:
    """mirror/bundle reads and writes bundles from the model (mirror.image): it never
    imports the engines that make or consume it, nor the registry client."""
    engines = ("pull", "load", "resolve", "convert", "referrers", "fetch", "registry",
               "commands", "cli")
    pattern = re.compile(rf"^\s*(from|import) mirror\.({'|'.join(engines)})\b", re.M)
    for path in (Path(__file__).parent.parent / "mirror" / "bundle").rglob("*.py"):
        assert not pattern.search(path.read_text()), path


@pytest.mark.parametrize("module", ["image", "mapping"])
def test_the_image_model_imports_only_the_facts(module: str) -> None:
    """mirror/image.py and mirror/mapping.py (where an image lands) sit below storage,
    sources and sinks (docs/ARCHITECTURE.md), so that each of them can take them: they import
    nothing but the facts and each other (mapping never the image)."""
    facts = {"errors", "digest", "reference", "platform", "mediatypes", "manifest",
             "artifacts"}
    text = (Path(__file__).parent.parent / "mirror" / f"{module}.py").read_text()
    imported = set(re.findall(r"^\s*(?:from|import) mirror\.(\w+)", text, re.M))
    allowed = facts | ({"mapping"} if module == "image" else set())
    assert imported and imported <= allowed, imported - allowed


def test_referrer_kinds_are_in_help_and_readme() -> None:
    from mirror.artifacts import KINDS

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    (action,) = [a for a in sub.choices["pull"]._actions if "--referrer-type" in a.option_strings]
    kinds_table = README.split("`--referrer-type` keeps only the kinds")[1].split("\n\n")[1]
    for kind in KINDS:
        assert f"{kind} (" in action.help, kind
        assert f"| `{kind}` |" in kinds_table, kind


@pytest.mark.slow
def test_every_report_field_is_in_the_readme(tmp_path: Path) -> None:
    """README's Reports table names every field each command's report has (runs that fail
    at once, as the keys are the same in every outcome), and each image entry's fields."""
    import json
    from dataclasses import fields

    from mirror.imageresult import ImageResult
    from tests.support.oracle import run_mirror

    section = README.split("## Reports")[1].split("\n## ")[0]
    documented = set(re.findall(r"`([a-z_]+)`", section))
    cache = tmp_path / "cache"
    (cache / "blobs" / "sha256").mkdir(parents=True)
    runs = {
        "pull": ["127.0.0.1:9/x/y:1", "--retries", "0", "--cache", cache, "-o",
                 tmp_path / "b.tar"],
        "lock": ["127.0.0.1:9/x/y:1", "--retries", "0", "--cache", cache, "--lock-file",
                 tmp_path / "l.lock"],
        "load": [tmp_path / "none.tar", "--to", "127.0.0.1:9"],
        "sync": ["127.0.0.1:9/x/y:1", "--retries", "0", "--to", "127.0.0.1:9"],
        "verify": [tmp_path / "none.tar"],
        "client-config": [tmp_path / "none.tar", "--to", "127.0.0.1:9", "-o", tmp_path / "cc"],
        "cache": ["prune", "--cache", cache, "--older-than", "30d"],
        "serve": [tmp_path / "none.tar", "--listen", "127.0.0.1:0"],
    }
    for command, args in runs.items():
        report = tmp_path / f"{command}.json"
        run_mirror(command, *args, "--report", report)
        doc = json.loads(report.read_text())
        missing = set(doc) - documented
        assert not missing, f"{command} report fields not in README's Reports: {missing}"
    missing = {f.name for f in fields(ImageResult)} - documented
    assert not missing, f"pull report image fields not in README's Reports: {missing}"


@pytest.mark.slow
def test_the_demo_uses_registries_of_its_own() -> None:
    """scripts/demo.sh started its registries on 5101 and 5102 (errors to /dev/null) and
    went on after `sleep 1`: where something else listened there (a registry of one's own,
    any web server) it seeded and loaded into that, or failed on its answers. It now takes
    free ports and waits for its own registries. Here 5101 and 5102 answer 404 to all."""
    import http.server
    import subprocess
    import threading

    class NotARegistry(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_error(404)

        do_HEAD = do_POST = do_PUT = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    servers = []
    for port in (5101, 5102):
        try:
            servers.append(http.server.ThreadingHTTPServer(("127.0.0.1", port), NotARegistry))
        except OSError:  # already taken by something else: as much the point
            continue
        threading.Thread(target=servers[-1].serve_forever, daemon=True).start()
    try:
        root = Path(__file__).parent.parent
        proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=root, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert '"Architecture": "arm64"' in proc.stdout, proc.stdout
        assert "127.0.0.1:5101" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_the_architecture_page_names_every_module_and_only_modules_that_exist() -> None:
    """docs/ARCHITECTURE.md stays true: each module of mirror/ (by file name) and each package
    is named there, and every `name.py` or `package/` it names exists."""
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    named = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*(?:\.py|/))`", page))
    package = ROOT / "mirror"
    files = {p.name for p in package.rglob("*.py")}
    packages = {f"{p.parent.name}/" for p in package.glob("*/__init__.py")}
    assert files - named == set(), "modules the page does not name"
    assert packages - named == set(), "packages the page does not name"
    assert named - files - packages == set(), "names on the page that are not modules"


def test_the_fast_tests_alone_are_one_documented_command() -> None:
    """`scripts/test -m "not slow"` (README, scripts/test's header) selects by a marker
    pyproject.toml registers: under --strict-markers an unregistered `slow` is an error, and a
    marker no test had would select everything. The complexity gate is in ruff's settings,
    which scripts/test runs."""
    import tomllib

    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    markers = settings["pytest"]["ini_options"]["markers"]
    assert [m for m in markers if m.split(":")[0] == "slow"], markers
    assert any("@pytest.mark.slow" in p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    command = 'scripts/test -m "not slow"'
    assert command in README
    assert command in (ROOT / "scripts" / "test").read_text()
    assert "C901" in settings["ruff"]["lint"]["select"]
    assert settings["ruff"]["lint"]["mccabe"]["max-complexity"] == 15
