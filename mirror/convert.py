"""Docker <-> OCI conversion of manifests (issue 4). `keep` changes no byte."""

from __future__ import annotations

from mirror.progress import Progress
from mirror.resolve import ImagePlan


def convert_plan(plan: ImagePlan, fmt: str, progress: Progress) -> None:
    """Rewrite the plan's manifests to `fmt` (keep|oci|docker), recording old -> new digests."""
    if fmt == "keep":
        return
    raise NotImplementedError(fmt)
