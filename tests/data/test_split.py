import hashlib
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from conveyor.data.split import SplitError, frozen_eval_hashes, load_state, split
from helpers.specs import split_spec as spec


def frame(n_cameras=8, per_camera=12, classes=("a", "b", "c"), start=0, camera_offset=0):
    rows = []
    t0 = datetime(2026, 10, 1, tzinfo=timezone.utc)
    k = start
    for c in range(camera_offset, camera_offset + n_cameras):
        for i in range(per_camera):
            h = hashlib.sha256(f"img{k}".encode()).hexdigest()
            rows.append({"id": f"img/{k:05d}.png", "path": f"/d/img/{k:05d}.png", "label": classes[i % len(classes)],
                         "camera": f"cam-{c}", "scene": f"scene-{c % 2}", "captured_at": t0 + timedelta(hours=7 * k),
                         "content_hash": h, "phash": h[:16]})
            k += 1
    return pl.DataFrame(rows)


def run(tmp_path, df, sp, ds="ds1"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / f"curated-{ds}.parquet"
    df.write_parquet(p)
    res = split(p, sp, tmp_path / "splits", tmp_path / "state", dataset_version=ds)
    return res, pl.read_parquet(res.split_path)


@pytest.mark.parametrize("group_by", ["camera", "scene", "time"])
def test_no_group_in_two_splits(tmp_path, group_by):
    res, out = run(tmp_path, frame(), spec(group_by=group_by, time_window="1d"))
    pairs = out.select("group", "split").unique()
    assert pairs["group"].n_unique() == pairs.height, "a group landed in two splits"
    assert res.counts["train"] > 0 and res.counts["test"] > 0
    assert sum(res.counts.values()) == out.height == 96


def test_deterministic_and_ratio_shaped(tmp_path):
    df = frame(n_cameras=20, per_camera=10)
    r1, o1 = run(tmp_path / "a", df, spec(group_by="camera"))
    r2, o2 = run(tmp_path / "b", df, spec(group_by="camera"))
    assert o1["split"].to_list() == o2["split"].to_list() and r1.split_version == r2.split_version
    assert r1.counts == {"train": 140, "val": 30, "test": 30}
    r3, _ = run(tmp_path / "c", df, spec(group_by="camera", seed=1))
    assert r3.split_version != r1.split_version


def test_group_by_none_is_stratified(tmp_path):
    res, _ = run(tmp_path, frame(n_cameras=2, per_camera=30), spec(group_by="none"))
    for s in ("val", "test"):
        assert all(n >= 2 for n in res.per_class[s].values()), res.per_class


def test_frozen_eval_survives_new_data_renames_and_reuploads(tmp_path):
    sp = spec(group_by="camera")
    r1, o1 = run(tmp_path, frame(), sp, "ds1")
    eval1 = o1.filter(pl.col("split") != "train").select("content_hash", "split").sort("content_hash")
    assert frozen_eval_hashes(tmp_path / "state") == frozenset(eval1["content_hash"])

    # cycle 2: the same images renamed, plus a batch from new cameras
    renamed = frame().with_columns(("renamed/" + pl.col("id")).alias("id"))
    new = frame(n_cameras=4, start=1000, camera_offset=50)
    r2, o2 = run(tmp_path, pl.concat([renamed, new]), sp, "ds2")
    eval2 = o2.filter(pl.col("split") != "train").select("content_hash", "split").sort("content_hash")
    assert eval2.equals(eval1), "the frozen evaluation set changed"
    assert set(o2.filter(pl.col("camera").is_in(["cam-50", "cam-51", "cam-52", "cam-53"]))["split"]) == {"train"}
    assert r2.frozen_images == 96 and r2.new_assignments == 48
    # the dataset that froze images does not see them as 'earlier' (keeps its cached curation valid)
    assert frozen_eval_hashes(tmp_path / "state", exclude_dataset="ds1") == frozenset()


def test_new_images_of_an_eval_camera_stay_in_its_split(tmp_path):
    sp = spec(group_by="camera")
    _, o1 = run(tmp_path, frame(), sp, "ds1")
    test_cam = o1.filter(pl.col("split") == "test")["camera"][0]
    extra = frame(n_cameras=1, start=5000).with_columns(pl.lit(test_cam).alias("camera"))
    _, o2 = run(tmp_path, pl.concat([frame(), extra]), sp, "ds2")
    assert set(o2.filter(pl.col("camera") == test_cam)["split"]) == {"test"}


def test_near_duplicate_of_eval_image_never_reaches_train(tmp_path):
    sp = spec(group_by="camera")
    _, o1 = run(tmp_path, frame(), sp, "ds1")
    victim = o1.filter(pl.col("split") == "test").row(0, named=True)
    flipped = format(int(victim["phash"], 16) ^ 1, "016x")  # distance 1
    near = pl.DataFrame([{**victim, "id": "new/near.png", "camera": "cam-new", "content_hash": "f" * 64, "phash": flipped}],
                        schema=o1.drop("group", "split").schema)
    _, o2 = run(tmp_path, pl.concat([frame(), near]), sp, "ds2")
    assert o2.filter(pl.col("id") == "new/near.png")["split"].item() == "test"


def test_unfrozen_split_keeps_no_state(tmp_path):
    run(tmp_path, frame(), spec(group_by="camera", frozen_eval=False))
    assert load_state(tmp_path / "state").height == 0


def test_too_few_groups_is_a_clear_error(tmp_path):
    with pytest.raises(SplitError, match="cannot fill train and test"):
        run(tmp_path, frame(n_cameras=1), spec(group_by="camera"))


def test_detection_and_segmentation_classes_are_counted_and_annotations_version_the_split(tmp_path):
    box = pl.Struct({"x1": pl.Float64, "y1": pl.Float64, "x2": pl.Float64, "y2": pl.Float64, "category": pl.String})
    base = frame().with_columns(pl.lit(None, dtype=pl.Utf8).alias("label"))
    boxes = [[{"x1": 0.0, "y1": 0.0, "x2": 4.0, "y2": 4.0, "category": "a"}] * (1 + i % 2) for i in range(base.height)]
    det = base.with_columns(pl.Series("boxes", boxes, dtype=pl.List(box)))
    sp = spec(task="detection", group_by="camera")
    r1, o1 = run(tmp_path / "a", det, sp)
    assert sum(r1.per_class[s]["a"] for s in ("train", "val", "test")) == sum(len(b) for b in boxes)
    moved = [[{**b[0], "x2": 5.0}] + b[1:] if i == 0 else b for i, b in enumerate(boxes)]
    r2, _ = run(tmp_path / "b", det.with_columns(pl.Series("boxes", moved, dtype=pl.List(box))), sp)
    assert r2.split_version != r1.split_version, "a changed box must give a new split version"

    seg = base.with_columns(pl.Series("mask_classes", [["bg", "defect"] if i % 3 == 0 else ["bg"] for i in range(base.height)]),
                            pl.lit("m" * 64).alias("mask_hash"))
    sp = spec(task="segmentation", group_by="camera")
    r3, o3 = run(tmp_path / "c", seg, sp)
    assert sum(r3.per_class[s].get("defect", 0) for s in ("train", "val", "test")) == 32
    r4, _ = run(tmp_path / "d", seg.with_columns(pl.lit("n" * 64).alias("mask_hash")), sp)
    assert r4.split_version != r3.split_version, "a changed mask must give a new split version"
