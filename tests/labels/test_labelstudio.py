"""Label Studio review queue: config, brush RLE, export, and reading a reviewed export back."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from conveyor.labels import labelstudio as ls

CLS = ["cat", "dog", "bird"]
DET = ["car", "person"]
SEG = ["background", "road", "car"]


# -------------------------------------------------------------------------------------------------
# helpers


def _images(tmp_path: Path, n: int, size: tuple[int, int] = (40, 30)) -> tuple[list[dict], dict[str, dict]]:
    """n tiny PNGs; returns queue items (without predictions) and the ``known`` map."""
    items, known = [], {}
    for k in range(n):
        p = tmp_path / "img" / f"im{k}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size[1], size[0], 3), 10 * k, dtype=np.uint8)).save(p)
        h = hashlib.sha256(p.read_bytes() + bytes([k])).hexdigest()
        known[h] = {"id": f"img-{k}", "width": size[0], "height": size[1], "path": str(p)}
        items.append({"id": f"img-{k}", "content_hash": h, "image": f"/data/local-files/?d=img/im{k}.png",
                      "width": size[0], "height": size[1], "camera": f"cam-{k % 2}", "reason": "uncertain",
                      "score": 0.5 + k / 100, "confidence": 0.6})
    return items, known


def _export(tasks: list[dict], edits: dict[int, list] | None = None, start_id: int = 100) -> list[dict]:
    """What Label Studio exports after review: each task with an id and one annotation (the prediction
    accepted, or the edited result given in ``edits``)."""
    out = []
    for k, t in enumerate(tasks):
        t = copy.deepcopy(t)
        t["id"] = start_id + k
        result = edits[k] if edits and k in edits else (t["predictions"][0]["result"] if t["predictions"] else [])
        t["annotations"] = [{"id": 1, "completed_by": 1, "was_cancelled": False, "result": copy.deepcopy(result)}]
        out.append(t)
    return out


def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _check_counts(res: ls.ReviewChecked) -> None:
    assert len(res.accepted) + res.quarantined.height == res.received
    assert dict(res.quarantined.schema) == ls.QUARANTINE_SCHEMA


def _reason_by_row(res: ls.ReviewChecked) -> dict[int, str]:
    return dict(zip(res.quarantined["row"].to_list(), res.quarantined["reason"].to_list()))


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _brush(mask: np.ndarray, cls: str, rid: str = "r") -> dict:
    h, w = mask.shape
    return {"id": rid, "from_name": "label", "to_name": "image", "type": "brushlabels", "original_width": w,
            "original_height": h, "image_rotation": 0,
            "value": {"format": "rle", "rle": ls.rle_encode(mask), "brushlabels": [cls]}}


def _rect(x, y, w, h, cls, W=40, H=30, rid="b") -> dict:
    return {"id": rid, "from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": W,
            "original_height": H, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [cls]}}


def _choice(cls: str) -> list[dict]:
    return [{"id": "c", "from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [cls]}}]


# -------------------------------------------------------------------------------------------------
# label config


@pytest.mark.parametrize("task,classes,tag,shown", [
    ("classification", ["cat", 'a&b <"c">'], "Choices", ["cat", 'a&b <"c">']),
    ("detection", ["car", "person"], "RectangleLabels", ["car", "person"]),
    ("segmentation", ["background", "road", "car's"], "BrushLabels", ["road", "car's"]),
])
def test_label_config_is_xml_with_the_classes(task, classes, tag, shown):
    root = ET.fromstring(ls.label_config(task, classes))
    assert root.tag == "View"
    image = root.find("Image")
    assert image.get("name") == "image" and image.get("value") == "$image"
    ctl = root.find(tag)
    assert ctl.get("name") == "label" and ctl.get("toName") == "image"
    assert [c.get("value") for c in ctl] == shown
    if task == "classification":
        assert ctl.get("choice") == "single"


def test_label_config_rejects_bad_input():
    with pytest.raises(ValueError):
        ls.label_config("keypoints", CLS)
    with pytest.raises(ValueError):
        ls.label_config("classification", ["a", "a"])
    with pytest.raises(ValueError):
        ls.label_config("segmentation", ["background"])


# -------------------------------------------------------------------------------------------------
# brush RLE


def _reference_decode(rle: list[int]) -> list[int]:
    """A literal reading of the bit layout (independent of the module): the decoded byte values."""
    bits = "".join(f"{b:08b}" for b in rle)
    pos = 0

    def take(n):
        nonlocal pos
        v = int(bits[pos:pos + n], 2)
        pos += n
        return v

    num, word = take(32), take(5) + 1
    sizes = [take(4) + 1 for _ in range(4)]
    out: list[int] = []
    while len(out) < num:
        flag = take(1)
        count = 1 + take(sizes[take(2)])
        out.extend([take(word)] * count if flag else [take(word) for _ in range(count)])
    return out


def test_rle_known_example_one_painted_pixel():
    # 4 values; word size 8 (7); field sizes 3, 4, 8, 16 (2, 3, 7, 15); one run of 4 x 255; zero padding.
    bits = f"{4:032b}" + "00111" + "0010" "0011" "0111" "1111" + "1" "00" "011" + "11111111"
    bits += "0" * (8 - len(bits) % 8)
    expected = list(int(bits, 2).to_bytes(len(bits) // 8, "big"))
    assert ls.rle_encode(np.ones((1, 1), bool)) == expected
    assert ls.rle_decode(expected, 1, 1).tolist() == [[True]]


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (3, 5), (17, 23), (64, 48), (200, 200)])
def test_rle_round_trip(shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    masks = [np.zeros(shape, bool), np.ones(shape, bool), rng.random(shape) < 0.5, rng.random(shape) < 0.05]
    blob = np.zeros(shape, bool)
    blob[shape[0] // 4: shape[0] // 2 + 1, shape[1] // 3: shape[1] - 1] = True
    masks.append(blob)
    for m in masks:
        rle = ls.rle_encode(m)
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in rle)
        back = ls.rle_decode(rle, *shape)
        assert back.dtype == bool and back.shape == shape
        assert np.array_equal(back, m)
        if m.size <= 64 * 48:
            assert _reference_decode(rle) == np.repeat(np.where(m.ravel(), 255, 0), 4).tolist()


def test_rle_decode_reads_literal_records_and_alpha():
    # Hand-made stream with a literal record (flag 0): 2 pixels, RGBA (10, 20, 30, 0) then a run of 4 x 255.
    bits = f"{8:032b}" + "00111" + "0010" "0011" "0111" "1111"
    bits += "0" "00" "011" + "".join(f"{v:08b}" for v in (10, 20, 30, 0))  # 4 literal words
    bits += "1" "00" "011" + "11111111"
    bits += "0" * (8 - len(bits) % 8)
    rle = list(int(bits, 2).to_bytes(len(bits) // 8, "big"))
    assert ls.rle_decode(rle, 1, 2).tolist() == [[False, True]]


def test_rle_decode_rejects_garbage():
    good = ls.rle_encode(np.eye(6, dtype=bool))
    bad_inputs = [
        [], [1, 2, 3], "abc", None, 17, {"rle": good}, [256] + good[1:], [-1] + good[1:], ["a"] + good[1:],
        [True] + good[1:], [1.5] + good[1:], good[:9], good[:-3],
        list(range(200)),
    ]
    for bad in bad_inputs:
        with pytest.raises(ValueError):
            ls.rle_decode(bad, 6, 6)
    with pytest.raises(ValueError):
        ls.rle_decode(good, 6, 7)  # wrong size
    with pytest.raises(ValueError):
        ls.rle_decode(good, 0, 6)
    # a run past the end: header says 4 values, the record says 8
    bits = f"{4:032b}" + "00111" + "0010" "0011" "0111" "1111" + "1" "00" "111" + "11111111" + "0000"
    with pytest.raises(ValueError):
        ls.rle_decode(list(int(bits, 2).to_bytes(len(bits) // 8, "big")), 1, 1)


def test_rle_decode_of_mutated_streams_raises_only_value_error():
    rnd = random.Random(7)
    good = ls.rle_encode(np.random.default_rng(1).random((9, 11)) < 0.3)
    for _ in range(300):
        bad = list(good)
        for _ in range(rnd.randint(1, 4)):
            k = rnd.randrange(len(bad))
            bad[k] = rnd.randrange(256)
        if rnd.random() < 0.3:
            bad = bad[: rnd.randrange(len(bad))]
        try:
            out = ls.rle_decode(bad, 9, 11)
        except ValueError:
            continue
        assert out.shape == (9, 11) and out.dtype == bool


# -------------------------------------------------------------------------------------------------
# export


def test_make_task_shapes(tmp_path):
    items, _ = _images(tmp_path, 1)
    it = dict(items[0], boxes=[{"x1": 4, "y1": 3, "x2": 24, "y2": 18, "category": "car", "score": 0.9}])
    t = ls.make_task(it, "detection", DET, "v7")
    assert t["data"] == {"image": it["image"], "content_hash": it["content_hash"], "conveyor_id": "img-0",
                         "camera": "cam-0", "reason": "uncertain", "score": 0.5}
    (pred,) = t["predictions"]
    assert pred["model_version"] == "v7" and pred["score"] == 0.6
    (r,) = pred["result"]
    assert r["type"] == "rectanglelabels" and r["from_name"] == "label" and r["to_name"] == "image"
    assert (r["original_width"], r["original_height"], r["image_rotation"], r["score"]) == (40, 30, 0, 0.9)
    v = dict(r["value"])
    assert v.pop("rectanglelabels") == ["car"]
    assert v == pytest.approx({"x": 10.0, "y": 10.0, "width": 50.0, "height": 50.0, "rotation": 0})
    assert isinstance(r["id"], str) and 0 < len(r["id"]) <= 16
    assert ls.make_task(dict(items[0], predicted=None), "classification", CLS, "v7")["predictions"] == []
    assert ls.make_task(dict(items[0], mask=None), "segmentation", SEG, "v7")["predictions"] == []
    with pytest.raises(ValueError):
        ls.make_task(dict(items[0], predicted="horse"), "classification", CLS, "v7")
    mask = np.zeros((30, 40), np.uint8)
    mask[:5] = 2
    mask[5:10] = 255
    seg = ls.make_task(dict(items[0], mask=mask), "segmentation", SEG, "v7")["predictions"][0]["result"]
    assert [r["value"]["brushlabels"] for r in seg] == [["car"]]
    assert np.array_equal(ls.rle_decode(seg[0]["value"]["rle"], 30, 40), mask == 2)


def test_write_queue_files(tmp_path):
    items, _ = _images(tmp_path, 2)
    items[0]["boxes"] = [{"x1": 1.234, "y1": 2, "x2": 10, "y2": 12, "category": "person"}]
    items[1]["boxes"] = []
    paths = ls.write_queue(tmp_path / "q", items, "detection", DET, "v1")
    assert set(paths) == {"tasks", "config", "csv"}
    tasks = json.loads(Path(paths["tasks"]).read_text())
    assert len(tasks) == 2 and tasks[1]["predictions"][0]["result"] == []
    ET.fromstring(Path(paths["config"]).read_text())
    rows = _read_csv(Path(paths["csv"]))
    assert list(rows[0]) == ["id", "content_hash", "image", "camera", "reason", "score", "predicted", "confidence",
                             "current_label", "label", "boxes"]
    assert rows[0]["label"] == "" and json.loads(rows[0]["boxes"])[0]["category"] == "person"
    assert json.loads(rows[1]["boxes"]) == []
    assert not list((tmp_path / "q").glob("*.tmp"))


# -------------------------------------------------------------------------------------------------
# round trips through Label Studio's export


def test_classification_round_trip(tmp_path):
    items, known = _images(tmp_path, 4)
    for it, cls in zip(items, ["cat", "dog", "bird", None]):
        it["predicted"] = cls
    paths = ls.write_queue(tmp_path / "q", items, "classification", CLS, "v1")
    tasks = json.loads(Path(paths["tasks"]).read_text())
    assert tasks[3]["predictions"] == []
    edited = copy.deepcopy(tasks[1]["predictions"][0]["result"])
    edited[0]["value"]["choices"] = ["cat"]
    export = _export(tasks, {1: edited, 3: _choice("bird")})
    res = ls.read_review(_write_json(tmp_path / "export.json", export), "classification", CLS, known)
    _check_counts(res)
    assert res.quarantined.is_empty() and res.reasons == {}
    got = {r.id: r.label for r in res.accepted}
    assert got == {"img-0": "cat", "img-1": "cat", "img-2": "bird", "img-3": "bird"}
    first = res.accepted[0]
    assert first.content_hash == items[0]["content_hash"] and first.reviewer == "1"
    assert first.where == "task 100 (row 1)" and first.boxes is None and first.mask is None


def test_detection_round_trip(tmp_path):
    items, known = _images(tmp_path, 3, size=(40, 30))
    items[0]["boxes"] = [{"x1": 4, "y1": 3, "x2": 24, "y2": 18, "category": "car", "score": 0.9},
                         {"x1": 0, "y1": 0, "x2": 40, "y2": 30, "category": "person", "score": 0.4}]
    items[1]["boxes"] = [{"x1": 10.5, "y1": 7.25, "x2": 13, "y2": 29, "category": "person"}]
    items[2]["boxes"] = []
    paths = ls.write_queue(tmp_path / "q", items, "detection", DET, "v1")
    tasks = json.loads(Path(paths["tasks"]).read_text())
    r0 = copy.deepcopy(tasks[0]["predictions"][0]["result"])
    r0[0]["value"]["x"] += 5.0  # moved right by 2 px
    r0[1]["value"]["rectanglelabels"] = ["car"]  # relabelled
    r2 = [_rect(50, 10, 50.2, 20, "person")]  # drawn from scratch, tiny overshoot of 0.2 percent is clipped
    export = _export(tasks, {0: r0, 2: r2})
    res = ls.read_review(_write_json(tmp_path / "export.json", export), "detection", DET, known)
    _check_counts(res)
    assert res.quarantined.is_empty(), res.quarantined.to_dicts()
    got = {r.id: r.boxes for r in res.accepted}
    expected = {
        "img-0": [(6, 3, 26, 18, "car"), (0, 0, 40, 30, "car")],
        "img-1": [(10.5, 7.25, 13, 29, "person")],
        "img-2": [(20, 3, 40, 9, "person")],
    }
    for k, boxes in expected.items():
        assert len(got[k]) == len(boxes)
        for b, (x1, y1, x2, y2, cat) in zip(got[k], boxes):
            assert b["category"] == cat
            assert np.allclose([b["x1"], b["y1"], b["x2"], b["y2"]], [x1, y1, x2, y2], atol=0.5)
    assert got["img-2"][0]["x2"] == 40.0  # clipped
    assert all(r.label is None and r.mask is None for r in res.accepted)


def test_detection_no_objects_is_a_label(tmp_path):
    items, known = _images(tmp_path, 1)
    items[0]["boxes"] = [{"x1": 1, "y1": 1, "x2": 5, "y2": 5, "category": "car"}]
    tasks = json.loads(Path(ls.write_queue(tmp_path / "q", items, "detection", DET, "v1")["tasks"]).read_text())
    res = ls.read_review(_write_json(tmp_path / "e.json", _export(tasks, {0: []})), "detection", DET, known)
    _check_counts(res)
    assert [r.boxes for r in res.accepted] == [[]]


def test_segmentation_round_trip(tmp_path):
    items, known = _images(tmp_path, 3, size=(12, 10))
    m0 = np.zeros((10, 12), np.uint8)
    m0[2:6, 1:8] = 1
    m0[7:, 9:] = 2
    m1 = np.zeros((10, 12), np.uint8)
    m1[:, :6] = 1
    m1[0, 0] = 255  # ignored pixels are not painted
    items[0]["mask"], items[1]["mask"], items[2]["mask"] = m0, m1, None
    paths = ls.write_queue(tmp_path / "q", items, "segmentation", SEG, "v1")
    tasks = json.loads(Path(paths["tasks"]).read_text())
    assert [r["value"]["brushlabels"] for r in tasks[0]["predictions"][0]["result"]] == [["road"], ["car"]]
    # the reviewer repaints part of the road as car: a later brush stroke over the earlier one
    r0 = copy.deepcopy(tasks[0]["predictions"][0]["result"])
    stroke = np.zeros((10, 12), bool)
    stroke[2:4, 1:4] = True
    r0.append(_brush(stroke, "car", "new"))
    expected0 = m0.copy()
    expected0[stroke] = 2
    new2 = np.zeros((10, 12), np.uint8)
    new2[5:, :] = 1
    export = _export(tasks, {0: r0, 2: [_brush(new2 == 1, "road")]})
    res = ls.read_review(_write_json(tmp_path / "export.json", export), "segmentation", SEG, known)
    _check_counts(res)
    assert res.quarantined.is_empty(), res.quarantined.to_dicts()
    got = {r.id: r.mask for r in res.accepted}
    assert all(m.dtype == np.uint8 and m.shape == (10, 12) for m in got.values())
    assert np.array_equal(got["img-0"], expected0)
    m1_read = m1.copy()
    m1_read[0, 0] = 0
    assert np.array_equal(got["img-1"], m1_read)
    assert np.array_equal(got["img-2"], new2)


# -------------------------------------------------------------------------------------------------
# CSV round trips


def test_csv_round_trip_classification(tmp_path):
    items, known = _images(tmp_path, 3)
    for it, cls in zip(items, ["cat", "dog", None]):
        it["predicted"] = cls
    paths = ls.write_queue(tmp_path / "q", items, "classification", CLS, "v1")
    rows = _read_csv(Path(paths["csv"]))
    assert rows[0]["predicted"] == "cat" and rows[2]["predicted"] == ""
    for r, lab in zip(rows, ["cat", "bird", ""]):
        r["label"] = lab
        r["reviewer"] = "ann"
    res = ls.read_review(_write_csv(tmp_path / "q" / "queue.csv", rows), "classification", CLS, known)
    _check_counts(res)
    assert [(r.id, r.label, r.reviewer, r.where) for r in res.accepted] == [
        ("img-0", "cat", "ann", "row 1"), ("img-1", "bird", "ann", "row 2")]
    assert res.reasons == {"unreviewed": 1}
    q = res.quarantined.to_dicts()[0]
    assert q["row"] == 3 and q["field"] == "label" and "row 3" in q["detail"] and q["task_id"] is None


def test_csv_round_trip_detection(tmp_path):
    items, known = _images(tmp_path, 4)
    items[0]["boxes"] = [{"x1": 4, "y1": 3, "x2": 24, "y2": 18, "category": "car"}]
    items[1]["boxes"] = [{"x1": 1, "y1": 1, "x2": 9, "y2": 9, "category": "person"}]
    items[2]["boxes"] = []
    items[3]["boxes"] = [{"x1": 1, "y1": 1, "x2": 9, "y2": 9, "category": "person"}]
    paths = ls.write_queue(tmp_path / "q", items, "detection", DET, "v1")
    rows = _read_csv(Path(paths["csv"]))
    boxes0 = json.loads(rows[0]["boxes"])
    boxes0[0]["x2"] = 40.3  # moved to the edge, tiny overshoot clipped
    boxes0.append({"x1": 30, "y1": 20, "x2": 35, "y2": 29, "category": "person"})
    rows[0]["boxes"] = json.dumps(boxes0)
    rows[0]["label"] = "ok"
    rows[1]["boxes"] = "[]"  # nothing there
    rows[1]["label"] = "ok"
    rows[2]["boxes"] = ""  # blanked: not reviewed
    rows[2]["label"] = "ok"
    # row 4: prefilled boxes but no sign-off in the label cell -> unreviewed
    res = ls.read_review(_write_csv(tmp_path / "q" / "queue.csv", rows), "detection", DET, known)
    _check_counts(res)
    got = {r.id: r.boxes for r in res.accepted}
    assert got["img-1"] == []
    assert [(b["x1"], b["y1"], b["x2"], b["y2"], b["category"]) for b in got["img-0"]] == [
        (4, 3, 40, 18, "car"), (30, 20, 35, 29, "person")]
    assert _reason_by_row(res) == {3: "unreviewed", 4: "unreviewed"}


def test_csv_segmentation_masks(tmp_path):
    items, known = _images(tmp_path, 5, size=(8, 6))
    for it in items:
        it["mask"] = None
    paths = ls.write_queue(tmp_path / "q", items, "segmentation", SEG, "v1")
    rows = _read_csv(Path(paths["csv"]))
    assert rows[0]["mask"] == ""
    good = np.zeros((6, 8), np.uint8)
    good[1:3, 2:5] = 2
    good[5, 7] = 255
    (tmp_path / "q" / "masks").mkdir()
    Image.fromarray(good, mode="L").save(tmp_path / "q" / "masks" / "good.png")
    bad_vals = good.copy()
    bad_vals[0, 0] = 7
    Image.fromarray(bad_vals, mode="L").save(tmp_path / "q" / "masks" / "bad_vals.png")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "q" / "masks" / "rgb.png")
    Image.fromarray(np.zeros((5, 8), np.uint8)).save(tmp_path / "q" / "masks" / "small.png")
    cells = ["masks/good.png", "masks/bad_vals.png", str(tmp_path / "q" / "masks" / "rgb.png"), "masks/small.png",
             "masks/nothere.png"]
    for r, c in zip(rows, cells):
        r["mask"], r["label"] = c, "ok"
    res = ls.read_review(_write_csv(tmp_path / "q" / "queue.csv", rows), "segmentation", SEG, known)
    _check_counts(res)
    assert len(res.accepted) == 1 and np.array_equal(res.accepted[0].mask, good)
    assert res.reasons == {"bad_mask": 4}


# -------------------------------------------------------------------------------------------------
# bad content is quarantined, not raised


def test_bad_json_tasks_are_quarantined(tmp_path):
    items, known = _images(tmp_path, 12)
    Path(known[items[1]["content_hash"]]["path"]).unlink()  # known, but the file is gone
    for it in items:
        it["predicted"] = "cat"
    tasks = json.loads(Path(ls.write_queue(tmp_path / "q", items, "classification", CLS, "v1")["tasks"]).read_text())
    tasks[0]["data"]["content_hash"] = "f" * 64  # unknown hash ...
    tasks[0]["data"]["conveyor_id"] = "nobody"  # ... and unknown id
    export = _export(tasks, {2: _choice("horse")})
    export[3]["annotations"] = [{"id": 9, "completed_by": 2, "was_cancelled": True, "result": _choice("cat")}]
    export[4]["annotations"].append({"id": 2, "completed_by": {"id": 3, "email": "b@x"}, "was_cancelled": False,
                                     "result": _choice("dog")})
    # the same image in two tasks with different labels: both quarantined
    export[6]["data"]["content_hash"] = export[5]["data"]["content_hash"]
    export[6]["annotations"][0]["result"] = _choice("dog")
    # the same image in two tasks with the same label: the first accepted, the second a duplicate
    export[8]["data"]["content_hash"] = export[7]["data"]["content_hash"]
    export[9]["annotations"][0]["result"] = {"choices": ["cat"]}  # result not a list
    del export[10]["data"]["content_hash"]  # matched by conveyor id instead
    export.append("not a task")
    export.append({"id": 999, "data": {}})
    res = ls.read_review(_write_json(tmp_path / "export.json", export), "classification", CLS, known)
    _check_counts(res)
    assert res.received == 14
    assert _reason_by_row(res) == {1: "missing_image", 2: "missing_image", 3: "unknown_label", 4: "unreviewed",
                                   5: "conflicting_labels", 6: "conflicting_labels", 7: "conflicting_labels",
                                   9: "duplicate", 10: "bad_row", 13: "bad_row", 14: "missing_image"}
    assert sorted(r.where for r in res.accepted) == ["task 107 (row 8)", "task 110 (row 11)", "task 111 (row 12)"]
    q = {d["row"]: d for d in res.quarantined.to_dicts()}
    assert q[3]["task_id"] == "102" and "task 102 (row 3)" in q[3]["detail"] and "horse" in q[3]["detail"]
    assert "no longer on disk" in q[2]["detail"]
    assert "b@x" in q[5]["detail"]
    assert res.reasons["conflicting_labels"] == 3 and sum(res.reasons.values()) == 11


def test_bad_boxes_and_masks_are_quarantined(tmp_path):
    items, known = _images(tmp_path, 8, size=(40, 30))
    tasks = [ls.make_task(dict(it, boxes=None), "detection", DET, "v1") for it in items]
    export = _export(tasks, {
        0: [_rect(10, 10, 20, 20, "car")],
        1: [_rect(10, 10, -5, 20, "car")],  # negative width
        2: [_rect(90, 10, 20, 20, "car")],  # 10 percent outside
        3: [_rect(float("nan"), 10, 20, 20, "car")],
        4: [_rect(10, 10, 20, 20, "truck")],
        5: [_rect(10, 10, 20, 20, "car", W=80, H=60)],  # drawn on a differently sized image
        6: [_rect(10, 10, 20, 20, "car"), _rect(10, 10, 20, 20, "car")],
    })
    export[7]["annotations"].append({"id": 2, "completed_by": 5, "was_cancelled": False,
                                     "result": [_rect(10.5, 10, 20, 20, "car")]})  # 0.2 px apart: agree
    export[7]["annotations"][0]["result"] = [_rect(10, 10, 20, 20, "car")]
    res = ls.read_review(_write_json(tmp_path / "export.json", export), "detection", DET, known)  # NaN as JSON NaN
    _check_counts(res)
    assert _reason_by_row(res) == {2: "bad_box", 3: "bad_box", 4: "bad_box", 5: "unknown_label", 6: "bad_box"}
    assert len(res.accepted) == 3 and res.accepted[-1].reviewer == "1,5"
    assert len([r for r in res.accepted if r.where.startswith("task 106")][0].boxes) == 2

    # a second review of detection where two annotations of one task disagree
    export2 = _export(tasks[:1], {0: [_rect(10, 10, 20, 20, "car")]})
    export2[0]["annotations"].append({"id": 2, "completed_by": 2, "was_cancelled": False,
                                      "result": [_rect(10, 10, 20, 20, "person")]})
    res2 = ls.read_review(_write_json(tmp_path / "e2.json", export2), "detection", DET, known)
    assert res2.reasons == {"conflicting_labels": 1}

    seg_items, seg_known = _images(tmp_path / "seg", 5, size=(6, 4))
    seg_tasks = [ls.make_task(dict(it, mask=None), "segmentation", SEG, "v1") for it in seg_items]
    ok = np.zeros((4, 6), bool)
    ok[1, 1:4] = True
    broken = _brush(ok, "road")
    broken["value"]["rle"] = broken["value"]["rle"][:6]
    wrong_size = _brush(np.zeros((5, 6), bool), "road")
    seg_export = _export(seg_tasks, {0: [_brush(ok, "road")], 1: [broken], 2: [wrong_size],
                                     3: [_brush(ok, "background")], 4: [_brush(ok, "car")]})
    seg_export[4]["annotations"].append({"id": 2, "completed_by": 2, "was_cancelled": False,
                                         "result": [_brush(ok, "road")]})
    res3 = ls.read_review(_write_json(tmp_path / "seg.json", seg_export), "segmentation", SEG, seg_known)
    _check_counts(res3)
    assert _reason_by_row(res3) == {2: "bad_mask", 3: "bad_mask", 4: "unknown_label", 5: "conflicting_labels"}
    assert res3.accepted[0].mask.tolist() == ok.astype(np.uint8).tolist()


def test_bad_csv_rows_are_quarantined(tmp_path):
    items, known = _images(tmp_path, 5)
    for it in items:
        it["boxes"] = [{"x1": 1, "y1": 1, "x2": 9, "y2": 9, "category": "car"}]
    rows = _read_csv(Path(ls.write_queue(tmp_path / "q", items, "detection", DET, "v1")["csv"]))
    for r in rows:
        r["label"] = "ok"
    rows[0]["boxes"] = "[{x1: 1"  # not JSON
    rows[1]["boxes"] = json.dumps([{"x1": 1, "y1": 1, "x2": 99, "y2": 9, "category": "car"}])  # outside
    rows[2]["boxes"] = json.dumps([{"x1": 1, "y1": 1, "x2": 9, "y2": 9, "category": "bus"}])
    rows[3]["content_hash"], rows[3]["id"] = "", ""
    res = ls.read_review(_write_csv(tmp_path / "r.csv", rows), "detection", DET, known)
    _check_counts(res)
    assert _reason_by_row(res) == {1: "bad_row", 2: "bad_box", 3: "unknown_label", 4: "missing_image"}
    assert len(res.accepted) == 1


# -------------------------------------------------------------------------------------------------
# whole-file problems


def test_whole_file_problems_raise_review_file_error(tmp_path):
    items, known = _images(tmp_path, 1)
    bad_json = tmp_path / "broken.json"
    bad_json.write_text("{not json")
    with pytest.raises(ls.ReviewFileError, match="broken.json"):
        ls.read_review(bad_json, "classification", CLS, known)
    not_list = _write_json(tmp_path / "dict.json", {"tasks": []})
    with pytest.raises(ls.ReviewFileError, match="dict.json"):
        ls.read_review(not_list, "classification", CLS, known)
    with pytest.raises(ls.ReviewFileError, match="absent.json"):
        ls.read_review(tmp_path / "absent.json", "classification", CLS, known)
    no_label = _write_csv(tmp_path / "nolabel.csv", [{"id": "img-0", "content_hash": "x"}])
    with pytest.raises(ls.ReviewFileError, match="nolabel.csv"):
        ls.read_review(no_label, "classification", CLS, known)
    no_boxes = _write_csv(tmp_path / "noboxes.csv", [{"id": "img-0", "label": "ok"}])
    with pytest.raises(ls.ReviewFileError, match="boxes"):
        ls.read_review(no_boxes, "detection", DET, known)
    no_key = _write_csv(tmp_path / "nokey.csv", [{"image": "a.png", "label": "cat"}])
    with pytest.raises(ls.ReviewFileError, match="content_hash or id"):
        ls.read_review(no_key, "classification", CLS, known)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ls.ReviewFileError, match="bin.csv"):
        ls.read_review(binary, "classification", CLS, known)
    with pytest.raises(ls.ReviewFileError, match="review.txt"):
        ls.read_review(tmp_path / "review.txt", "classification", CLS, known)
    empty = _write_json(tmp_path / "empty.json", [])
    res = ls.read_review(empty, "classification", CLS, known)
    assert res.received == 0 and res.accepted == [] and res.quarantined.is_empty()


def test_review_checked_asserts_its_counts():
    frame = pl.DataFrame(schema=ls.QUARANTINE_SCHEMA)
    with pytest.raises(ValueError):
        ls.ReviewChecked(accepted=[], quarantined=frame, received=1)
