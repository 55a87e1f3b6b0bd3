"""Typed ingest records, the source readers (one metadata-sidecar reader for every source) and the
data hooks of the task kinds."""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from helpers.imagefactory import write_image

from conveyor import kinds
from conveyor.core.spec import SpecError, metric_directions, spec_from_dict
from conveyor.data import collection, sources
from conveyor.data.digest import annotation_digest
from conveyor.data.fingerprint import source_fingerprint
from conveyor.data.ingest import ingest
from conveyor.data.records import Collection, IngestError, Item
from conveyor.kinds.base import TaskKind
from conveyor.kinds.classification import ClassificationKind

SIDECAR = "path,camera,scene,captured_at\n{rel},cam-7, dock ,2026-01-02T03:04:05Z\n"
UTC = timezone.utc


def _spec(tmp_path: Path, task: str, data: dict) -> object:
    return spec_from_dict({"name": "s", "task": task, "data": {"min_side": 8, **data}}, base_dir=tmp_path)


def _folder_source(tmp_path: Path) -> tuple[object, str]:
    write_image(tmp_path / "data" / "cat" / "a.png", seed=1)
    (tmp_path / "data" / "metadata.csv").write_text(SIDECAR.format(rel="cat/a.png"))
    return _spec(tmp_path, "classification", {"source": "data"}), "cat/a.png"


def _mask_source(tmp_path: Path) -> tuple[object, str]:
    write_image(tmp_path / "images" / "p" / "a.png", size=(16, 16), seed=2)
    (tmp_path / "masks" / "p").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16), np.uint8), "L").save(tmp_path / "masks" / "p" / "a.png")
    (tmp_path / "images" / "metadata.csv").write_text(SIDECAR.format(rel="p/a.png"))
    return _spec(tmp_path, "segmentation", {"source": "images", "format": "masks", "annotations": "masks",
                                            "classes": ["background", "defect"]}), "p/a.png"


def _yolo_source(tmp_path: Path) -> tuple[object, str]:
    write_image(tmp_path / "images" / "a.png", size=(16, 16), seed=3)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (tmp_path / "images" / "metadata.csv").write_text(SIDECAR.format(rel="a.png"))
    return _spec(tmp_path, "detection", {"source": "images", "format": "yolo", "annotations": "labels",
                                         "classes": ["box"]}), "a.png"


def _coco_source(tmp_path: Path) -> tuple[object, str]:
    import json

    write_image(tmp_path / "images" / "a.png", size=(16, 16), seed=4)
    coco = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "box"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    (tmp_path / "images" / "metadata.csv").write_text(SIDECAR.format(rel="a.png"))
    return _spec(tmp_path, "detection", {"source": "images", "format": "coco", "annotations": "coco.json"}), "a.png"


SOURCES = {"folder": _folder_source, "masks": _mask_source, "yolo": _yolo_source, "coco": _coco_source}


@pytest.mark.parametrize("fmt", sorted(SOURCES))
def test_every_source_reads_the_sidecar_through_one_reader(tmp_path, monkeypatch, fmt):
    spec, rel = SOURCES[fmt](tmp_path)
    calls: list[str] = []
    real = sources.read_sidecar

    def spy(root):
        calls.append(str(root))
        return real(root)

    monkeypatch.setattr(sources, "read_sidecar", spy)
    from conveyor.kinds.detection import sources as det
    from conveyor.kinds.segmentation import sources as seg

    monkeypatch.setattr(det, "read_sidecar", spy)
    monkeypatch.setattr(seg, "read_sidecar", spy)
    col = collection.collect(spec)
    assert isinstance(col, Collection) and col.format == fmt
    assert len(calls) == 1, "each source reads its sidecar once, with the shared reader"
    (item,) = [it for it in col.candidates if it.rel_path == rel]
    assert (item.camera, item.scene) == ("cam-7", "dock")  # blanks stripped the same way everywhere
    assert item.captured_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert any(p.name == "metadata.csv" for p in col.meta_files)  # the fingerprint sees the sidecar


@pytest.mark.parametrize("fmt", sorted(SOURCES))
def test_a_sidecar_without_paths_is_the_same_error_for_every_source(tmp_path, fmt):
    spec, _ = SOURCES[fmt](tmp_path)
    sidecar = next(p for p in tmp_path.rglob("metadata.csv"))
    sidecar.write_text("camera\ncam-1\n")
    with pytest.raises(IngestError, match=r"metadata sidecar .*metadata.csv lacks the column 'path'"):
        collection.collect(spec)


