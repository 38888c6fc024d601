#!/usr/bin/env bash
# Start a local CNCF distribution registry (Debian package docker-registry) in the foreground.
#   scripts/registry.sh [PORT] [STORAGE_DIR]     default 5000 and a temporary directory
# Ctrl-C (or SIGTERM) stops it; its config file, and the storage when it was temporary, go too.
set -euo pipefail
port="${1:-5000}"
created=""
if [[ -n "${2:-}" ]]; then
  storage="$2"
else
  storage="$(mktemp -d -t mirror-registry.XXXXXX)"
  created="$storage"
fi
command -v docker-registry >/dev/null || { echo "docker-registry is not installed (apt-get install docker-registry)" >&2; exit 1; }
conf="$(mktemp -t mirror-registry-XXXXXX.yml)"
pid=""
cleanup() {
  if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -f "$conf"
  if [[ -n "$created" ]]; then rm -rf "$created"; fi
}
trap cleanup EXIT
trap 'exit 0' INT TERM
cat >"$conf" <<YAML
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $storage}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$port
  secret: local-mirror-registry
YAML
echo "registry on 127.0.0.1:$port, storage $storage (Ctrl-C stops it)" >&2
docker-registry serve "$conf" &
pid=$!
wait "$pid"
