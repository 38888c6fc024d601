#!/usr/bin/env bash
# Demo: seed a "connected" registry with generated multi-arch images, pull one platform into a
# bundle, verify it, and load it into an "air-gapped" registry. Everything stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d -t mirror-demo.XXXXXX)"
# the registries stop, and the work directory (registries' storage, cache, bundle) goes
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
# two free ports: never a registry (or anything else) that already listens on this machine
read -r src_port dst_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
src="127.0.0.1:$src_port" dst="127.0.0.1:$dst_port"
scripts/registry.sh "$src_port" "$work/src" 2>"$work/src.log" & src_pid=$!
scripts/registry.sh "$dst_port" "$work/dst" 2>"$work/dst.log" & dst_pid=$!
for pair in "$src_pid $src" "$dst_pid $dst"; do  # wait for each to answer /v2/ (30 s at most)
  set -- $pair
  up=""
  for _ in $(seq 300); do
    kill -0 "$1" 2>/dev/null || break
    if python3 -c "import urllib.request; urllib.request.urlopen('http://$2/v2/', timeout=1)" \
        2>/dev/null; then up=1; break; fi
    sleep 0.1
  done
  [[ -n "$up" ]] || { echo "the registry on $2 did not start:" >&2; cat "$work"/*.log >&2; exit 1; }
done
export DEMO_SRC="$src"
python3 - <<'PY'
import os
import random
from tests.support import imagegen as ig
from tests.support.pusher import push_image
rng = random.Random(42)
base = ig.make_layer(rng, size=1 << 20)
imgs = [ig.make_image(rng, p, fmt="docker", layers=[base, ig.make_layer(rng, size=256 << 10)])
        for p in (ig.AMD64, ig.ARM64_V8, ig.ARM_V7)]
src = os.environ["DEMO_SRC"]
push_image(f"http://{src}", "library/demo", ig.make_index(imgs, fmt="docker"), tags=["1.0"])
print(f"seeded {src}/library/demo:1.0 (linux/amd64, linux/arm64/v8, linux/arm/v7)")
PY
cat >"$work/images.yaml" <<YAML
version: 1
defaults:
  platforms: [linux/arm64]
images:
  - $src/library/demo:1.0
YAML
set -x
python3 -m mirror pull -f "$work/images.yaml" -o "$work/site.tar" --cache "$work/cache"
python3 -m mirror verify "$work/site.tar"
python3 -m mirror inspect "$work/site.tar"
python3 -m mirror load "$work/site.tar" --to "$dst/mirror"
skopeo inspect --tls-verify=false --override-arch arm64 "docker://$dst/mirror/library/demo:1.0" | head -12
