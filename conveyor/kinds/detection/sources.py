"""Detection sources for the ingest stage: COCO JSON and YOLO txt labels.

Both formats are read into one internal form, once: per image a list of boxes
``{x1, y1, x2, y2, category}`` in absolute pixels (floats, xyxy) of the decoded image, with
``category`` the class name. Images still go through the ingest machinery (safe decode, content
hash, perceptual hash, statistics, quarantine reasons); this module only lists them and checks
the annotations.

Sources
    ``coco``: ``data.source`` is the images root, ``data.annotations`` the COCO JSON file
    (``images`` with ``id`` / ``file_name`` and optional ``camera`` / ``scene`` / ``captured_at``,
    ``annotations`` with ``id`` / ``image_id`` / ``category_id`` / ``bbox`` = ``[x, y, w, h]``,
    ``categories`` with ``id`` / ``name``). Classes: ``data.classes`` when given, else the
    category names in category-id order. Images on disk that the JSON does not list are not
    received. ``yolo``: ``data.source`` is the images folder, ``data.annotations`` the labels
    folder with one ``<stem>.txt`` per image (the same relative sub-folder), one box per line,
    ``class cx cy w h`` normalised to [0, 1]; class names from ``data.classes`` (required), in order.
    An image without a label file (or with an empty one) is a negative. Camera, scene and capture
    time come from the COCO image records or from a ``metadata.csv`` / ``.parquet`` / ``.jsonl``
    sidecar in the images root (column ``path`` relative to it), as for folder sources.

Bad annotations (decided here)
    A bad box quarantines only that box: its image stays (with its other boxes). Box quarantine
    rows go to ``box_quarantine.parquet`` in the dataset version folder, with the reason, the
    field and a detail naming the annotation file, the annotation id (COCO) or line (YOLO).
    Reasons are :data:`BOX_REASONS`. An image that ingest quarantines takes its boxes along
    (reason ``image_quarantined``). Accounting is exact and reported in ``ingest.json``
    (``annotations``): ``boxes_accepted + boxes_quarantined == boxes_received``, besides the
    image accounting ``accepted + quarantined == received``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from conveyor.data.records import Annotated, Collection, Finisher, IngestError, Item, Quarantined
from conveyor.data.sources import ItemMeta, check_metadata, inside, read_sidecar, text_or_none

BOX_REASONS: dict[str, str] = {
    "box_outside_image": "the box reaches outside the decoded image",
    "empty_box": "zero or negative width or height",
    "nan_box": "a coordinate is NaN or infinite, missing or not a number",
    "unknown_category": "the category id (COCO) or class index (YOLO) is not a known class",
    "missing_image": "the annotation points at an image that is not listed, or a label file without an image",
    "malformed_annotation": "the annotation record or label line cannot be read",
    "image_quarantined": "the box's image was quarantined by ingest",
}
"""Box quarantine reason codes and what they mean."""

BOX_STRUCT = pl.Struct({"x1": pl.Float64, "y1": pl.Float64, "x2": pl.Float64, "y2": pl.Float64, "category": pl.String})
BOX_QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "image": pl.String(),
    "source": pl.String(),
    "ref": pl.String(),
    "field": pl.String(),
    "reason": pl.String(),
    "detail": pl.String(),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_EDGE_TOL = 1e-3  # pixels a box may reach past the image edge (rounding in exports); clipped


@dataclass
class _Box:
    ref: str  # "annotation id 17" / "line 3"
    source: str  # the annotation file
    values: tuple  # COCO (x, y, w, h) in pixels, or YOLO (cx, cy, w, h) normalised
    normalised: bool
    category: str


@dataclass
class Annotations:
    """What the collector found, keyed by image id (the path relative to the images root)."""

    fmt: str
    classes: list[str]
    boxes: dict[str, list[_Box]] = field(default_factory=dict)
    bad: list[dict[str, Any]] = field(default_factory=list)
    received: int = 0

    def finish(self, manifest: pl.DataFrame) -> Annotated:
        """Check every box against its decoded image, attach the ``boxes`` column, count."""
        bad = list(self.bad)
        sizes = dict(zip(manifest["id"].to_list(), zip(manifest["width"].to_list(), manifest["height"].to_list())))
        per_image: dict[str, list[dict]] = {}
        for image_id, boxes in self.boxes.items():
            if image_id not in sizes:
                for b in boxes:
                    bad.append(_bad(image_id, b.source, b.ref, "image", "image_quarantined",
                                    f"{b.source} {b.ref}: image {image_id!r} was quarantined by ingest"))
                continue
            w, h = sizes[image_id]
            kept = []
            for b in boxes:
                if b.normalised:
                    cx, cy, bw, bh = b.values
                    x1, y1, x2, y2 = (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h
                else:
                    x, y, bw, bh = b.values
                    x1, y1, x2, y2 = x, y, x + bw, y + bh
                if x1 < -_EDGE_TOL or y1 < -_EDGE_TOL or x2 > w + _EDGE_TOL or y2 > h + _EDGE_TOL:
                    bad.append(_bad(image_id, b.source, b.ref, "bbox", "box_outside_image",
                                    f"{b.source} {b.ref}: box xyxy ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is outside "
                                    f"the {w}x{h} image {image_id!r}"))
                    continue
                kept.append({"x1": min(max(x1, 0.0), w), "y1": min(max(y1, 0.0), h), "x2": min(max(x2, 0.0), w),
                             "y2": min(max(y2, 0.0), h), "category": b.category})
            per_image[image_id] = kept
        ids = manifest["id"].to_list()
        col = pl.Series("boxes", [per_image.get(i, []) for i in ids], dtype=pl.List(BOX_STRUCT))
        manifest = manifest.with_columns(col)
        bq = pl.DataFrame(bad, schema=BOX_QUARANTINE_SCHEMA).sort(["image", "source", "ref"], nulls_last=True)
        accepted = int(sum(len(v) for v in per_image.values()))
        summary = {
            "format": self.fmt,
            "boxes_received": self.received,
            "boxes_accepted": accepted,
            "boxes_quarantined": bq.height,
            "box_quarantine_reasons": dict(sorted(Counter(bq["reason"].to_list()).items())),
            "negative_images": int(sum(1 for i in ids if not per_image.get(i))),
        }
        if accepted + bq.height != self.received:  # a bug, never a data problem
            raise AssertionError(f"ingest lost boxes: {accepted} + {bq.height} != {self.received}")
        h = hashlib.sha256()
        h.update(json.dumps(self.classes).encode())
        h.update(json.dumps([[i, per_image.get(i, [])] for i in ids], sort_keys=True).encode())
        h.update(json.dumps(bq.select("image", "source", "ref", "reason").rows()).encode())
        return Annotated(manifest, frames={"box_quarantine.parquet": bq}, summary=summary, classes=list(self.classes),
                         digest=h.hexdigest())


class BoxCheck(Finisher):
    """The finisher of a COCO / YOLO collection: the boxes checked against the decoded images."""

    def __init__(self, annotations: Annotations) -> None:
        self.annotations = annotations

    def finish(self, manifest: pl.DataFrame) -> Annotated:
        return self.annotations.finish(manifest)


def _bad(image: str | None, source: str, ref: str, fld: str, reason: str, detail: str) -> dict[str, Any]:
    return {"image": image, "source": source, "ref": ref, "field": fld, "reason": reason, "detail": detail}


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _check_values(values: list[Any], names: tuple[str, ...], where: str) -> tuple[tuple | None, tuple[str, str] | None]:
    """Finite numbers with positive width and height, or (None, (reason, detail))."""
    nums = [_number(v) for v in values]
    if len(values) != len(names) or any(n is None for n in nums):
        return None, ("nan_box", f"{where}: bbox {values!r} needs {len(names)} finite numbers ({', '.join(names)})")
    if nums[2] <= 0 or nums[3] <= 0:
        return None, ("empty_box", f"{where}: bbox {values!r} has zero or negative width or height")
    return tuple(nums), None


# ---- COCO -----------------------------------------------------------------------------------------


def read_coco(ann_path: Path, classes: list[str] | None, rel_of) -> tuple[list[dict], Annotations]:
    """Image records (``rel``, ``row``, camera, scene, captured_at) and the annotations of a COCO file.

    ``rel_of(file_name)`` turns a file name into the image id (path relative to the images root).
    Raises ``ValueError`` for a file that is not a COCO JSON object.
    """
    try:
        data = json.loads(ann_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"data.annotations {ann_path} cannot be read as JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("categories"), list):
        raise ValueError(f"data.annotations {ann_path} is not a COCO file (needs 'images' and 'categories' lists)")
    cats: dict[Any, str] = {}
    for c in data["categories"]:
        if isinstance(c, dict) and "id" in c and "name" in c:
            cats[c["id"]] = str(c["name"])
    if classes is None:
        classes = [cats[k] for k in sorted(cats, key=lambda k: (str(type(k)), k))]
    known = set(classes)
    src = ann_path.name
    images: list[dict] = []
    by_id: dict[Any, str] = {}
    for row, rec in enumerate(data["images"], start=1):
        if not isinstance(rec, dict) or not rec.get("file_name"):
            images.append({"rel": None, "row": row, "given": str(rec)[:80]})
            continue
        rel = rel_of(str(rec["file_name"]))
        images.append({"rel": rel, "row": row, "given": str(rec["file_name"]), "camera": rec.get("camera"),
                       "scene": rec.get("scene"), "captured_at": rec.get("captured_at")})
        if "id" in rec and rec["id"] not in by_id:
            by_id[rec["id"]] = rel
    ann = Annotations("coco", list(classes))
    for k, a in enumerate(data.get("annotations") or [], start=1):
        ann.received += 1
        ref = f"annotation id {a.get('id')!r}" if isinstance(a, dict) and "id" in a else f"annotation #{k}"
        where = f"{src} {ref}"
        if not isinstance(a, dict):
            ann.bad.append(_bad(None, src, ref, "annotation", "malformed_annotation", f"{where}: not an object"))
            continue
        image = by_id.get(a.get("image_id"))
        if image is None:
            ann.bad.append(_bad(None, src, ref, "image_id", "missing_image",
                                f"{where}: image_id {a.get('image_id')!r} is not in the file's images"))
            continue
        cat = cats.get(a.get("category_id"))
        if cat is None or cat not in known:
            ann.bad.append(_bad(image, src, ref, "category_id", "unknown_category",
                                f"{where}: category_id {a.get('category_id')!r} ({cat!r}) is not a known class {sorted(known)}"))
            continue
        bbox = a.get("bbox")
        values, err = _check_values(bbox if isinstance(bbox, list) else [bbox], ("x", "y", "w", "h"), where)
        if err is not None:
            ann.bad.append(_bad(image, src, ref, "bbox", err[0], err[1]))
            continue
        ann.boxes.setdefault(image, []).append(_Box(ref, src, values, False, cat))
    return images, ann


# ---- YOLO -----------------------------------------------------------------------------------------


def read_yolo(labels_root: Path, image_rels: set[str], classes: list[str]) -> tuple[Annotations, list[Path]]:
    """The boxes of every ``<stem>.txt`` below ``labels_root``; label files without an image are
    ``missing_image`` (each of their boxes). Returns the annotations and the label files read."""
    ann = Annotations("yolo", list(classes))
    stems = {os.path.splitext(r)[0]: r for r in sorted(image_rels)}
    files = sorted(p for p in labels_root.rglob("*.txt") if p.is_file() and not p.name.startswith("."))
    for f in files:
        rel_txt = f.relative_to(labels_root).as_posix()
        image = stems.get(rel_txt[: -len(".txt")])
        try:
            lines = f.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            ann.received += 1
            ann.bad.append(_bad(image, rel_txt, "file", "file", "malformed_annotation", f"{rel_txt}: cannot be read: {err}"))
            continue
        for n, line in enumerate(lines, start=1):
            parts = line.split()
            if not parts:
                continue
            ann.received += 1
            ref, where = f"line {n}", f"{rel_txt} line {n}"
            if image is None:
                ann.bad.append(_bad(None, rel_txt, ref, "file", "missing_image",
                                    f"{where}: no image with the stem {rel_txt[:-4]!r} in data.source"))
                continue
            if len(parts) != 5:
                ann.bad.append(_bad(image, rel_txt, ref, "line", "malformed_annotation",
                                    f"{where}: expected 'class cx cy w h', got {line.strip()!r}"))
                continue
            try:
                cls = int(parts[0])
            except ValueError:
                cls = -1
            if not 0 <= cls < len(classes) or str(cls) != parts[0].lstrip("+"):
                ann.bad.append(_bad(image, rel_txt, ref, "class", "unknown_category",
                                    f"{where}: class {parts[0]!r} is not an index into data.classes (0..{len(classes) - 1})"))
                continue
            values, err = _check_values(parts[1:], ("cx", "cy", "w", "h"), where)
            if err is not None:
                ann.bad.append(_bad(image, rel_txt, ref, "bbox", err[0], err[1]))
                continue
            ann.boxes.setdefault(image, []).append(_Box(ref, rel_txt, values, True, classes[cls]))
    return ann, files


# ---- the collector of the detection kind ------------------------------------------------------------


def collect(spec, src: Path, fmt: str) -> Collection:
    """List the images and read the annotations of a ``coco`` or ``yolo`` source for ingest."""
    if not src.is_dir():
        raise IngestError(f"data.source {src} must be the images folder for data.format: {fmt}")
    if not spec.data.annotations:
        raise IngestError(f"data.format: {fmt} needs data.annotations ({'the COCO JSON file' if fmt == 'coco' else 'the labels folder'})")
    root = os.path.realpath(src)
    ann_path = spec.resolve_path(spec.data.annotations)
    sidecar = read_sidecar(root)
    meta_files = [sidecar.path] if sidecar is not None else []
    items: list[Item] = []
    bad: list[Quarantined] = []
    if fmt == "coco":
        if not ann_path.is_file():
            raise IngestError(f"data.annotations {ann_path} is not a file (the COCO JSON)")

        def rel_of(name: str) -> str:
            p = name if os.path.isabs(name) else os.path.join(root, name)
            return Path(os.path.relpath(os.path.normpath(p), root)).as_posix()

        try:
            records, ann = read_coco(ann_path, list(spec.data.classes) if spec.data.classes else None, rel_of)
        except ValueError as err:
            raise IngestError(str(err)) from None
        seen: dict[str, int] = {}
        for rec in records:
            it = Item(rec["given"], rec["rel"], rec["row"])
            if rec["rel"] is None:
                bad.append(it.quarantine("missing_file", "file_name", f"{ann_path.name} image #{rec['row']} has no file_name"))
                continue
            m = (sidecar.get(rec["rel"]) if sidecar is not None else None) or ItemMeta()
            it = it.replace(camera=text_or_none(rec.get("camera")) or text_or_none(m.camera),
                            scene=text_or_none(rec.get("scene")) or text_or_none(m.scene),
                            captured_at=rec.get("captured_at") if rec.get("captured_at") is not None else m.captured_at)
            norm = os.path.normpath(os.path.join(root, rec["rel"]))
            if not inside(norm, root):
                bad.append(it.quarantine("path_escapes_root", "file_name", f"{norm} is outside the data root {root}"))
                continue
            if norm in seen:
                bad.append(it.quarantine("duplicate_row", "file_name", f"the file is already listed as image #{seen[norm]}"))
                continue
            seen[norm] = rec["row"]
            it = it.replace(norm_path=norm)
            parent, name = os.path.split(norm)
            real_parent = os.path.realpath(parent)
            if not inside(real_parent, root):
                bad.append(it.quarantine("path_escapes_root", "file_name", f"its folder resolves to {real_parent}, outside {root}"))
                continue
            items.append(it.replace(real_path=os.path.join(real_parent, name)))
        received = len(records)
        meta_files = [ann_path, *meta_files]
    else:
        if not spec.data.classes:
            raise IngestError("data.format: yolo needs data.classes (the class names, in class-index order)")
        if not ann_path.is_dir():
            raise IngestError(f"data.annotations {ann_path} is not a folder (the YOLO labels folder)")
        labels_real = os.path.realpath(ann_path)
        for p in sorted(Path(root).rglob("*")):
            if p.suffix.lower() not in IMAGE_SUFFIXES or any(part.startswith(".") for part in p.relative_to(root).parts):
                continue
            if inside(os.path.realpath(p.parent), labels_real):
                continue
            rel = p.relative_to(root).as_posix()
            it = Item(rel, rel, None, norm_path=str(p))
            if sidecar is not None:
                it = sidecar.apply(it)
            real = os.path.realpath(p)
            if not inside(real, root):
                bad.append(it.quarantine("path_escapes_root", "path", f"symlink resolves to {real}, outside the data root {root}"))
                continue
            items.append(it.replace(real_path=real))
        received = len(items) + len(bad)
        ann, label_files = read_yolo(ann_path, {it.rel_path for it in items}, list(spec.data.classes))
        meta_files = [*label_files, *meta_files]
    cands, more_bad = check_metadata(spec, items, labels=False)
    return Collection(root, fmt, cands, bad + more_bad, received, meta_files, finisher=BoxCheck(ann))
