"""Multi-label end to end: ``conveyor demo --example multilabel``, the served path and a Label Studio round trip.

The demo uses the example spec exactly as shipped, so the gate assertions are the example's own
(``f1_macro >= 0.95``, ``map >= 0.95``, ``ece <= 0.03``, ``latency_p95_ms <= 25``). The registered
champion's ONNX file is then decoded through :class:`conveyor.serving.model.LoadedModel` (as the
service does), and a reviewed Label Studio export goes back in through ``conveyor review import``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from conveyor.core.spec import load_spec
from conveyor.demo.bundled import bundled_example, example_writer
from conveyor.demo.multilabel import BATCH1, BATCH2, CLASSES


def test_the_multilabel_example_validates_and_is_registered():
    from conveyor import kinds

    spec = load_spec(bundled_example("multilabel"))
    assert spec.task == "multilabel" and "multilabel" in kinds.available()
    assert spec.data.format == "manifest" and spec.data.classes == CLASSES
    assert spec.gates.rules == ["f1_macro >= 0.95", "map >= 0.95", "ece <= 0.03", "latency_p95_ms <= 25"]
    assert example_writer("multilabel").__name__ == "write_multilabel_demo"


def test_demo_batches_ingest_with_labels_lists(tmp_path):
    from conveyor.data.ingest import ingest

    spec_path = tmp_path / "multilabel.yaml"
    spec_path.write_text(bundled_example("multilabel").read_text())
    spec = load_spec(spec_path)
    write = example_writer("multilabel")
    write(spec, 1)
    first = ingest(spec, tmp_path / "ws")
    assert first.received == first.accepted == BATCH1 and first.quarantined == 0
    assert first.classes == CLASSES
    m = pl.read_parquet(first.manifest_path)
    assert m.schema["labels"] == pl.List(pl.String) and m["label"].null_count() == m.height
    assert first.annotations["labels_total"] == sum(len(v) for v in m["labels"].to_list())
    write(spec, 2)
    second = ingest(spec, tmp_path / "ws")
    assert second.received == BATCH1 + BATCH2 + 4 == second.accepted + second.quarantined
    assert second.quarantine_reasons == {"missing_file": 1, "path_escapes_root": 1, "unknown_label": 1,
                                         "zero_byte": 1}
    assert second.dataset_version != first.dataset_version


def _conveyor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", GX_ANALYTICS_ENABLED="false", WANDB_MODE="offline",
               PREFECT_HOME=str(cwd / "prefect-home"), PREFECT_LOGGING_LEVEL="WARNING")
    return subprocess.run([sys.executable, "-m", "conveyor.cli.main", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=3000)


def _check_gates(s: dict) -> None:
    m = s["metrics"]
    assert m["f1_macro"] >= 0.95 and m["map"] >= 0.95 and m["ece"] <= 0.03 and m["latency_p95_ms"] <= 25
    assert all(f"f1[{c}]" in m and f"ap[{c}]" in m for c in CLASSES)
    assert 0.0 <= m["exact_match"] <= 1.0


@pytest.mark.slow
def test_multilabel_demo_passes_its_gates_serves_and_takes_reviews(tmp_path):
    from conveyor.core.workspace import Workspace
    from conveyor.labels import versions
    from conveyor.labels.labelstudio.export import make_task
    from conveyor.labels.stage import review_dir
    from conveyor.release.registry import Registry
    from conveyor.serving.model import LoadedModel

    demo = tmp_path / "demo"
    res = _conveyor("demo", "--example", "multilabel", "--dir", str(demo), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-5000:]
    first, second = json.loads(res.stdout)
    assert first["task"] == second["task"] == "multilabel"
    assert first["decision"] == "promoted", first["gate_summary"]
    _check_gates(first)
    d = second["dataset"]
    assert d["received"] == d["accepted"] + d["quarantined"] and d["quarantined"] == 4
    assert second["decision"] == "promoted", second["gate_summary"]  # beats the first model within tolerance
    _check_gates(second)
    assert first["latency"]["backend"] == "onnxruntime" and first["onnx_max_abs_diff"] is not None

    # the served path: the champion's ONNX decoded as the service does
    spec_path = demo / "multilabel.yaml"
    spec = load_spec(spec_path)
    ws = Workspace(spec.workspace_path())
    champ = Registry(ws.root / "registry").champion(spec.name)
    model = LoadedModel(champ.version, champ.file("model.onnx"))
    assert model.kind.name == "multilabel" and model.classes == CLASSES
    manifest = pl.read_csv(spec.source_path, infer_schema=False).head(40)
    paths = [str(spec.source_path.parent / p) for p in manifest["path"].to_list()]
    truth = [set(filter(None, (v or "").split(";"))) for v in manifest["labels"].to_list()]
    hits = 0
    for r in model.run_files(paths, spec.data.max_pixels):
        pred = model.decode(r.outputs, r.width, r.height)
        assert set(pred.payload["probabilities"]) == set(CLASSES)
        assert pred.features["predicted_count"] == len(pred.payload["labels"])
        assert pred.features["predicted"] == ";".join(pred.payload["labels"])
        hits += set(pred.payload["labels"]) == truth[r.index]
    assert hits >= 30  # exact-match on images the model trained or was checked on

    # a Label Studio round trip: tasks made from known images, answered, imported
    known = pl.read_parquet(review_dir(ws, spec.name) / "known.parquet").sort("id").head(3)
    answers = [["0", "3"], [], ["4"]]
    tasks = []
    for k, (row, labels) in enumerate(zip(known.iter_rows(named=True), answers)):
        t = make_task({**row, "image": row["path"], "labels": ["1"]}, "multilabel", CLASSES, "v1")
        assert t["predictions"][0]["result"][0]["value"] == {"choices": ["1"]}
        result = [dict(t["predictions"][0]["result"][0], value={"choices": labels})]
        tasks.append({**t, "id": k + 1, "annotations": [{"id": k + 1, "completed_by": 7, "result": result}]})
    bad = {"id": 9, "data": {"content_hash": known["content_hash"][0]},
           "annotations": [{"id": 9, "result": [dict(tasks[0]["annotations"][0]["result"][0],
                                                      value={"choices": ["7"]})]}]}
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks + [bad]))
    res = _conveyor("review", "import", str(spec_path), str(export), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-5000:]
    imp = json.loads(res.stdout)
    assert imp["received"] == 4 and imp["accepted"] == 3 and imp["quarantined"] == 1
    assert imp["quarantine_reasons"] == {"unknown_label": 1}
    label_version = pl.read_parquet(versions.labels_dir(ws, spec.name) / f"{imp['label_version']}.parquet")
    stored = dict(zip(label_version["content_hash"].to_list(), label_version["label"].to_list()))
    assert stored[known["content_hash"][0]] == "0;3" and stored[known["content_hash"][1]] == ""
    assert stored[known["content_hash"][2]] == "4"
