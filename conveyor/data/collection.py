"""Which collector reads a spec's source: the generic folder and manifest readers for images
without labels, else the spec's task kind (:meth:`conveyor.kinds.base.TaskKind.collect`)."""

from __future__ import annotations

from conveyor import kinds
from conveyor.core.spec import Spec
from conveyor.data.records import Collection, IngestError
from conveyor.data.sources import GENERIC_FORMATS, collect_folder, collect_manifest, resolve_source


def collect(spec: Spec, unlabeled: bool = False) -> Collection:
    """List ``data.source``: images without labels (``unlabeled``: a folder at any depth, or a
    manifest), else the source as the spec's task kind reads it."""
    src, fmt = resolve_source(spec)
    if unlabeled:
        if fmt not in GENERIC_FORMATS:
            raise IngestError(f"images without labels come as a folder or a manifest, not data.format {fmt!r}")
        return collect_folder(spec, src, labeled=False) if fmt == "folder" else collect_manifest(spec, src, labeled=False)
    return kinds.get(spec.task).collect(spec, src, fmt)
