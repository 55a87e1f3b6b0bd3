"""A content key of an ingest source, for caching: cheap (no decoding), exact (every byte counts)."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from conveyor.core.io import sha256_bytes
from conveyor.data import collection, sources
from conveyor.data.records import Item

if TYPE_CHECKING:  # pragma: no cover
    from conveyor.core.spec import Spec


def source_fingerprint(spec: Spec, unlabeled: bool = False) -> str:
    """sha256 over the sorted (relative path, sha256 of the bytes) of every file ingest would read,
    plus the manifest / sidecar / annotation bytes. Changes when one image's bytes change under
    the same path; does not decode anything."""
    col = collection.collect(spec, unlabeled)
    root = col.root
    max_bytes = int(spec.data.max_file_mb * 2**20)

    def digest(it: Item) -> tuple[str, str]:
        key = it.rel_path or it.path
        try:
            return key, sha256_bytes(sources.read_item(it, root, max_bytes)[0])
        except sources.ItemError as err:
            return key, f"!{err.reason}"

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2))) as pool:
        entries = list(pool.map(digest, col.candidates))
    entries += [(q.rel_path or q.path, f"!{q.reason}") for q in col.quarantined]
    for m in col.meta_files:
        entries.append((f"@{m.name}", sha256_bytes(m.read_bytes())))
    h = hashlib.sha256()
    h.update(f"{col.format}\0{root}\0".encode())
    for key, value in sorted(entries):
        h.update(f"{key}\0{value}\n".encode())
    return h.hexdigest()
