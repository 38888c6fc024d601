"""A run's Transport from the command line's network flags (and images.yaml's `registries:`):
TLS per host (--insecure-registry, --ca-file, --client-cert), credentials, retries, timeouts,
jobs; the flags checked (exit 2) before anything is made. And a --to Target with the run's
layout flags (mirror.mapping)."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from typing import TYPE_CHECKING

from mirror.errors import UsageError

if TYPE_CHECKING:
    from mirror.config import Config
    from mirror.registry.transport import Transport


def host_values(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for v in values:
        host, sep, val = v.partition("=")
        if not sep or not host or not val:
            raise UsageError(f"{flag} {v!r}: expected HOST=VALUE")
        out[host] = val
    return out


def check_net_flags(args: argparse.Namespace) -> None:
    """--retries, --jobs, --max-wait and the timeouts, refused (exit 2) before anything is
    made."""
    if not hasattr(args, "retries"):
        return  # verify, cache prune: no network
    if args.retries < 0:
        raise UsageError(f"--retries {args.retries}: must be 0 (no retry) or more")
    if args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: must be at least 1")
    if not (math.isfinite(args.max_wait) and args.max_wait >= 0):
        raise UsageError(f"--max-wait {args.max_wait:g}: must be 0 (never wait) or more "
                         "seconds")
    for flag, value in (("--connect-timeout", args.connect_timeout),
                        ("--read-timeout", args.read_timeout)):
        # a negative or NaN timeout timed every request out at once ("unreachable", exit 3)
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{flag} {value:g}: must be a positive number of seconds")


def transport_for(args: argparse.Namespace, cfg: Config | None, progress=None) -> Transport:
    """The run's Transport; with `progress`, -v lists every request, retry, wait and token
    fetch (progress.debug) and a long Retry-After wait is announced (progress.info).
    The HTTP stack is imported here, by the commands that reach a registry: cli.py checks the
    flags (check_net_flags) without it."""
    from mirror.registry.credentials import CredentialStore
    from mirror.registry.policy import RegistrySettings, RetryPolicy, Timeouts
    from mirror.registry.transport import Transport

    settings: dict[str, RegistrySettings] = dict(cfg.registries) if cfg else {}
    for host in args.insecure_registry:
        settings[host] = replace(settings.get(host, RegistrySettings()), insecure=True)
    for host, path in host_values(args.ca_file, "--ca-file").items():
        settings[host] = replace(settings.get(host, RegistrySettings()), ca_file=path)
    for host, pair in host_values(args.client_cert, "--client-cert").items():
        cert, _, key = pair.partition(",")
        settings[host] = replace(settings.get(host, RegistrySettings()), client_cert=cert,
                                 client_key=key or None)
    check_net_flags(args)
    creds = CredentialStore(cfg.logins if cfg else None, args.authfile)
    return Transport(settings=settings, credentials=creds,
                     policy=RetryPolicy(tries=args.retries + 1,
                                        max_retry_after=args.max_wait),
                     timeouts=Timeouts(args.connect_timeout, args.read_timeout), jobs=args.jobs,
                     debug=progress.debug if progress else None,
                     notice=progress.info if progress else None,
                     # load and inspect read no images.yaml; pull and lock name theirs
                     config_file=(cfg.path if cfg else "images.yaml") if "file" in vars(args)
                     else None)


def layout_of(args: argparse.Namespace):
    """The run's layout flags (--map, --map-file, --max-depth, --no-digest-tag): load, sync,
    client-config and serve take the same."""
    from mirror.config import load_map_file
    from mirror.mapping import Layout, Rule, parse_max_depth

    rules = [Rule.parse_arg(m) for m in args.map]
    if args.map_file:
        rules += load_map_file(args.map_file)
    return Layout(tuple(rules), parse_max_depth(args.max_depth), not args.no_digest_tag)


def target_of(args: argparse.Namespace, to: str):
    """--to with the run's layout flags."""
    from mirror.mapping import Target

    return Target.parse(to, layout_of(args))
