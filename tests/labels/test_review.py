"""The label and review loop: auto-labels, the hard-case queue, Label Studio round trips, feedback."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from PIL import Image

from conveyor.labels import versions as labels
from conveyor.labels import stage as review
from conveyor.cli.main import main
from conveyor.data.contracts import run_contracts
from conveyor.data.curate import curate
from conveyor.data.ingest import ingest
from conveyor.release.registry import Registry
from conveyor.core.spec import spec_from_dict
from conveyor.data.split import EVAL_SPLITS, split
from conveyor.core.io import sha256_file, write_parquet_atomic
from conveyor.core.workspace import Workspace
from helpers.specs import segmentation_spec, toy_spec_dict
from helpers.tinymodels import FixedDetector, RedSegmenter, classifier, export_model
from helpers.toydata import TOY_COLOURS, write_pairs, write_toy_dataset

CLASSES = list(TOY_COLOURS)
RGB = {k: np.array(v, dtype=np.float64) for k, v in TOY_COLOURS.items()}


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory) -> Path:
    """Predicts an image's dominant colour; a mix of two colours is a close call."""
    return export_model(classifier(torch.eye(3) * 3.0, torch.zeros(3)), tmp_path_factory.mktemp("m") / "colour.onnx",
                        "classification", CLASSES, ["logits"], {"images": {0: "batch"}, "logits": {0: "batch"}})


def _champion(ws: Workspace, model: Path, name: str = "toy") -> int:
    metrics = model.parent / "metrics.json"
    metrics.write_text("{}")
    reg = Registry(ws.registry)
    v = reg.register(name, files={"model.onnx": model, "metrics.json": metrics}, model_hash=sha256_file(model),
                     metrics={}, lineage={}, gate={}).version
    reg.set_alias(name, v, reason="test")
    return v


def _blend(path: Path, a: str, b: str, share: float, seed: int) -> None:
    """An image that is ``share`` colour ``a`` and the rest colour ``b`` (left/right), a little noisy."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((16, 16, 3))
    cut = int(round(16 * share))
    arr[:, :cut] = RGB[a]
    arr[:, cut:] = RGB[b]
    arr = np.clip(arr + rng.normal(0, 4, arr.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _pool(root: Path, cameras: dict[str, str]) -> dict[str, float]:
    """Unlabelled images: pure colours (sure) and blends (unsure); returns the share of each blend."""
    shares = {}
    rows = []
    for i, (name, (a, b, share)) in enumerate({
        "pure-red": ("red", "green", 1.0), "pure-green": ("green", "red", 1.0), "pure-blue": ("blue", "red", 1.0),
        "mostly-red": ("red", "green", 0.8), "half-rg": ("red", "green", 0.5), "half-gb": ("green", "blue", 0.56),
        "mostly-blue": ("blue", "green", 0.75), "sixty-red": ("red", "blue", 0.62),
    }.items()):
        rel = f"{name}.png"
        _blend(root / rel, a, b, share, seed=i)
        shares[rel] = share
        rows.append({"path": rel, "camera": cameras.get(name, "cam-new"), "captured_at": "2026-11-01T10:00:00Z"})
    (root / "empty.png").write_bytes(b"")  # what real uploads bring besides images
    (root / "notes.png").write_text("not an image\n")
    pl.DataFrame(rows).write_csv(root / "metadata.csv")
    return shares


def _images(root: Path) -> list[Path]:
    """The pool's real images (not the zero-byte and text files that ingest quarantines)."""
    return [p for p in sorted(root.glob("*.png")) if p.name not in ("empty.png", "notes.png")]


def _setup(tmp_path: Path, colour_model: Path, **labeling):
    manifest = write_toy_dataset(tmp_path / "data", per_class_per_camera=2, cameras=4)
    # cam-01 and cam-03 hold the evaluation set (see the split below); pure-blue comes from cam-01
    _pool(tmp_path / "incoming", {"pure-blue": "cam-01"})
    d = toy_spec_dict(source=str(manifest), labeling={"unlabeled": str(tmp_path / "incoming"), **labeling})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(d))
    spec = spec_from_dict(d, base_dir=tmp_path)
    ws = Workspace(tmp_path / "workspace")
    _champion(ws, colour_model)
    ing = ingest(spec, ws.datasets)
    return spec, ws, ing


