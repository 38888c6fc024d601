"""The command line's flags: the parser of every command (build_parser), and the groups of
flags that several commands share, each with the same meaning wherever it is taken (registry
access, what an image brings along, the output, where images land at a target, the clients'
configuration). Light on purpose: mirror.cli builds it for every run, `--version`, `--help`
and a refused flag too (no aiohttp, no yaml; tests/test_layers.py checks it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mirror import __version__
from mirror.choices import FOREIGN_POLICIES, FORMATS, INDEX_MODES
from mirror.runfiles import DEFAULT_OUTPUT
from mirror.serve import DEFAULT_LISTEN


def _add_net(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("registry access")
    g.add_argument("--authfile", help="Docker config.json or containers auth.json to read "
                   "credentials from (default: the usual places)")
    g.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                   help="plain HTTP or unverified TLS for HOST (repeatable)")
    g.add_argument("--ca-file", action="append", default=[], metavar="HOST=FILE",
                   help="CA bundle to verify HOST's certificate (repeatable)")
    g.add_argument("--client-cert", action="append", default=[], metavar="HOST=CERT,KEY",
                   help="client certificate and key for HOST (repeatable)")
    g.add_argument("--retries", type=int, default=4, metavar="N",
                   help="retries per request after the first try (default 4; 0: none)")
    g.add_argument("--connect-timeout", type=float, default=30.0, metavar="S")
    g.add_argument("--read-timeout", type=float, default=120.0, metavar="S",
                   help="seconds without a byte before a transfer is retried (default 120)")
    g.add_argument("--max-wait", type=float, default=300.0, metavar="S",
                   help="the longest a registry may hold the run up (default 300): a longer "
                   "Retry-After fails the request; a longer rate-limit window with no "
                   "request left makes the images that need it wait for the next run")
    g.add_argument("-j", "--jobs", type=int, default=4,
                   help="concurrent transfers per registry (default 4): blobs of 1 MiB or "
                   "more, and every upload; smaller blobs, manifests, tags and tokens are "
                   "small requests, 16 at once per registry beside them to start with, "
                   "up to 64 while answers come faster (max_concurrency in images.yaml)")


def _add_selection(p: argparse.ArgumentParser) -> None:
    """What each image brings along, and so the digests a pull records: `pull` and `lock`
    take the very same flags (a lock made with them records what the pull would)."""
    p.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
                   help="platforms to keep, repeatable or comma-separated; 'all' for every one "
                   "(default: the config's, else all)")
    p.add_argument("--index", choices=INDEX_MODES, help="for a subset of platforms: write a "
                   "filtered index (new digest) or keep the source index (sparse)")
    p.add_argument("--format", choices=FORMATS, help="keep media types, or convert to oci or "
                   "docker")
    p.add_argument("--foreign-layers", choices=FOREIGN_POLICIES, help="layers with urls: skip "
                   "(default: the descriptor only), include (fetch them) or rewrite (fetch them "
                   "as ordinary layers; new manifest digests)")
    p.add_argument("--no-referrers", action="store_true", help="leave signatures, SBOMs and "
                   "attestations behind (an index that lists attestations gets a new digest)")
    p.add_argument("--referrer-type", action="append", default=[], metavar="TYPE",
                   help="carry only referrers of this kind: signature (cosign, Sigstore "
                   "bundle, Notation), sbom (SPDX, CycloneDX, cosign .sbom), attestation "
                   "(in-toto, cosign .att, BuildKit attestations in the index); or of this "
                   "artifactType (type/subtype, verbatim); repeatable; any other value is "
                   "refused")


def _add_out(p: argparse.ArgumentParser) -> None:
    # -q and -v go together as curl's -s and -v do: -q hides the progress and summary lines,
    # -v adds a line per request, retry and wait
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail: a line per "
                   "request, retry and wait (with -q: those lines and the warnings only)")
    p.add_argument("--report", metavar="FILE.json", help="write a JSON report of the run")


def _add_client_config(p: argparse.ArgumentParser, flag: str, help: str, *more: str,
                       required: bool = False) -> None:
    p.add_argument(flag, *more, type=Path, metavar="DIR", required=required, help=help)
    p.add_argument("--no-fallback", action="store_true", help="configuration under which "
                   "the clients never ask the source registries (containerd, Podman/CRI-O, "
                   "OpenShift; k3s needs --disable-default-registry-endpoint, Docker cannot)")


def _add_layout(p: argparse.ArgumentParser, prefix: str = "the --to prefix") -> None:
    """Where images land at the target (mirror.mapping): the same flags wherever a run
    names target repositories (load, sync, client-config, serve: its --prefix is --to's)."""
    p.add_argument("--map", action="append", default=[], metavar="SRC=DST",
                   help="put the source repository SRC (or every one under a prefix, SRC "
                   f"ending in /*) at DST below {prefix}: "
                   "'docker.io/library/*=base/*'; repeatable; over the bundle's own "
                   "destinations (images.yaml to:, map:)")
    p.add_argument("--map-file", type=Path, metavar="FILE.yaml", help="rules as "
                   "images.yaml's map: (SOURCE: DESTINATION per line); --map's come first")
    p.add_argument("--max-depth", type=int, metavar="N", help="at most N path components "
                   "per target repository: a deeper one has the leading components below "
                   f"{prefix} joined with '-' (org/team/app -> org-team/app for N=2)")
    verb = "push" if "--to" in prefix else "serve"
    p.add_argument("--no-digest-tag", action="store_true", help=f"{verb} an image pinned by "
                   f"digest only by digest, without the tag sha256-<hex> that keeps it from "
                   "the target's garbage collection")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mirror",
        description="Carry multi-arch container images into air-gapped networks.")
    ap.add_argument("--version", action="version", version=f"mirror {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("pull", help="pull images from registries into a bundle")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image references (besides -f)")
    p.add_argument("-f", "--file", help="images.yaml listing the images")
    p.add_argument("-o", "--output", help="bundle path, .tar or .tar.zst "
                   f"(default {DEFAULT_OUTPUT})")
    _add_selection(p)
    p.add_argument("--compress", choices=["none", "zstd"], help="default: by the output name")
    p.add_argument("--volume-size", metavar="SIZE", help="write the bundle as parts OUT.001, "
                   "OUT.002, ... of at most SIZE bytes each (k, M, G, T are 1024-based; "
                   "presets: fat32 = 4 GiB - 1 byte, dvd = 4.7 GB, bd25 = 25 GB), with "
                   "OUT.volumes.json, OUT.parts.sha256 and OUT.sha256 beside them; `cat "
                   "OUT.0* > OUT` is the bundle")
    p.add_argument("--cache", type=Path, help="blob cache directory (default "
                   "$XDG_CACHE_HOME/mirror)")
    p.add_argument("--keep-going", action="store_true",
                   help="finish the other images when one fails; the bundle is marked partial")
    p.add_argument("--dry-run", action="store_true",
                   help="resolve and list what would be fetched; download no layer")
    p.add_argument("--lock-file", type=Path, help="where to write (or, with --locked, read) "
                   "the lock file (default: images.lock beside -f images.yaml)")
    p.add_argument("--locked", action="store_true",
                   help="pull exactly the digests in the lock file")
    p.add_argument("--base", type=Path, metavar="BUNDLE|LOCK", help="incremental: leave out "
                   "the blobs that this earlier bundle (or its lock file) already carried")
    _add_net(p)
    _add_out(p)

    p = sub.add_parser("sync", help="copy images from their registries straight into one or "
                       "more registries (no bundle): the connected case")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image references (besides -f)")
    p.add_argument("-f", "--file", help="images.yaml listing the images")
    p.add_argument("--to", action="append", required=True, metavar="HOST[:PORT][/PREFIX]",
                   help="target registry and optional repository prefix, as load's (each "
                   "image goes to PREFIX/<its source repository>, or where --map or "
                   "images.yaml's to:/map: put it); repeatable: one push per target")
    _add_layout(p)
    _add_selection(p)
    p.add_argument("--cache", type=Path, help="fetch each blob into this cache once and push "
                   "it from there to every target (default: none, blobs stream from the "
                   "source registries straight into the targets)")
    p.add_argument("--keep-going", action="store_true",
                   help="sync the other images when one fails to resolve, or a target "
                   "cannot take it (exit 13)")
    p.add_argument("--dry-run", action="store_true",
                   help="resolve and list what would be pushed to each target; push nothing")
    p.add_argument("--merge", action="store_true", help="as load's: a tag that holds another "
                   "multi-arch index keeps its other platforms")
    p.add_argument("--lock-file", type=Path, help="where to write (or, with --locked, read) "
                   "the lock file (default: images.lock beside -f images.yaml)")
    p.add_argument("--locked", action="store_true",
                   help="sync exactly the digests in the lock file")
    _add_client_config(p, "--write-client-config", "after the sync, write into DIR the "
                       "configuration that makes the clients pull the synced images by "
                       "their source names from the targets (as load's; several --to: mirrors in that "
                       "order)")
    _add_net(p)
    _add_out(p)

    p = sub.add_parser("lock", help="resolve images.yaml to digests (images.lock); download "
                       "no layer")
    p.add_argument("images", nargs="*", metavar="IMAGE")
    p.add_argument("-f", "--file", help="images.yaml listing the images")
    _add_selection(p)
    p.add_argument("--lock-file", type=Path)
    p.add_argument("--cache", type=Path)
    _add_net(p)
    _add_out(p)

    p = sub.add_parser("cache", help="manage the blob cache")
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    c = csub.add_parser("prune", help="remove cached blobs by age or total size")
    c.add_argument("--cache", type=Path, help="the blob cache (default $XDG_CACHE_HOME/mirror); "
                   "a directory that is not one is refused")
    c.add_argument("--older-than", metavar="AGE", help="unused for longer than AGE, "
                   "with a unit: s, m, h, d or w (e.g. 30d, 12h)")
    c.add_argument("--max-size", metavar="SIZE", help="then the least recently used, until "
                   "under SIZE (e.g. 50G; a warning says when --keep holds it over)")
    c.add_argument("--keep", type=Path, action="append", default=[], metavar="LOCK",
                   help="never remove blobs listed in this lock file (repeatable)")
    c.add_argument("--unused-by", type=Path, action="append", default=[], metavar="LOCK",
                   help="remove every blob that this lock file (repeatable: these lock "
                   "files) does not use")
    _add_out(c)

    p = sub.add_parser("load", help="push a bundle into a registry")
    p.add_argument("bundle", type=Path)
    p.add_argument("--to", required=True, metavar="HOST[:PORT][/PREFIX]",
                   help="target registry and optional repository prefix: each image goes "
                   "to PREFIX/<its source repository> (or where --map, or the to:/map: of the "
                   "images.yaml it was pulled with, put it); an oci-archive entry named by a bare "
                   "tag, or not named, to PREFIX itself (an unnamed one by digest)")
    _add_layout(p)
    p.add_argument("--dry-run", action="store_true", help="list what would be pushed")
    p.add_argument("--merge", action="store_true",
                   help="a tag that holds another multi-arch index keeps its other platforms "
                   "(a merged index, new digest); without it they are replaced, with a warning")
    _add_client_config(p, "--write-client-config", "after the load, write into DIR the "
                       "configuration that makes containerd, k3s/RKE2, Podman/CRI-O, "
                       "OpenShift and Docker pull the loaded images by their source names "
                       "from the target (DIR/README.txt says how to install it)")
    _add_net(p)
    _add_out(p)

    p = sub.add_parser("client-config", help="write the clients' mirror configuration for a "
                       "bundle loaded earlier (the load's naming; one ping of the target)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--to", required=True, metavar="HOST[:PORT][/PREFIX]",
                   help="where the bundle was loaded (load's --to)")
    _add_layout(p)
    _add_client_config(p, "-o", "the directory to write into (made if missing)",
                       "--output", required=True)
    _add_net(p)
    _add_out(p)

    p = sub.add_parser("verify", help="check a bundle offline: every blob, every reference")
    p.add_argument("bundle", type=Path)
    _add_out(p)

    p = sub.add_parser("inspect", help="show the digests of a bundle or a remote image")
    p.add_argument("target", help="a bundle file (an existing file, or a name ending in .tar, "
                   ".tar.zst, .tzst, .zst or .tar.gz, or starting with /, ./, ../ or ~), or an "
                   "image reference")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
                   help="show only these platforms, repeatable or comma-separated, matched as "
                   "pull matches them (default: all)")
    _add_net(p)
    _add_out(p)

    p = sub.add_parser("serve", help="answer as a read-only registry from a bundle (.tar), "
                       "with no registry installed")
    p.add_argument("bundle", type=Path, help="a bundle .tar (a .tar.zst: decompress it once)")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="ADDR:PORT",
                   help=f"address and port to listen on (default {DEFAULT_LISTEN}: every "
                   "address; port 0: a free one, printed)")
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve HTTPS with this "
                   "certificate (PEM, with its chain); needs --tls-key")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="the certificate's key (PEM)")
    p.add_argument("--prefix", default="", metavar="P", help="serve each image as "
                   "P/<source repository>, as `mirror load --to HOST/P` names it")
    _add_layout(p, "--prefix P")
    _add_out(p)
    return ap
