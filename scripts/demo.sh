#!/usr/bin/env bash
# Demo: seed a "connected" registry with generated multi-arch images, pull one platform into a
# bundle, verify it, and load it into an "air-gapped" registry. Everything stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d -t mirror-demo.XXXXXX)"
# the registries stop, and the work directory (registries' storage, cache, bundle) goes
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
scripts/registry.sh 5101 "$work/src" 2>/dev/null & scripts/registry.sh 5102 "$work/dst" 2>/dev/null &
sleep 1
python3 - <<'PY'
import random
from tests.support import imagegen as ig
from tests.support.pusher import push_image
rng = random.Random(42)
base = ig.make_layer(rng, size=1 << 20)
imgs = [ig.make_image(rng, p, fmt="docker", layers=[base, ig.make_layer(rng, size=256 << 10)])
        for p in (ig.AMD64, ig.ARM64_V8, ig.ARM_V7)]
push_image("http://127.0.0.1:5101", "library/demo", ig.make_index(imgs, fmt="docker"), tags=["1.0"])
print("seeded 127.0.0.1:5101/library/demo:1.0 (linux/amd64, linux/arm64/v8, linux/arm/v7)")
PY
cat >"$work/images.yaml" <<YAML
version: 1
defaults:
  platforms: [linux/arm64]
images:
  - 127.0.0.1:5101/library/demo:1.0
YAML
set -x
python3 -m mirror pull -f "$work/images.yaml" -o "$work/site.tar" --cache "$work/cache"
python3 -m mirror verify "$work/site.tar"
python3 -m mirror inspect "$work/site.tar"
python3 -m mirror load "$work/site.tar" --to 127.0.0.1:5102/mirror
skopeo inspect --tls-verify=false --override-arch arm64 docker://127.0.0.1:5102/mirror/library/demo:1.0 | head -12