def _margin(model: Path, path: str) -> float:
    from conveyor.serving.model import LoadedModel
    from conveyor.serving.preprocess import decode_request

    m = LoadedModel(1, model)
    p = m.session.run(None, {m.input_name: decode_request(Path(path).read_bytes(), 10**8).input(m.image_size)})[0][0]
    p = np.exp(p - p.max())
    p = np.sort(p / p.sum())[::-1]
    return float(1 - (p[0] - p[1]))


def test_auto_labels_respect_the_threshold_and_never_reach_val_or_test(tmp_path, colour_model):
    spec, ws, ing = _setup(tmp_path, colour_model, auto_label_threshold=0.9, budget=3,
                           mix={"uncertainty": 1.0, "disagreement": 0.0, "rare": 0.0, "diversity": 0.0})
    champion, challenger = review.model_refs(ws.registry, spec.name)
    assert champion is not None and challenger is None
    res = review.label_stage(spec, ws, ing.manifest_path, ing.dataset_version, ing.classes, champion, challenger)
    df = pl.read_parquet(res.manifest_path)
    machine = df.filter(pl.col("label_source") == "machine")
    u = res.pool["unlabeled"]  # bad files are quarantined with their reasons, every file accounted for
    assert (u["received"], u["accepted"], u["quarantined"]) == (10, 8, 2)
    assert u["quarantine_reasons"] == {"not_an_image": 1, "zero_byte": 1}
    q = pl.read_parquet(u["quarantine_path"])
    assert sorted(q["rel_path"].to_list()) == ["empty.png", "notes.png"]
    # exactly the images whose confidence reaches 0.9 got machine labels, each its dominant colour
    from conveyor.serving.model import LoadedModel
    from conveyor.serving.preprocess import decode_request

    m = LoadedModel(1, colour_model)
    sure = {}
    for p in _images(tmp_path / "incoming"):
        logits = m.session.run(None, {m.input_name: decode_request(p.read_bytes(), 10**8).input(16)})[0][0]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        if probs.max() >= 0.9:
            sure[f"unlabeled/{p.name}"] = CLASSES[int(probs.argmax())]
    assert 0 < len(sure) < 8
    assert dict(zip(machine["id"].to_list(), machine["label"].to_list())) == sure
    assert set(df.filter(pl.col("label_source") == "human")["id"].to_list()) == set(
        pl.read_parquet(ing.manifest_path)["id"].to_list())

    # the queue: the three least sure images (by margin) of those the champion could not label
    tasks = json.loads(Path(res.queue["tasks"]).read_text())
    queued = [t["data"]["conveyor_id"] for t in tasks]
    unsure = {f"unlabeled/{p.name}": _margin(colour_model, str(p)) for p in _images(tmp_path / "incoming")
              if f"unlabeled/{p.name}" not in sure}
    want = sorted(unsure, key=lambda k: -unsure[k])[:3]
    assert queued == want
    assert all(t["predictions"][0]["result"][0]["value"]["choices"][0] in CLASSES for t in tasks)
    assert all(t["data"]["reason"] == "uncertainty" for t in tasks)
    csv = pl.read_csv(res.queue["csv"])
    assert csv["id"].to_list() == want and csv["label"].null_count() == 3

    # machine labels train only: the machine image from an evaluation camera is held out
    cur = curate(res.manifest_path, spec, ws.curated)
    spl = split(cur.curated_path, spec, ws.splits, ws.state(spec.name), dataset_version=ing.dataset_version,
                classes=ing.classes)
    s = pl.read_parquet(spl.split_path)
    assert s.filter(pl.col("split").is_in(EVAL_SPLITS) & (pl.col("label_source") == "machine")).height == 0
    eval_cams = set(s.filter(pl.col("split").is_in(EVAL_SPLITS))["camera"].to_list())
    if "cam-01" in eval_cams and "unlabeled/pure-blue.png" in sure:
        assert spl.held_out_machine == 1 and "unlabeled/pure-blue.png" not in s["id"].to_list()
    assert s.filter(pl.col("label_source") == "machine").height == len(sure) - spl.held_out_machine
    report = run_contracts(pl.read_parquet(res.manifest_path), s, spec, ing.classes, raise_on_failure=False)
    assert report.success, [x.name for x in report.suites if not x.success]
    # the contract fails if a machine label is put into val/test by hand
    bad = s.with_columns(pl.when(pl.col("split") == "test").then(pl.lit("machine")).otherwise(pl.col("label_source"))
                         .alias("label_source"))
    report = run_contracts(pl.read_parquet(res.manifest_path), bad, spec, ing.classes, raise_on_failure=False)
    failed = [x.name for x in report.suites if not x.success]
    assert failed == ["split_label_sources"]

    # the pool's ingest and scores are kept by content: a rerun reuses them, and an image changed
    # under the same path is ingested and scored again
    scores = next((ws.root / "pool" / "toy" / "scores").glob("*.parquet"))
    assert pl.read_parquet(scores).height == 8
    again = review.label_stage(spec, ws, ing.manifest_path, ing.dataset_version, ing.classes, champion, None)
    assert again.labeled_version == res.labeled_version
    _blend(tmp_path / "incoming" / "pure-green.png", "green", "red", 0.5, seed=99)
    changed = review.label_stage(spec, ws, ing.manifest_path, ing.dataset_version, ing.classes, champion, None)
    df2 = pl.read_parquet(changed.manifest_path)
    assert "unlabeled/pure-green.png" not in df2.filter(pl.col("label_source") == "machine")["id"].to_list()
    assert changed.auto_labeled == res.auto_labeled - 1 and pl.read_parquet(scores).height == 9

    # privacy rules hold for the pool: an excluded camera's images are neither labelled nor queued
    private = spec.model_copy(update={"curation": spec.curation.model_copy(update={
        "privacy": spec.curation.privacy.model_copy(update={"exclude_cameras": ["cam-new"]})})})
    res3 = review.label_stage(private, ws, ing.manifest_path, ing.dataset_version, ing.classes, champion, None)
    assert res3.pool["privacy_excluded"] == 7 and res3.auto_labeled <= 1 and res3.queued == 0

    # a higher threshold labels fewer, None labels nothing
    strict = spec.model_copy(update={"labeling": spec.labeling.model_copy(update={"auto_label_threshold": 0.999999})})
    res2 = review.label_stage(strict, ws, ing.manifest_path, ing.dataset_version, ing.classes, champion, None)
    assert res2.auto_labeled < res.auto_labeled
    off = spec.model_copy(update={"labeling": spec.labeling.model_copy(update={"auto_label_threshold": None})})
    assert review.label_stage(off, ws, ing.manifest_path, ing.dataset_version, ing.classes, champion,
                              None).auto_labeled == 0


