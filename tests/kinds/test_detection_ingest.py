"""Detection sources: COCO and YOLO ingest, bad-annotation quarantine, box accounting, contracts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from conveyor.data.contracts import run_contracts
from conveyor.data.curate import curate
from conveyor.data.ingest import IngestError, ingest
from helpers.specs import detection_spec as _spec
from conveyor.data.split import split

CLASSES = ["cat", "dog"]


def _image(path: Path, w: int = 40, h: int = 30, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(path)


def _coco(tmp_path: Path, annotations: list[dict], images: list[dict] | None = None) -> Path:
    if images is None:
        images = []
        for i in range(1, 5):
            _image(tmp_path / "images" / f"cam{i}" / f"img{i}.png", seed=i)
            images.append({"id": i, "file_name": f"cam{i}/img{i}.png", "width": 40, "height": 30, "camera": f"cam{i}"})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    return path


def _ann(aid: int, image_id: int, cat: int, bbox) -> dict:
    return {"id": aid, "image_id": image_id, "category_id": cat, "bbox": bbox}


def _boxes(manifest_path: str) -> dict[str, list[dict]]:
    df = pl.read_parquet(manifest_path)
    return dict(zip(df["id"].to_list(), df["boxes"].to_list()))


def test_coco_boxes_become_absolute_xyxy_and_negatives_stay(tmp_path):
    _coco(tmp_path, [_ann(1, 1, 1, [2, 3, 10, 5]), _ann(2, 1, 2, [20.5, 0, 19.5, 30]), _ann(3, 2, 2, [0, 0, 4, 4])])
    res = ingest(_spec(tmp_path, "coco", "coco.json"), tmp_path / "ws")
    assert (res.received, res.accepted, res.quarantined) == (4, 4, 0)
    assert res.classes == CLASSES
    assert res.annotations["boxes_received"] == 3 and res.annotations["boxes_accepted"] == 3
    assert res.annotations["negative_images"] == 2
    boxes = _boxes(res.manifest_path)
    assert boxes["cam1/img1.png"] == [
        {"x1": 2.0, "y1": 3.0, "x2": 12.0, "y2": 8.0, "category": "cat"},
        {"x1": 20.5, "y1": 0.0, "x2": 40.0, "y2": 30.0, "category": "dog"},
    ]
    assert boxes["cam3/img3.png"] == []  # a negative image is kept
    assert pl.read_parquet(res.manifest_path)["label"].null_count() == 4


@pytest.mark.parametrize(
    ("ann", "reason", "field"),
    [
        (_ann(9, 1, 1, [30, 5, 20, 5]), "box_outside_image", "bbox"),  # x2 = 50 > width 40
        (_ann(9, 1, 1, [-3, 5, 10, 5]), "box_outside_image", "bbox"),
        (_ann(9, 1, 1, [3, 5, 0, 5]), "empty_box", "bbox"),
        (_ann(9, 1, 1, [3, 5, 4, -1]), "empty_box", "bbox"),
        (_ann(9, 1, 1, [float("nan"), 5, 4, 4]), "nan_box", "bbox"),
        (_ann(9, 1, 1, [1, 2, 3]), "nan_box", "bbox"),
        (_ann(9, 1, 7, [1, 2, 3, 4]), "unknown_category", "category_id"),
        (_ann(9, 42, 1, [1, 2, 3, 4]), "missing_image", "image_id"),
    ],
)
def test_coco_bad_annotation_quarantines_the_box_only(tmp_path, ann, reason, field):
    _coco(tmp_path, [_ann(1, 1, 2, [1, 1, 5, 5]), ann])
    res = ingest(_spec(tmp_path, "coco", "coco.json"), tmp_path / "ws")
    assert (res.accepted, res.quarantined) == (4, 0)  # the image stays
    a = res.annotations
    assert (a["boxes_received"], a["boxes_accepted"], a["boxes_quarantined"]) == (2, 1, 1)
    assert a["box_quarantine_reasons"] == {reason: 1}
    bq = pl.read_parquet(Path(res.manifest_path).parent / "box_quarantine.parquet")
    row = bq.row(0, named=True)
    assert row["reason"] == reason and row["field"] == field
    assert "coco.json" in row["detail"] and "annotation id 9" in row["detail"]
    assert _boxes(res.manifest_path)["cam1/img1.png"] == [{"x1": 1.0, "y1": 1.0, "x2": 6.0, "y2": 6.0, "category": "dog"}]


def test_coco_quarantined_image_takes_its_boxes_and_accounting_is_exact(tmp_path):
    images = []
    for i in range(1, 4):
        _image(tmp_path / "images" / f"img{i}.png", seed=i)
        images.append({"id": i, "file_name": f"img{i}.png", "camera": "c"})
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    images.append({"id": 4, "file_name": "broken.png"})
    images.append({"id": 5, "file_name": "missing.png"})
    anns = [_ann(1, 1, 1, [1, 1, 5, 5]), _ann(2, 4, 1, [1, 1, 5, 5]), _ann(3, 5, 2, [1, 1, 5, 5])]
    _coco(tmp_path, anns, images)
    res = ingest(_spec(tmp_path, "coco", "coco.json"), tmp_path / "ws")
    assert res.received == 5 and res.accepted + res.quarantined == res.received
    assert res.quarantine_reasons == {"corrupt": 1, "missing_file": 1}
    a = res.annotations
    assert a["boxes_accepted"] + a["boxes_quarantined"] == a["boxes_received"] == 3
    assert a["box_quarantine_reasons"] == {"image_quarantined": 2}


def test_dataset_version_changes_when_one_box_changes(tmp_path):
    _coco(tmp_path, [_ann(1, 1, 1, [1, 1, 5, 5])])
    spec = _spec(tmp_path, "coco", "coco.json")
    v1 = ingest(spec, tmp_path / "ws").dataset_version
    assert ingest(spec, tmp_path / "ws").dataset_version == v1
    _coco(tmp_path, [_ann(1, 1, 1, [1, 1, 5, 6])])
    assert ingest(spec, tmp_path / "ws").dataset_version != v1
    _coco(tmp_path, [_ann(1, 1, 2, [1, 1, 5, 5])])
    assert ingest(spec, tmp_path / "ws").dataset_version != v1


def test_coco_classes_default_to_the_categories(tmp_path):
    _coco(tmp_path, [_ann(1, 1, 2, [1, 1, 5, 5])])
    res = ingest(_spec(tmp_path, "coco", "coco.json", classes=None), tmp_path / "ws")
    assert res.classes == ["cat", "dog"]


def test_coco_needs_annotations(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(IngestError, match="data.annotations"):
        ingest(_spec(tmp_path, "coco", None), tmp_path / "ws")


def _yolo(tmp_path: Path, labels: dict[str, str], images: list[str]) -> None:
    for i, rel in enumerate(images):
        _image(tmp_path / "images" / rel, w=40, h=20, seed=i)
    for rel, text in labels.items():
        p = tmp_path / "labels" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_yolo_normalised_boxes_become_absolute_xyxy(tmp_path):
    _yolo(tmp_path, {"a/one.txt": "0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.5 0.5\n"}, ["a/one.png", "a/two.png"])
    res = ingest(_spec(tmp_path, "yolo", "labels"), tmp_path / "ws")
    assert (res.received, res.accepted) == (2, 2)
    boxes = _boxes(res.manifest_path)
    assert boxes["a/one.png"] == [
        {"x1": 10.0, "y1": 5.0, "x2": 30.0, "y2": 15.0, "category": "cat"},
        {"x1": 0.0, "y1": 0.0, "x2": 20.0, "y2": 10.0, "category": "dog"},
    ]
    assert boxes["a/two.png"] == []  # no label file: a negative
    assert res.annotations["negative_images"] == 1


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("0 0.9 0.5 0.4 0.2", "box_outside_image"),
        ("0 0.5 0.5 0 0.2", "empty_box"),
        ("0 nan 0.5 0.1 0.2", "nan_box"),
        ("2 0.5 0.5 0.1 0.2", "unknown_category"),
        ("-1 0.5 0.5 0.1 0.2", "unknown_category"),
        ("0 0.5 0.5", "malformed_annotation"),
    ],
)
def test_yolo_bad_line_quarantines_that_box(tmp_path, line, reason):
    _yolo(tmp_path, {"one.txt": f"1 0.5 0.5 0.2 0.2\n{line}\n"}, ["one.png"])
    res = ingest(_spec(tmp_path, "yolo", "labels"), tmp_path / "ws")
    assert res.accepted == 1
    a = res.annotations
    assert (a["boxes_received"], a["boxes_accepted"], a["boxes_quarantined"]) == (2, 1, 1)
    assert a["box_quarantine_reasons"] == {reason: 1}
    bq = pl.read_parquet(Path(res.manifest_path).parent / "box_quarantine.parquet")
    assert "one.txt line 2" in bq["detail"][0]


def test_yolo_label_file_without_image(tmp_path):
    _yolo(tmp_path, {"one.txt": "0 0.5 0.5 0.2 0.2\n", "ghost.txt": "1 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n"}, ["one.png"])
    res = ingest(_spec(tmp_path, "yolo", "labels"), tmp_path / "ws")
    assert res.annotations["box_quarantine_reasons"] == {"missing_image": 2}
    assert res.annotations["boxes_received"] == 3


def test_yolo_needs_classes(tmp_path):
    _yolo(tmp_path, {}, ["one.png"])
    with pytest.raises(IngestError, match="data.classes"):
        ingest(_spec(tmp_path, "yolo", "labels", classes=None), tmp_path / "ws")


def _pipeline(tmp_path: Path, anns: list[dict], images: list[dict], min_per_class_eval: int = 1):
    _coco(tmp_path, anns, images)
    spec = _spec(tmp_path, "coco", "coco.json",
                 split={"group_by": "camera", "ratios": {"train": 0.5, "val": 0.25, "test": 0.25},
                        "min_per_class_eval": min_per_class_eval})
    res = ingest(spec, tmp_path / "ws" / "datasets")
    cur = curate(res.manifest_path, spec, tmp_path / "ws" / "curated")
    spl = split(cur.curated_path, spec, tmp_path / "ws" / "splits", tmp_path / "ws" / "state",
                dataset_version=res.dataset_version, classes=res.classes)
    rep = run_contracts(pl.read_parquet(res.manifest_path), pl.read_parquet(spl.split_path), spec, res.classes,
                        raise_on_failure=False)
    return spec, res, spl, rep


def _four_cameras(tmp_path: Path) -> tuple[list[dict], list[dict]]:
    images, anns = [], []
    for i in range(8):
        _image(tmp_path / "images" / f"c{i % 4}" / f"{i}.png", seed=10 + i)
        images.append({"id": i + 1, "file_name": f"c{i % 4}/{i}.png", "camera": f"c{i % 4}"})
        anns.append(_ann(2 * i + 1, i + 1, 1, [1, 1, 10, 10]))
        anns.append(_ann(2 * i + 2, i + 1, 2, [15, 5, 10, 10]))
    return images, anns


def test_contracts_pass_on_a_clean_detection_split(tmp_path):
    images, anns = _four_cameras(tmp_path)
    _, res, spl, rep = _pipeline(tmp_path, anns, images)
    assert rep.success, rep.summary()
    names = [s.name for s in rep.suites]
    assert {"detection_manifest", "detection_boxes", "detection_split_frame", "detection_class_coverage",
            "split_groups", "split_duplicates", "split_near_duplicates"} <= set(names)
    assert "boxes" in pl.read_parquet(spl.split_path).columns


def test_contracts_fail_when_a_class_lacks_boxes_in_eval(tmp_path):
    images, anns = _four_cameras(tmp_path)
    _, _, _, rep = _pipeline(tmp_path, anns, images, min_per_class_eval=5)  # 2 images per camera: 2 boxes each
    assert not rep.success
    assert [f.suite for f in rep.failed] == ["detection_class_coverage"]


def test_box_contract_catches_an_invalid_box_in_the_manifest(tmp_path):
    from conveyor.data.contracts import contract_params, validate_manifest

    images, anns = _four_cameras(tmp_path)
    spec, res, _, _ = _pipeline(tmp_path, anns, images)
    m = pl.read_parquet(res.manifest_path)
    bad = [{"x1": 5.0, "y1": 1.0, "x2": 3.0, "y2": 50.0, "category": "cow"}]
    m = m.with_columns(pl.Series("boxes", [bad] + m["boxes"].to_list()[1:], dtype=m.schema["boxes"]))
    rep = validate_manifest(m, contract_params(spec, res.classes))
    failed = {(f.suite, f.expectation) for f in rep.failed}
    assert ("detection_boxes", "expect_column_pair_values_a_to_be_greater_than_b") in failed
    assert ("detection_boxes", "expect_column_values_to_be_in_set") in failed


def test_curated_and_split_versions_follow_the_boxes(tmp_path):
    images, anns = _four_cameras(tmp_path)
    _, res1, spl1, _ = _pipeline(tmp_path, anns, images)
    cur1 = curate(res1.manifest_path, _spec(tmp_path, "coco", "coco.json"), tmp_path / "ws" / "curated")
    anns[0]["bbox"] = [2, 1, 10, 10]
    _, res2, spl2, _ = _pipeline(tmp_path, anns, images)
    cur2 = curate(res2.manifest_path, _spec(tmp_path, "coco", "coco.json"), tmp_path / "ws" / "curated")
    assert res2.dataset_version != res1.dataset_version
    assert cur2.curated_version != cur1.curated_version
    assert spl2.split_version != spl1.split_version
    first = pl.read_parquet(spl2.split_path).filter(pl.col("id") == "c0/0.png")["boxes"][0].to_list()
    assert first[0]["x1"] == 2.0