@pytest.mark.parametrize("fmt", sorted(SOURCES))
def test_a_changed_sidecar_changes_version_and_fingerprint(tmp_path, fmt):
    spec, rel = SOURCES[fmt](tmp_path)
    r1, f1 = ingest(spec, tmp_path / "out"), source_fingerprint(spec)
    assert r1.accepted == 1, r1
    m = pl.read_parquet(r1.manifest_path)
    assert m.row(by_predicate=pl.col("id") == rel, named=True)["camera"] == "cam-7"
    sidecar = next(p for p in tmp_path.rglob("metadata.csv"))
    sidecar.write_text(SIDECAR.format(rel=rel).replace("cam-7", "cam-8"))
    r2, f2 = ingest(spec, tmp_path / "out"), source_fingerprint(spec)
    assert r2.dataset_version != r1.dataset_version and f2 != f1


def test_sidecar_reader_keys_and_first_row_wins(tmp_path):
    (tmp_path / "metadata.jsonl").write_text(
        '{"path": "./a/../b.png", "camera": "c1", "captured_at": 1767225600}\n'
        '{"path": "b.png", "camera": "c2"}\n{"path": null, "camera": "c3"}\n')
    side = sources.read_sidecar(tmp_path)
    assert side.path.name == "metadata.jsonl" and list(side.rows) == ["b.png"]
    assert side.get("b.png").camera == "c1" and side.get("b.png").captured_at == 1767225600
    it = Item("b.png", "b.png", None)
    assert side.apply(it).camera == "c1" and it.camera is None  # records are immutable: a new item
    assert side.apply(Item("x.png", "x.png", None)) == Item("x.png", "x.png", None)
    assert sources.read_sidecar(tmp_path / "nowhere-with-no-sidecar") is None


def test_items_are_frozen_and_name_themselves_in_quarantine_rows():
    it = Item("imgs/a.png", None, 3, label="cat")
    with pytest.raises(dataclasses.FrozenInstanceError):
        it.label = "dog"  # type: ignore[misc]
    q = it.quarantine("unknown_label", "label", "label 'cat' is not in data.classes")
    assert (q.path, q.row, q.field, q.reason) == ("imgs/a.png", 3, "label", "unknown_label")
    assert q.detail == "row 3 ('imgs/a.png'): label 'cat' is not in data.classes"
    assert Item("a.png", "cat/a.png", None).quarantine("zero_byte", "path", "empty").detail == "'cat/a.png': empty"


def test_read_item_returns_the_file_a_symlink_points_to(tmp_path):
    target = write_image(tmp_path / "root" / "real.png")
    link = tmp_path / "root" / "link.png"
    os.symlink(target, link)
    data, path = sources.read_item(Item("link.png", "link.png", None, real_path=str(link)), str(tmp_path / "root"), 2**20)
    assert path == str(target) and data == target.read_bytes()
    outside = write_image(tmp_path / "elsewhere.png")
    os.symlink(outside, tmp_path / "root" / "out.png")
    with pytest.raises(sources.ItemError) as err:
        sources.read_item(Item("out.png", "out.png", None, real_path=str(tmp_path / "root" / "out.png")),
                          str(tmp_path / "root"), 2**20)
    assert err.value.reason == "path_escapes_root"


# ---- task kinds ------------------------------------------------------------------------------------


def test_a_kind_refuses_a_source_format_it_does_not_read(tmp_path):
    _coco_source(tmp_path)
    with pytest.raises(IngestError, match="data.format 'coco' is not a source of task 'classification'"):
        kinds.get("classification").collect(None, tmp_path / "images", "coco")
    with pytest.raises(SpecError, match=r"data.format: task 'classification' reads folder, manifest \(or auto\), not 'coco'"):
        _spec(tmp_path, "classification", {"source": "images", "format": "coco", "annotations": "coco.json"})


