"""Curate: privacy rules, exact and near duplicates, label conflicts, the prefer set, counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conveyor.data.curate import EXTRA_SCHEMA, CurateError, curate
from conveyor.data.ingest import MANIFEST_SCHEMA, ingest
from conveyor.data.neardup import near_duplicate_pairs, near_pairs
from helpers import imagefactory as F
from helpers.specs import curate_spec as make_spec


def write_dataset(tmp_path: Path) -> Path:
    """One manifest with every curation case; returns the ingest manifest.parquet."""
    root = tmp_path / "data"
    a = F.write_smooth(root / "a.png", seed=1)
    (root / "a_copy.png").write_bytes(a.read_bytes())  # exact copy, captured earlier
    F.write_smooth(root / "b.png", seed=6)
    F.write_smooth(root / "b_bright.png", seed=6, brighten=8)  # near copy, captured earlier
    F.write_smooth(root / "b_jpeg.jpg", seed=6, quality=90)  # re-encoded near copy
    c = F.write_smooth(root / "c.png", seed=7)
    (root / "c_other_label.png").write_bytes(c.read_bytes())  # exact copy, another label
    F.write_smooth(root / "d.png", seed=3)
    F.write_smooth(root / "d_near_other_label.jpg", seed=3, quality=90)  # near copy, another label
    for name, seed in [("e.png", 10), ("f.png", 11), ("g.png", 12), ("h.png", 13)]:
        F.write_smooth(root / name, seed=seed)
    rows = [
        ("a.png", "cat", "cam1", "kitchen", "2026-01-02T00:00:00Z"),
        ("a_copy.png", "cat", "cam2", "kitchen", "2026-01-01T00:00:00Z"),
        ("b.png", "dog", "cam1", "yard", "2026-01-05T00:00:00Z"),
        ("b_bright.png", "dog", "cam1", "yard", "2026-01-03T00:00:00Z"),
        ("b_jpeg.jpg", "dog", "cam1", "yard", None),
        ("c.png", "cat", "cam1", "yard", None),
        ("c_other_label.png", "dog", "cam1", "yard", None),
        ("d.png", "cat", "cam3", "yard", None),
        ("d_near_other_label.jpg", "dog", "cam3", "yard", None),
        ("e.png", "cat", "secret-cam", "yard", None),
        ("f.png", "dog", "cam1", "bathroom", None),
        ("g.png", "cat", None, "yard", None),
        ("h.png", "dog", "cam2", "yard", None),
    ]
    pl.DataFrame(rows, schema=["path", "label", "camera", "scene", "captured_at"], orient="row").write_csv(
        root / "manifest.csv")
    res = ingest(make_spec(tmp_path), tmp_path / "datasets")
    assert res.accepted == len(rows)
    return Path(res.manifest_path)


FULL = {
    "privacy": {"exclude_cameras": ["secret-cam"], "exclude_scenes": ["bathroom"], "drop_missing_camera": True},
}


def removed_map(res) -> dict[str, tuple[str, str | None, int | None]]:
    r = pl.read_parquet(res.removed_path)
    return {i: (reason, dup, dist) for i, reason, dup, dist in
            zip(r["id"].to_list(), r["reason"].to_list(), r["duplicate_of"].to_list(), r["distance"].to_list())}


def test_every_rule_with_reasons_and_counts(tmp_path):
    manifest = write_dataset(tmp_path)
    res = curate(manifest, make_spec(tmp_path, FULL), tmp_path / "curated")
    removed = removed_map(res)
    assert {k: v[0] for k, v in removed.items()} == {
        "a.png": "exact_duplicate",
        "b.png": "near_duplicate",
        "b_jpeg.jpg": "near_duplicate",
        "c.png": "label_conflict",
        "c_other_label.png": "label_conflict",
        "d.png": "label_conflict",
        "d_near_other_label.jpg": "label_conflict",
        "e.png": "privacy_excluded_camera",
        "f.png": "privacy_excluded_scene",
        "g.png": "privacy_missing_camera",
    }
    assert removed["a.png"][1:] == ("a_copy.png", 0)  # the earlier capture is kept
    assert removed["b.png"][1] == "b_bright.png" and removed["b_jpeg.jpg"][1] == "b_bright.png"
    assert 0 <= removed["b.png"][2] <= 2 and 0 <= removed["b_jpeg.jpg"][2] <= 2
    kept = pl.read_parquet(res.curated_path)
    assert kept["id"].to_list() == ["a_copy.png", "b_bright.png", "h.png"]
    assert res.received == 13 and res.kept == 3 and res.removed == 10
    assert res.kept + res.removed == res.received
    assert res.removed_reasons == {
        "exact_duplicate": 1, "near_duplicate": 2, "label_conflict": 4,
        "privacy_excluded_camera": 1, "privacy_excluded_scene": 1, "privacy_missing_camera": 1,
    }
    # schemas: curated = manifest columns; removed adds reason, duplicate_of, distance
    assert dict(kept.schema) == MANIFEST_SCHEMA
    rem = pl.read_parquet(res.removed_path)
    assert dict(rem.schema) == {**MANIFEST_SCHEMA, **EXTRA_SCHEMA}
    assert rem["id"].to_list() == sorted(rem["id"].to_list())


def test_prefer_set_keeps_the_frozen_eval_copy(tmp_path):
    manifest = write_dataset(tmp_path)
    df = pl.read_parquet(manifest)
    h = dict(zip(df["id"].to_list(), df["content_hash"].to_list()))
    prefer = frozenset({h["b_jpeg.jpg"], "f" * 64})  # an unknown hash changes nothing else
    res = curate(manifest, make_spec(tmp_path, FULL), tmp_path / "curated", prefer=prefer)
    removed = removed_map(res)
    assert "b_jpeg.jpg" not in removed
    assert removed["b.png"][:2] == ("near_duplicate", "b_jpeg.jpg")
    assert removed["b_bright.png"][:2] == ("near_duplicate", "b_jpeg.jpg")
    # a.png and a_copy.png have the same hash: with it preferred, the tie goes to captured_at
    res2 = curate(manifest, make_spec(tmp_path, FULL), tmp_path / "curated", prefer=frozenset({h["a.png"]}))
    assert removed_map(res2)["a.png"][:2] == ("exact_duplicate", "a_copy.png")
    assert res.curated_version != curate(manifest, make_spec(tmp_path, FULL), tmp_path / "curated").curated_version


def test_keep_exact_and_no_near_duplicates(tmp_path):
    manifest = write_dataset(tmp_path)
    spec = make_spec(tmp_path, {"exact_duplicates": "keep", "near_duplicates": {"enabled": False}})
    res = curate(manifest, spec, tmp_path / "curated")
    assert res.removed == 0 and res.kept == res.received == 13
    # near duplicates on, exact copies kept: copies move together, conflicts still go
    spec = make_spec(tmp_path, {"exact_duplicates": "keep"})
    removed = removed_map(curate(manifest, spec, tmp_path / "curated"))
    assert "a.png" not in removed and "a_copy.png" not in removed
    assert removed["c.png"][0] == removed["c_other_label.png"][0] == "label_conflict"


def test_near_duplicate_distance_setting(tmp_path):
    manifest = write_dataset(tmp_path)
    strict = curate(manifest, make_spec(tmp_path, {"near_duplicates": {"max_distance": 0}}), tmp_path / "c")
    loose = curate(manifest, make_spec(tmp_path, {"near_duplicates": {"max_distance": 2}}), tmp_path / "c")
    assert strict.removed_reasons.get("near_duplicate", 0) <= loose.removed_reasons["near_duplicate"]
    assert strict.curated_version != loose.curated_version


def test_version_is_stable_and_outputs_are_in_place(tmp_path):
    manifest = write_dataset(tmp_path)
    spec = make_spec(tmp_path, FULL)
    r1 = curate(manifest, spec, tmp_path / "curated")
    r2 = curate(manifest, spec, tmp_path / "curated")
    assert r1 == r2 and len(r1.curated_version) == 16
    folder = Path(r1.curated_path).parent
    assert folder.name == r1.curated_version
    assert sorted(p.name for p in folder.iterdir()) == ["curate.json", "curated.parquet", "removed.parquet"]
    assert r1.to_dict()["kept"] == 3


def test_missing_manifest_raises(tmp_path):
    with pytest.raises(CurateError, match="does not exist"):
        curate(tmp_path / "nope.parquet", make_spec(tmp_path), tmp_path / "c")


def test_near_pairs_matches_the_all_pairs_search():
    rng = np.random.default_rng(0)
    base = [rng.integers(0, 256, 8, dtype=np.uint8) for _ in range(300)]
    hashes = []
    for _ in range(1500):
        b = base[rng.integers(0, len(base))].copy()
        for _ in range(rng.integers(0, 5)):
            bit = rng.integers(0, 64)
            b[bit // 8] ^= 1 << (bit % 8)
        hashes.append(b.tobytes().hex())
    hashes += ["00" * 8] * 80  # one big group of identical hashes
    for d in (0, 1, 2, 4, 12):
        assert near_pairs(hashes, d) == sorted(near_duplicate_pairs(hashes, d)), d
    assert near_pairs(hashes[:1], 2) == [] and near_pairs([], 2) == []