def _reviewed_export(tasks: list[dict], edit) -> list[dict]:
    """What Label Studio exports after a reviewer went through the tasks: each task with an id and
    one annotation, its result the pre-annotation as the reviewer left or changed it."""
    out = []
    for i, t in enumerate(tasks, start=1):
        t = copy.deepcopy(t)
        result = copy.deepcopy(t["predictions"][0]["result"]) if t.get("predictions") else []
        result = edit(t, result)
        t.update(id=100 + i, annotations=[{"id": i, "completed_by": 7, "was_cancelled": False, "result": result}])
        out.append(t)
    return out


def test_label_studio_round_trip_makes_a_new_label_version(tmp_path, colour_model, capsys):
    spec, ws, ing = _setup(tmp_path, colour_model, auto_label_threshold=0.995, budget=4)
    spec_path, wsa = str(tmp_path / "spec.yaml"), ["--workspace", str(ws.root)]
    assert main(["review", "queue", spec_path, *wsa]) == 0
    out = capsys.readouterr().out
    assert "review queue: 4 images" in out, out
    assert main(["review", "queue", spec_path, "--json", *wsa]) == 0
    stage = json.loads(capsys.readouterr().out)
    # `review queue` publishes the label version of what a cycle would train on (as a cycle does)
    before = labels.history(ws, "toy")[-1]["version"]
    assert labels.publish(ws, "toy", pl.read_parquet(stage["manifest_path"])).version == before
    queue = json.loads((ws.root / "review" / "toy" / "latest.json").read_text())
    tasks = json.loads(Path(queue["tasks"]).read_text())
    first = tasks[0]["data"]["conveyor_id"]

    def edit(task, result):  # the reviewer relabels the first image blue and accepts the others
        if task["data"]["conveyor_id"] == first:
            result[0]["value"]["choices"] = ["blue"]
        return result

    export = tmp_path / "export.json"
    export.write_text(json.dumps(_reviewed_export(tasks, edit)))
    assert main(["review", "import", spec_path, str(export), *wsa]) == 0
    out = capsys.readouterr().out
    assert "4 received, 4 accepted, 0 quarantined" in out and "new label version" in out
    after = labels.history(ws, "toy")[-1]["version"]
    assert after != before
    d = labels.diff(ws, "toy", before, after)
    added = {a["id"]: (a["label"], a["source"]) for a in d.added}
    expected = {t["data"]["conveyor_id"]: t["predictions"][0]["result"][0]["value"]["choices"][0] for t in tasks}
    expected[first] = "blue"
    assert added == {k: (v, "review") for k, v in expected.items()}
    # importing the same file again changes nothing
    assert main(["review", "import", spec_path, str(export), "--json", *wsa]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["already_imported"] and labels.history(ws, "toy")[-1]["version"] == after

    # the next stage trains on the reviewed labels and queues other images
    champion, _ = review.model_refs(ws.registry, "toy")
    res = review.label_stage(spec, ws, ing.manifest_path, ing.dataset_version, ing.classes, champion, None)
    df = pl.read_parquet(res.manifest_path)
    got = dict(df.filter(pl.col("label_source") == "review").select("id", "label").iter_rows())
    assert got == expected
    requeued = {t["data"]["conveyor_id"] for t in json.loads(Path(res.queue["tasks"]).read_text())} if res.queue else set()
    assert not requeued & set(expected)
    # the cycle's label version of that manifest equals the imported one
    assert labels.publish(ws, "toy", df).version == after


def test_bad_review_files_are_reported_not_crashing(tmp_path, colour_model, capsys):
    spec, ws, ing = _setup(tmp_path, colour_model, auto_label_threshold=0.995, budget=4)
    spec_path, wsa = str(tmp_path / "spec.yaml"), ["--workspace", str(ws.root)]
    assert main(["review", "import", spec_path, str(tmp_path / "nothing.json"), *wsa]) == 1
    assert "no images to review yet" in capsys.readouterr().err
    assert main(["review", "queue", spec_path, *wsa]) == 0
    capsys.readouterr()
    tasks = json.loads(Path(json.loads((ws.root / "review/toy/latest.json").read_text())["tasks"]).read_text())
    assert len(tasks) == 4

    def edit(task, result):
        i = tasks.index(next(t for t in tasks if t["data"]["conveyor_id"] == task["data"]["conveyor_id"]))
        if i == 0:
            result[0]["value"]["choices"] = ["purple"]  # not a class
        elif i == 1:
            task["data"]["content_hash"] = "0" * 64  # an image conveyor never saw
            task["data"]["conveyor_id"] = "nowhere.png"
        return result

    export = _reviewed_export(tasks, edit)
    # task 3 reviewed twice with different answers
    other = copy.deepcopy(export[2]["annotations"][0])
    other["id"], other["result"][0]["value"]["choices"] = 99, ["red" if other["result"][0]["value"]["choices"] != ["red"] else "green"]
    export[2]["annotations"].append(other)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(export))
    assert main(["review", "import", spec_path, str(path), *wsa]) == 0  # one good task was imported
    out = capsys.readouterr().out
    assert "4 received, 1 accepted, 3 quarantined" in out
    for reason in ("unknown_label", "missing_image", "conflicting_labels"):
        assert reason in out
    q = pl.read_parquet(next((ws.root / "review/toy/imports").glob("*/quarantine.parquet")))
    assert sorted(q["reason"].to_list()) == ["conflicting_labels", "missing_image", "unknown_label"]

    # nothing usable: reported with exit code 1; not JSON at all: a clear error, no traceback
    only_bad = tmp_path / "only-bad.json"
    only_bad.write_text(json.dumps(export[:2]))
    assert main(["review", "import", spec_path, str(only_bad), *wsa]) == 1
    assert "0 accepted, 2 quarantined" in capsys.readouterr().out
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    assert main(["review", "import", spec_path, str(garbage), *wsa]) == 1
    err = capsys.readouterr().err
    assert "garbage.json" in err and "Traceback" not in err
    # a CSV with a bad label and an unknown id
    csv = tmp_path / "queue.csv"
    q0 = pl.read_csv(json.loads((ws.root / "review/toy/latest.json").read_text())["csv"])
    q0.with_columns(pl.Series("label", ["red", "nope", *["green"] * (q0.height - 2)])).write_csv(csv)
    assert main(["review", "import", spec_path, str(csv), "--json", *wsa]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["received"] == q0.height and r["accepted"] + r["quarantined"] == r["received"]
    assert r["quarantine_reasons"] == {"unknown_label": 1}


def test_feedback_wrong_answers_come_first_and_classes_are_balanced():
    now = datetime(2026, 11, 20, tzinfo=timezone.utc)
    rows = []
    for i in range(12):  # 12 red feedback rows, 4 of them wrong answers, 2 of those recent
        rows.append({"prediction_id": f"r{i}", "label": "red", "predicted": "green" if i < 4 else "red",
                     "timestamp": now - timedelta(days=1 if i < 2 or i >= 8 else 20)})
    for i in range(3):
        rows.append({"prediction_id": f"b{i}", "label": "blue", "predicted": "blue",
                     "timestamp": now - timedelta(days=2)})
    df = pl.DataFrame(rows).with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
    chosen = review.select_feedback(df, max_images=6, balance="equal", window="7d", now=now)
    assert chosen.height == 6
    assert set(chosen.head(2)["prediction_id"].to_list()) <= {"r0", "r1", "b0"}  # recent errors lead the queue
    assert {"r0", "r1"} <= set(chosen["prediction_id"].to_list())  # the recent wrong answers are in
    assert chosen["label"].value_counts().sort("label").rows() == [("blue", 3), ("red", 3)]
    plain = review.select_feedback(df, max_images=6, balance="none", window="7d", now=now)
    assert plain.head(2)["prediction_id"].to_list() == ["r0", "r1"] and plain["label"].to_list().count("red") >= 4


def test_production_feedback_reaches_the_training_manifest(tmp_path, colour_model):
    """The service keeps request images; feedback joined by request id labels them for training."""
    from conveyor.monitoring.monitor import prediction_log_dir
    from conveyor.serving.captures import capture_image, captures_dir

    manifest = write_toy_dataset(tmp_path / "data", per_class_per_camera=2, cameras=4)
    d = toy_spec_dict(source=str(manifest), labeling={"auto_label_threshold": None, "budget": 0,
                                                      "feedback": {"max_images": 10, "source": "feedback.csv"}})
    spec = spec_from_dict(d, base_dir=tmp_path)
    ws = Workspace(tmp_path / "workspace")
    _champion(ws, colour_model)
    ing = ingest(spec, ws.datasets)
    root = captures_dir(ws, "toy")
    now = datetime.now(timezone.utc)
    log_rows, fb_rows = [], []
    for i, (a, b, share) in enumerate([("red", "green", 0.55), ("green", "blue", 0.9), ("blue", "red", 0.6)]):
        p = tmp_path / f"req{i}.png"
        _blend(p, a, b, share, seed=10 + i)
        rel = capture_image(root, p.read_bytes(), "PNG")
        log_rows.append({"prediction_id": f"req-{i}", "timestamp": now - timedelta(hours=1), "camera": "cam-09",
                         "predicted": a, "confidence": 0.6, "role": "champion", "status": "ok", "capture": rel})
        fb_rows.append({"timestamp": (now - timedelta(hours=1)).isoformat(), "prediction_id": f"req-{i}",
                        "label": b if i == 0 else a})  # request 0 was answered wrongly
    fb_rows.append({"timestamp": now.isoformat(), "prediction_id": "req-404", "label": "red"})  # unknown id
    write_parquet_atomic(pl.DataFrame(log_rows).with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC"))),
                         prediction_log_dir(ws, "toy") / now.strftime("%Y-%m-%d") / "seg.parquet")
    pl.DataFrame(fb_rows).write_csv(tmp_path / "feedback.csv")
    res = review.label_stage(spec, ws, ing.manifest_path, ing.dataset_version, ing.classes,
                             *review.model_refs(ws.registry, "toy"))
    assert res.pool["production"]["received"] == 3 and res.pool["production"]["accepted"] == 3
    assert res.feedback["received"] == 4 and res.feedback["quarantine_reasons"] == {"unknown_prediction": 1}
    bad = pl.read_parquet(res.feedback["quarantine_path"]).row(0, named=True)
    assert (bad["row"], bad["field"], bad["reason"]) == (4, "prediction_id", "unknown_prediction")
    assert res.feedback["selected"] == 3 and res.feedback["errors"] == 1
    df = pl.read_parquet(res.manifest_path).filter(pl.col("label_source") == "feedback")
    assert sorted(df["label"].to_list()) == ["blue", "green", "green"]
    assert set(df["camera"].to_list()) == {"cam-09"}


def test_detection_machine_boxes_join_the_manifest(tmp_path):
    model = export_model(FixedDetector(), tmp_path / "det.onnx", "detection", ["red", "green"],
                         ["boxes", "scores", "labels"],
                         {"boxes": {0: "detections"}, "scores": {0: "detections"}, "labels": {0: "detections"}})
    from conveyor.kinds.detection.sources import BOX_STRUCT

    img = tmp_path / "data" / "a.png"
    _blend(img, "red", "green", 0.5, 0)
    box = {"x1": 1.0, "y1": 1.0, "x2": 8.0, "y2": 8.0, "category": "red"}
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 16, "height": 16}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 7, 7]}],
            "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    pool = tmp_path / "incoming"
    _blend(pool / "b.png", "green", "red", 0.7, 1)
    d = {"name": "det", "task": "detection",
         "data": {"source": str(tmp_path / "data"), "format": "coco", "annotations": str(tmp_path / "coco.json"),
                  "classes": ["red", "green"]},
         "labeling": {"unlabeled": str(pool), "auto_label_threshold": 0.6}}
    spec = spec_from_dict(d, base_dir=tmp_path)
    ws = Workspace(tmp_path / "workspace")
    _champion(ws, model, "det")
    ing = ingest(spec, ws.datasets)
    res = review.label_stage(spec, ws, ing.manifest_path, ing.dataset_version, ing.classes,
                             *review.model_refs(ws.registry, "det"))
    df = pl.read_parquet(res.manifest_path)
    assert df.schema["boxes"] == pl.List(BOX_STRUCT)
    m = df.filter(pl.col("label_source") == "machine")
    # the fixed detector: scores 0.7 and 0.9 kept (min(max(s, 1-s)) = 0.7 >= 0.6), 0.2 left out
    assert m["id"].to_list() == ["unlabeled/b.png"]
    got = sorted((b["category"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in m["boxes"][0])
    assert got == [("green", 2.0, 4.0, 10.0, 12.0), ("red", 0.0, 0.0, 8.0, 8.0)]  # 16 px image, 16 px input
    assert df.filter(pl.col("label_source") == "human")["boxes"][0].to_list() == [box]
    strict = spec.model_copy(update={"labeling": spec.labeling.model_copy(update={"auto_label_threshold": 0.8})})
    res = review.label_stage(strict, ws, ing.manifest_path, ing.dataset_version, ing.classes,
                             *review.model_refs(ws.registry, "det"))
    assert res.auto_labeled == 0 and res.queued == 1  # 0.7 is not sure enough: a person looks at it
    (task,) = json.loads(Path(res.queue["tasks"]).read_text())  # the champion's boxes as the pre-annotation
    rects = sorted((r["value"]["rectanglelabels"][0], r["value"]["x"]) for r in task["predictions"][0]["result"])
    assert rects == [("green", 12.5), ("red", 0.0)]


def test_segmentation_machine_masks_and_a_brush_review_round_trip(tmp_path):
    """Machine masks for sure images, brush pre-annotations for unsure ones, and the reviewed masks
    back as a label version and as training rows."""
    write_pairs(tmp_path, cameras=4, per_camera=3)
    model = export_model(RedSegmenter(), tmp_path / "seg.onnx", "segmentation", ["background", "defect"], ["logits"],
                         {"images": {0: "batch"}, "logits": {0: "batch"}})
    pool = tmp_path / "incoming"
    pool.mkdir()
    sure = np.full((32, 32, 3), 30, np.uint8)
    sure[:, :16, 0] = 230  # a red (defect) left half on a dark part: the segmenter is sure
    Image.fromarray(sure).save(pool / "sure.png")
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(pool / "unsure.png")  # red = 0.5: a coin toss
    spec = segmentation_spec(tmp_path)
    spec = spec.model_copy(update={"labeling": spec.labeling.model_copy(
        update={"unlabeled": str(pool), "auto_label_threshold": 0.95, "budget": 5})})
    ws = Workspace(tmp_path / "workspace")
    _champion(ws, model, spec.name)
    ing = ingest(spec, ws.datasets)
    res = review.label_stage(spec, ws, ing.manifest_path, ing.dataset_version, ing.classes,
                             *review.model_refs(ws.registry, spec.name))
    df = pl.read_parquet(res.manifest_path)
    m = df.filter(pl.col("label_source") == "machine").row(0, named=True)
    assert m["id"] == "unlabeled/sure.png" and m["mask_classes"] == ["background", "defect"]
    mask = np.asarray(Image.open(m["mask_path"]))
    assert mask.shape == (32, 32) and (mask[:, :16] == 1).all() and (mask[:, 16:] == 0).all()
    (task,) = json.loads(Path(res.queue["tasks"]).read_text())
    assert task["data"]["conveyor_id"] == "unlabeled/unsure.png"

    # the reviewer paints a defect square where the model could not decide
    from conveyor.labels.labelstudio import rle_encode

    painted = np.zeros((32, 32), bool)
    painted[4:12, 4:12] = True
    result = [{"id": "r1", "from_name": "label", "to_name": "image", "type": "brushlabels", "original_width": 32,
               "original_height": 32, "image_rotation": 0,
               "value": {"format": "rle", "rle": rle_encode(painted), "brushlabels": ["defect"]}}]
    export = _reviewed_export([task], lambda t, r: result)
    (tmp_path / "export.json").write_text(json.dumps(export))
    labels.publish(ws, spec.name, df)
    imp = review.import_review(spec, ws, tmp_path / "export.json")
    assert (imp.accepted, imp.quarantined, imp.added) == (1, 0, 1)
    res2 = review.label_stage(spec, ws, ing.manifest_path, ing.dataset_version, ing.classes,
                              *review.model_refs(ws.registry, spec.name))
    r = pl.read_parquet(res2.manifest_path).filter(pl.col("label_source") == "review").row(0, named=True)
    got = np.asarray(Image.open(r["mask_path"]))
    assert r["id"] == "unlabeled/unsure.png" and np.array_equal(got == 1, painted) and r["mask_classes"] == [
        "background", "defect"]
    assert res2.queued == 0


def test_a_suspected_label_error_goes_to_review_and_the_correction_is_a_label_change(tmp_path, colour_model,
                                                                                     capsys):
    manifest = write_toy_dataset(tmp_path / "data", per_class_per_camera=2, cameras=4)
    df = pl.read_csv(manifest, infer_schema=False)
    wrong = df.filter(pl.col("label") == "red")["path"][0]
    df.with_columns(pl.when(pl.col("path") == wrong).then(pl.lit("blue")).otherwise(pl.col("label"))
                    .alias("label")).write_csv(manifest)  # a red square labelled blue
    d = toy_spec_dict(source=str(manifest), labeling={"budget": 5, "suspect_confidence": 0.9})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(d))
    spec = spec_from_dict(d, base_dir=tmp_path)
    ws = Workspace(tmp_path / "workspace")
    _champion(ws, colour_model)
    ing = ingest(spec, ws.datasets)
    res = review.label_stage(spec, ws, ing.manifest_path, ing.dataset_version, ing.classes,
                             *review.model_refs(ws.registry, "toy"))
    assert res.pool["suspected_label_errors"] == 1
    (task,) = json.loads(Path(res.queue["tasks"]).read_text())
    assert (task["data"]["conveyor_id"], task["data"]["reason"], task["data"]["current_label"]) == (
        wrong, "label_error", "blue")
    assert task["predictions"][0]["result"][0]["value"]["choices"] == ["red"]
    csv = pl.read_csv(res.queue["csv"], infer_schema=False)
    assert csv["current_label"].to_list() == ["blue"] and csv["predicted"].to_list() == ["red"]
    before = labels.publish(ws, "toy", pl.read_parquet(res.manifest_path)).version

    # a first reviewer keeps the label: confirmed, not changed; the diff says only who labelled it changed
    csv.with_columns(pl.lit("blue").alias("label")).write_csv(tmp_path / "kept.csv")
    kept = review.import_review(spec, ws, tmp_path / "kept.csv")
    assert (kept.accepted, kept.changed, kept.added, kept.confirmed) == (1, 0, 0, 1)
    assert main(["labels", "diff", str(tmp_path / "spec.yaml"), before, kept.label_version,
                 "--workspace", str(ws.root)]) == 0
    out = capsys.readouterr().out
    assert "1 changed, 0 added, 0 removed (1 of the changed keep their label" in out
    assert f"~ {wrong}: blue -> blue (human -> review)" in out

    csv.with_columns(pl.lit("red").alias("label")).write_csv(tmp_path / "reviewed.csv")  # the next one agrees
    imp = review.import_review(spec, ws, tmp_path / "reviewed.csv")
    assert (imp.accepted, imp.changed, imp.added, imp.confirmed) == (1, 1, 0, 0)
    (change,) = labels.diff(ws, "toy", before, imp.label_version).changed
    assert (change["id"], change["old"], change["new"], change["new_source"]) == (wrong, "blue", "red", "review")
    res2 = review.label_stage(spec, ws, ing.manifest_path, ing.dataset_version, ing.classes,
                              *review.model_refs(ws.registry, "toy"))
    row = pl.read_parquet(res2.manifest_path).filter(pl.col("id") == wrong).row(0, named=True)
    assert (row["label"], row["label_source"]) == ("red", "review")
    assert res2.pool["suspected_label_errors"] == 0 and res2.queue is None
    assert labels.publish(ws, "toy", pl.read_parquet(res2.manifest_path)).version == imp.label_version