def test_spec_task_and_gate_metrics_come_from_the_kinds():
    with pytest.raises(SpecError, match="task: must be one of 'classification', 'detection', 'multilabel' or 'segmentation'"):
        spec_from_dict({"name": "s", "task": "pose", "data": {"source": "."}})
    with pytest.raises(SpecError, match="unknown metric 'map50' for task 'classification'"):
        spec_from_dict({"name": "s", "task": "classification", "data": {"source": "."}, "gates": {"rules": ["map50 >= 0.5"]}})
    with pytest.raises(SpecError, match="unknown metric 'iou' for task 'detection'"):
        spec_from_dict({"name": "s", "task": "detection", "data": {"source": "."}, "gates": {"rules": ["iou[box] >= 0.5"]}})
    with pytest.raises(SpecError, match="gates.champion.metrics: unknown metric 'miou' for task 'detection'"):
        spec_from_dict({"name": "s", "task": "detection", "data": {"source": "."}, "gates": {"champion": {"metrics": ["miou"]}}})
    # rules left at their defaults are not checked against the kind (as before)
    assert spec_from_dict({"name": "s", "task": "detection", "data": {"source": "."}}).gates.rules[0] == "f1 >= 0.92"
    assert metric_directions("segmentation")["fn_rate"] == "lower"
    assert metric_directions("detection")["latency_p95_ms"] == "lower"


def test_a_registered_kind_is_a_valid_task(monkeypatch):
    class Plain(ClassificationKind):
        name = "plain-test"

    monkeypatch.setattr(kinds, "_registered", dict(kinds._registered))
    monkeypatch.setattr(kinds, "_instances", dict(kinds._instances))
    kinds.register("plain-test", Plain)
    spec = spec_from_dict({"name": "s", "task": "plain-test", "data": {"source": "."}})
    assert spec.task == "plain-test"


def _split_frame() -> pl.DataFrame:
    box = pl.Struct({"x1": pl.Float64, "y1": pl.Float64, "x2": pl.Float64, "y2": pl.Float64, "category": pl.String})
    return pl.DataFrame({
        "id": ["b", "a"], "split": ["val", "train"], "label": ["cat", None], "width": [10, 20], "height": [10, 5],
        "boxes": pl.Series([[{"x1": 0.0, "y1": 0.0, "x2": 5.0, "y2": 5.0, "category": "cat"}] * 2, []], dtype=pl.List(box)),
        "mask_hash": ["h1", "h2"], "mask_classes": [["background", "cat"], ["background"]],
    })


def test_class_frames_annotation_digests_and_profile_columns_per_kind():
    df = _split_frame()
    assert kinds.get("classification").class_frame(df).rows() == [("val", "cat"), ("train", None)]
    assert kinds.get("detection").class_frame(df).rows() == [("val", "cat"), ("val", "cat")]
    assert kinds.get("segmentation").class_frame(df).rows() == [("val", "background"), ("val", "cat"), ("train", "background")]
    assert kinds.get("classification").annotation_digest(df) == ""
    det, seg = kinds.get("detection").annotation_digest(df), kinds.get("segmentation").annotation_digest(df)
    assert det and seg and det != seg
    assert annotation_digest(df, "classification") is None and annotation_digest(df, "detection") == det
    assert annotation_digest(df.drop("mask_hash")) == det and annotation_digest(df.drop("boxes")) == seg
    assert kinds.get("detection").annotation_digest(df.drop("boxes")) == ""
    feats = df.select(kinds.get("detection").profile_columns(df))
    assert feats["objects"].to_list() == [2.0, 0.0]
    assert feats["object_size"][0] == pytest.approx(0.5)
    assert kinds.get("classification").profile_columns(df) == []
    assert kinds.get("segmentation").check_classes(["background", "defect"]) == ["background", "defect"]
    with pytest.raises(ValueError, match="background class"):
        kinds.get("segmentation").check_classes(["defect"])


def test_every_kind_suite_exists_and_every_kind_answers_the_data_hooks():
    from conveyor.data import contracts

    names = {p.stem for p in contracts.contracts_dir().glob("*.json")}
    for name in kinds.available():
        kind = kinds.get(name)
        assert isinstance(kind, TaskKind)
        assert set(kind.contract_suites) <= names and kind.coverage_suite in kind.contract_suites
        assert set(kind.annotation_columns).isdisjoint({"id", "label", "path"})
        assert set(kind.default_gate_metrics) <= set(kind.metrics) and kind.per_class_metrics <= set(kind.metrics)
        m = _split_frame()
        assert set(kind.contract_frames(m, None, None)) <= set(kind.contract_suites)
        assert set(kind.contract_frames(m, m, None)) <= set(kind.contract_suites)
