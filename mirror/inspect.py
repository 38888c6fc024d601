"""`mirror inspect`: the digests of a bundle or a remote image, each labelled for what it is.

Users mix up the manifest digest (what you pin: `image@sha256:...`), the config digest (the
image ID `docker images` shows), layer digests (of the compressed blobs in the registry) and
diff_ids (of the uncompressed layers, in the config). This prints all four, named.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mirror.bundle.layout import A_SOURCE_DIGEST, IMAGE_NAME, REF_NAME
from mirror.manifest import RawManifest
from mirror.referrers import A_KIND, A_SUBJECT

GetBlob = Callable[[str], Awaitable[bytes | None]]
GetManifest = Callable[[str], Awaitable[RawManifest | None]]


async def describe(name: str, root: RawManifest, get_manifest: GetManifest, get_blob: GetBlob,
                   annotations: dict[str, str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"reference": name, "digest": root.digest,
                           "mediaType": root.media_type, "size": root.size}
    ann = annotations or {}
    if ann.get(A_SOURCE_DIGEST):
        doc["sourceDigest"] = ann[A_SOURCE_DIGEST]
    if ann.get(A_SUBJECT):
        doc["referrerOf"] = ann[A_SUBJECT]
        doc["kind"] = ann.get(A_KIND, "artifact")
    if root.is_index:
        doc["manifests"] = []
        for c in root.children:
            child = await get_manifest(c.digest)
            item: dict[str, Any] = {"platform": str(c.platform) if c.platform else None,
                                    "digest": c.digest, "mediaType": c.media_type,
                                    "size": c.size}
            if c.annotations.get("vnd.docker.reference.type"):
                item["attestationFor"] = c.annotations.get("vnd.docker.reference.digest")
            if child is None:
                item["absent"] = True
            else:
                item.update(await _image(child, get_blob))
            doc["manifests"].append(item)
    else:
        doc.update(await _image(root, get_blob))
    return doc


async def _image(raw: RawManifest, get_blob: GetBlob) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if raw.artifact_type:
        out["artifactType"] = raw.artifact_type
    cfg = raw.config
    if cfg is None:
        return out
    out["config"] = {"digest": cfg.digest, "mediaType": cfg.media_type, "size": cfg.size}
    out["layers"] = [{"digest": d.digest, "size": d.size, "mediaType": d.media_type,
                      **({"urls": list(d.urls)} if d.urls else {})} for d in raw.layers]
    data = await get_blob(cfg.digest) if raw.is_image else None
    if data:
        try:
            c = json.loads(data)
            out["diffIds"] = list((c.get("rootfs") or {}).get("diff_ids") or [])
            out["platform"] = "/".join(x for x in (c.get("os"), c.get("architecture"),
                                                   c.get("variant")) if x)
        except (ValueError, AttributeError):
            pass
    return out


def render(docs: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for d in docs:
        lines.append(d["reference"])
        lines.append(f"  manifest digest (pin this):   {d['digest']}  {d['mediaType']}")
        if d.get("sourceDigest"):
            lines.append(f"  source digest (upstream):     {d['sourceDigest']}")
        if d.get("referrerOf"):
            lines.append(f"  {d['kind']} of:                 {d['referrerOf']}")
        items = d.get("manifests") or [d]
        for m in items:
            if m is not d:
                what = f"attestation for {m['attestationFor']}" if m.get("attestationFor") \
                    else (m.get("platform") or "no platform")
                lines.append(f"  [{what}]")
                lines.append(f"    platform manifest digest:   {m['digest']}"
                             + ("  (absent from the bundle)" if m.get("absent") else ""))
            pad = "    " if m is not d else "  "
            if m.get("artifactType"):
                lines.append(f"{pad}artifact type:                {m['artifactType']}")
            if "config" in m:
                lines.append(f"{pad}config digest (image ID):     {m['config']['digest']}")
                for i, layer in enumerate(m.get("layers", [])):
                    lines.append(f"{pad}layer {i} digest (compressed): {layer['digest']} "
                                 f"{layer['size']} bytes {layer['mediaType']}")
                    if layer.get("urls"):
                        lines.append(f"{pad}  foreign layer, served from: {layer['urls'][0]}")
                for i, diff in enumerate(m.get("diffIds", [])):
                    lines.append(f"{pad}layer {i} diff_id (uncompressed): {diff}")
    return "\n".join(lines)


async def inspect_target(args, make_transport) -> str:
    path = Path(args.target)
    if await asyncio.to_thread(path.exists):
        from mirror.bundle.reader import Bundle

        bundle = Bundle(path)
        contents = await asyncio.to_thread(bundle.scan, configs=True)

        async def get_manifest(d: str) -> RawManifest | None:
            return contents.manifests.get(d)

        async def get_blob(d: str) -> bytes | None:
            if bundle.compressed:
                return contents.configs.get(d)
            if d not in contents.members or contents.members[d] > (1 << 22):
                return None
            return bundle.read_member("blobs/" + d.replace(":", "/", 1))

        docs = []
        for e in contents.index["manifests"]:
            ann = e.get("annotations") or {}
            name = ann.get(IMAGE_NAME) or ann.get(REF_NAME) or e["digest"]
            docs.append(await describe(name, contents.manifests[e["digest"]], get_manifest,
                                       get_blob, ann))
    else:
        from mirror.reference import Reference
        from mirror.registry.client import Client

        ref = Reference.parse(args.target)
        async with make_transport() as t:
            client = Client(t)
            root = await client.get_manifest(ref.registry, ref.repository, ref.ref)

            async def get_manifest(d: str) -> RawManifest | None:
                return await client.get_manifest(ref.registry, ref.repository, d)

            async def get_blob(d: str) -> bytes | None:
                return await client.get_small_blob(ref.registry, ref.repository, d)

            docs = [await describe(str(ref), root, get_manifest, get_blob)]
    return json.dumps(docs, indent=2) if args.json else render(docs)
