#!/usr/bin/env bash
# Start a local CNCF distribution registry (Debian package docker-registry) in the foreground.
#   scripts/registry.sh [PORT] [STORAGE_DIR]     default 5000 and a temporary directory
set -euo pipefail
port="${1:-5000}"
storage="${2:-$(mktemp -d -t mirror-registry.XXXXXX)}"
command -v docker-registry >/dev/null || { echo "docker-registry is not installed (apt-get install docker-registry)" >&2; exit 1; }
conf="$(mktemp -t mirror-registry-XXXXXX.yml)"
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
echo "registry on 127.0.0.1:$port, storage $storage" >&2
exec docker-registry serve "$conf"
