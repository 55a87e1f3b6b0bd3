"""Label versions: immutable, content-keyed, diffable, and named in each model's lineage."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml

from conveyor.labels import versions as labels
from conveyor.cli.main import main
from conveyor.data.ingest import ingest
from conveyor.core.spec import spec_from_dict
from conveyor.core.workspace import Workspace
from helpers.specs import toy_spec_dict
from helpers.toydata import write_toy_dataset


def _relabel(manifest, row: int, label: str) -> str:
    df = pl.read_csv(manifest, infer_schema=False)
    df = df.with_columns(pl.when(pl.int_range(pl.len()) == row).then(pl.lit(label)).otherwise(pl.col("label"))
                         .alias("label"))
    df.write_csv(manifest)
    return df["path"][row]


def test_a_label_change_is_a_new_version_and_the_diff_names_it(tmp_path, capsys):
    manifest = write_toy_dataset(tmp_path / "data", per_class_per_camera=2, cameras=2)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(toy_spec_dict(source=str(manifest))))
    spec = spec_from_dict(toy_spec_dict(source=str(manifest)))
    ws = Workspace(tmp_path / "workspace")

    def version():
        res = ingest(spec, ws.datasets)
        return labels.publish(ws, spec.name, pl.read_parquet(res.manifest_path))

    v1 = version()
    assert v1.created and v1.parent is None and v1.rows == 12
    again = version()
    assert again.version == v1.version and not again.created  # same labels: same version, nothing written

    moved = _relabel(manifest, 0, "green")  # a red square relabelled by a reviewer
    v2 = version()
    assert v2.created and v2.version != v1.version and v2.parent == v1.version
    d = labels.diff(ws, spec.name, v1.version[:6], "latest")
    assert d.added == [] and d.removed == []
    (change,) = d.changed
    assert change["id"] == moved and (change["old"], change["new"]) == ("red", "green")

    # an image that leaves the dataset is a removal; a renamed file keeps its label (content key)
    df = pl.read_csv(manifest, infer_schema=False)
    df.slice(1).write_csv(manifest)
    v3 = version()
    d = labels.diff(ws, spec.name, "previous", "latest")
    assert [r["label"] for r in d.removed] == [df["label"][0]] and d.changed == [] and d.added == []
    assert [e["version"] for e in labels.history(ws, spec.name)] == [v1.version, v2.version, v3.version]
    assert pl.read_parquet(v1.path).height == 12  # immutable: the first version is untouched

    # the CLI
    assert main(["labels", "diff", str(spec_path), v1.version, v2.version, "--workspace", str(ws.root)]) == 0
    out = capsys.readouterr().out
    assert "1 changed, 0 added, 0 removed" in out and f"~ {moved}: red -> green" in out
    assert main(["labels", "list", str(spec_path), "--json", "--workspace", str(ws.root)]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["labels", "diff", str(spec_path), "ffffff", "--workspace", str(ws.root)]) == 1
    assert "unknown" in capsys.readouterr().err
    with pytest.raises(labels.LabelError, match="no label versions"):
        labels.resolve(Workspace(tmp_path / "empty"), spec.name, "latest")


def test_detection_boxes_and_segmentation_masks_are_labels_too():
    box = {"x1": 1.0, "y1": 1.0, "x2": 5.0, "y2": 5.0, "category": "a"}
    det = pl.DataFrame({"content_hash": ["h1", "h2"], "id": ["i1", "i2"], "boxes": [[box], []]})
    moved = det.with_columns(pl.Series("boxes", [[{**box, "x2": 6.0}], []]))
    t1, t2 = labels.label_table(det), labels.label_table(moved)
    assert t1["label"][0] != t2["label"][0] and t1["label"][1] == t2["label"][1]
    seg = labels.label_table(pl.DataFrame({"content_hash": ["h"], "id": ["i"], "mask_hash": ["m1"]}))
    assert seg["label"].to_list() == ["m1"] and seg["source"].to_list() == ["human"]


def test_label_table_asks_the_task_kind():
    box = {"x1": 1.0, "y1": 1.0, "x2": 5.0, "y2": 5.0, "category": "a"}
    det = pl.DataFrame({"content_hash": ["h1"], "id": ["i1"], "label": pl.Series([None], dtype=pl.String),
                        "boxes": [[box]]})
    inferred, named = labels.label_table(det), labels.label_table(det, "detection")
    assert inferred["label"].to_list() == named["label"].to_list() and named["label"][0] is not None
    assert labels.label_table(det, "classification")["label"].to_list() == [None]
    with pytest.raises(labels.LabelError, match="no label columns"):
        labels.label_table(pl.DataFrame({"content_hash": ["h"], "id": ["i"]}))
