"""Gate reports: the notebook renders for every task kind, failures are clear, `conveyor report` re-renders.

The run folders here are built without training: the test split is decoded by the task adapter,
the model outputs are made up, and everything else (metrics.json, predictions.parquet, latency,
gate outcomes, the registered version, the monitor's drift report) comes from the same code the
cycle runs, so the files have exactly the cycle's shapes. A real cycle's report is checked in
tests/test_flow.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from PIL import Image

from conveyor import kinds
from conveyor.reporting import report
from conveyor.model.evaluate import EvalResult, _latency_report, _PeakRss
from conveyor.release.gate import DECISION_WORDS, evaluate_gate
from conveyor.release.registry import Registry
from conveyor.core.spec import spec_from_dict
from conveyor.core.io import atomic_write_json

SIZE = 32
CLASSES = {"classification": ["red", "green", "blue"], "detection": ["box", "disc"],
           "segmentation": ["background", "defect"]}
RULES = {"classification": ["f1 >= 0.5", "ece <= 0.2", "latency_p95_ms <= 25"],
         "detection": ["map50 >= 0.3", "latency_p95_ms <= 25"],
         "segmentation": ["miou >= 0.5", "fn_rate[defect] <= 0.3", "latency_p95_ms <= 25"]}
CHAMPION_METRIC = {"classification": "f1", "detection": "map50", "segmentation": "miou"}
RUN_ID = "3f2a9c1e-5b7d-4e11-9a0b-c0ffee000001"


def _images(root: Path, task: str, n: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for i in range(n):
        arr = rng.integers(0, 255, size=(SIZE, SIZE, 3), dtype=np.uint8)
        rel = root / "img" / f"cam-{i % 2}" / f"{i:03d}.png"
        rel.parent.mkdir(parents=True, exist_ok=True)
        row = {"id": f"{i:03d}", "path": str(rel), "split": "test", "group": f"camera:cam-{i % 2}", "camera": f"cam-{i % 2}"}
        if task == "classification":
            row["label"] = CLASSES[task][i % 3]
        elif task == "detection":
            x = 4 + i % 8
            row["boxes"] = [{"x1": float(x), "y1": 4.0, "x2": float(x + 14), "y2": 20.0, "category": CLASSES[task][i % 2]}]
            row["width"], row["height"] = SIZE, SIZE
            arr[4:20, x:x + 14] = 255
        else:
            mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
            mask[8:8 + 4 + i % 12, 6:24] = 1
            mp = root / "masks" / f"{i:03d}.png"
            mp.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask, mode="L").save(mp)
            row["mask_path"] = str(mp)
            arr[mask == 1] = 250
        Image.fromarray(arr).save(rel)
        rows.append(row)
    return rows


def _outputs(task: str, data, rng: np.random.Generator, noise: float):
    k = len(CLASSES[task])
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    if task == "classification":
        logits = torch.randn(len(data), k, generator=g) * noise
        logits[torch.arange(len(data)), data.targets] += 2.0
        return logits
    if task == "segmentation":
        onehot = torch.nn.functional.one_hot(data.targets.long().clamp(max=k - 1), k).permute(0, 3, 1, 2).float()
        return onehot * 3.0 + torch.randn(onehot.shape, generator=g) * noise * 2
    out = []
    for t in data.targets:
        jitter = torch.randn(t["boxes"].shape, generator=g) * noise * 4
        scores = (0.95 - torch.rand(len(t["labels"]), generator=g) * noise).clamp(0.05, 1.0)
        out.append({"boxes": t["boxes"] + jitter, "scores": scores, "labels": t["labels"].clone()})
    return out


def _evaluation(task: str, split_path: Path, out: Path, rng: np.random.Generator, noise: float) -> EvalResult:
    adapter = kinds.get(task).training
    data = adapter.load_split(split_path, CLASSES[task], "test", SIZE)
    outputs = _outputs(task, data, rng, noise)
    scored = adapter.evaluate_outputs(outputs, data, CLASSES[task])
    out.mkdir(parents=True, exist_ok=True)
    preds = out / "predictions.parquet"
    pl.DataFrame(adapter.prediction_records(outputs, data, CLASSES[task])).write_parquet(preds)
    times = list(np.abs(rng.normal(2.0, 0.3, 200)) / 1000.0) + [0.02]  # one slow outlier
    latency = _latency_report({"backend": "onnxruntime", "provider": "CPUExecutionProvider"}, (times, 10, 0.5), 32,
                              _PeakRss(), runs=200, warmup=20, num_threads=2, image_size=SIZE)
    latency.update(model_size_mb=0.5, params_m=0.1)
    metrics = {**scored.metrics, "latency_p50_ms": latency["latency_p50_ms"], "latency_p95_ms": latency["latency_p95_ms"],
               "throughput_ips": latency["throughput_ips"], "model_size_mb": 0.5}
    res = EvalResult(metrics=metrics, per_class=scored.per_class, confusion_matrix=scored.confusion_matrix,
                     metrics_path=str(out / "metrics.json"), onnx_path=None, onnx_max_abs_diff=1e-6, split="test",
                     n_images=len(data), latency=latency, predictions_path=str(preds),
                     curves=dict(getattr(scored, "curves", None) or {}), classes=CLASSES[task])
    atomic_write_json(out / "metrics.json", res.to_dict())
    return res


def _segmentation_onnx(path: Path) -> None:
    from conveyor.model.evaluate import export_onnx_model
    from conveyor.kinds.segmentation import model as seg

    torch.manual_seed(0)
    model = seg.build_model("unet", 2, {"depth": 2, "width": 4})
    meta = {"mean": [0.5] * 3, "std": [0.25] * 3, "image_size": SIZE, "classes": CLASSES["segmentation"],
            "model_name": "unet"}
    export_onnx_model(seg.deploy_module(model, meta), path, seg.example_input(meta, 1), input_names=seg.ONNX_INPUT_NAMES,
                      output_names=seg.ONNX_OUTPUT_NAMES, dynamic_axes=seg.ONNX_DYNAMIC_AXES,
                      metadata=seg.onnx_metadata(meta))


def make_run(root: Path, task: str, *, trigger: str = "manual", with_champion: bool = True) -> Path:
    """A workspace with one finished run of ``task``: run folder, registered version, evaluations."""
    rng = np.random.default_rng(0)
    ws = root / "ws"
    spec_dict = {"name": f"toy-{task}", "task": task, "data": {"source": str(root / "data"), "classes": CLASSES[task]},
                 "train": {"image_size": SIZE},
                 "gates": {"rules": RULES[task], "champion": {"metrics": [CHAMPION_METRIC[task]], "tolerance": 0.02}},
                 "workspace": str(ws)}
    (root / "data").mkdir(parents=True, exist_ok=True)
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict))
    spec = spec_from_dict(spec_dict, base_dir=root)
    rows = _images(root / "data", task, 12, rng)
    split_path = ws / "splits" / "s1" / "split.parquet"
    split_path.parent.mkdir(parents=True)
    pl.DataFrame(rows).write_parquet(split_path)

    noise = 1.5 if task == "classification" else 0.6  # classification: a few mistakes to show
    chall = _evaluation(task, split_path, ws / "evals" / "challenger", rng, noise=noise)
    champ = _evaluation(task, split_path, ws / "evals" / "champion", rng, noise=2 * noise) if with_champion else None
    decision = evaluate_gate(spec, chall.metrics, champ.metrics if champ else None, 1 if champ else None)

    reg = Registry(ws / "registry")
    lineage = {"dataset_version": "d" * 16, "manifest_hash": "m" * 64, "split_version": "s1", "spec_hash": spec.spec_hash,
               "seed": 0, "code_commit": "abc1234", "packages": {"torch": torch.__version__}, "trigger": trigger,
               "reason": None, "run_id": RUN_ID}
    files = {"metrics.json": chall.metrics_path}
    if task == "segmentation":
        _segmentation_onnx(ws / "evals" / "challenger" / "model.onnx")
        files["model.onnx"] = str(ws / "evals" / "challenger" / "model.onnx")
    if champ is not None:
        reg.register(spec.name, files={"metrics.json": champ.metrics_path}, model_hash="champion", metrics=champ.metrics,
                     lineage=lineage, gate={}, run_id="an-earlier-run")
    version = reg.register(spec.name, files=files, model_hash="challenger", metrics=chall.metrics, lineage=lineage,
                           gate=decision.to_dict(), run_id=RUN_ID)

    ds = ws / "datasets" / "d1"
    ds.mkdir(parents=True)
    pl.DataFrame({"path": [str(root / "data" / "bad.png"), str(root / "data" / "empty.png")], "rel_path": ["bad.png", "empty.png"],
                  "row": [3, 7], "field": ["path", "path"], "reason": ["corrupt", "zero_bytes"],
                  "detail": ["manifest row 3: bad.png: cannot decode", "manifest row 7: empty.png: zero bytes"]}
                 ).write_parquet(ds / "quarantine.parquet")
    pl.DataFrame({"id": ["x1"], "path": [rows[0]["path"]], "reason": ["exact_duplicate"], "duplicate_of": [rows[1]["id"]],
                  "distance": [0]}).write_parquet(ds / "removed.parquet")

    run_dir = ws / "runs" / f"20260101T000000Z-{RUN_ID[:8]}"
    run_dir.mkdir(parents=True)
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(spec_dict))
    atomic_write_json(run_dir / "run.json", {"run_id": RUN_ID, "spec": spec.name, "spec_hash": spec.spec_hash,
                                             "trigger": trigger, "reason": "drift on cam-1" if trigger == "drift" else None,
                                             "started_at": "20260101T000000Z"})
    atomic_write_json(run_dir / "contracts.json", {
        "success": True, "evaluated": 14, "failed_count": 0, "params": {},
        "suites": [{"name": "manifest_schema", "success": True, "evaluated": 9, "failed": []},
                   {"name": "split_leakage", "success": True, "evaluated": 5, "failed": []}]})
    per_class_split = {"test": {c: sum(1 for r in rows if r.get("label") == c) or 4 for c in CLASSES[task]},
                       "train": {c: 10 for c in CLASSES[task]}, "val": {c: 3 for c in CLASSES[task]}}
    summary = {
        "run_id": RUN_ID, "spec": spec.name, "task": task, "trigger": trigger, "reason": None, "workspace": str(ws),
        "run_dir": str(run_dir), "dataset_version": "d" * 16, "decision": DECISION_WORDS[decision.decision],
        "gate_summary": decision.summary, "reasons": [o.to_dict() for o in decision.outcomes],
        "metrics": chall.metrics, "champion_metrics": champ.metrics if champ else None,
        "model_version": version.version, "model_dir": version.artifact_dir, "champion_version": 1,
        "promotion": "champion stays v1", "rollout": None,
        "dataset": {"received": 40, "accepted": 38, "quarantined": 2, "quarantine_reasons": {"corrupt": 1, "zero_bytes": 1},
                    "quarantine_path": str(ds / "quarantine.parquet"), "curated": 37,
                    "removed_reasons": {"exact_duplicate": 1}, "removed_path": str(ds / "removed.parquet"),
                    "annotations": ({"boxes_received": 14, "boxes_accepted": 12, "boxes_quarantined": 2,
                                     "box_quarantine_reasons": {"empty_box": 2}, "negative_images": 0}
                                    if task == "detection" else None)},
        "split": {"split_version": "s1", "group_by": "camera", "counts": {"train": 20, "val": 5, "test": 12},
                  "groups": {"train": 4, "val": 1, "test": 2}, "per_class": per_class_split, "path": str(split_path)},
        "evaluation": {"metrics_path": chall.metrics_path, "predictions_path": chall.predictions_path,
                       "champion_metrics_path": champ.metrics_path if champ else None},
        "train": {"checkpoint": "-", "seconds": 1.0, "epochs": 2, "best_epoch": 2},
        "onnx_max_abs_diff": 1e-6, "latency": chall.latency,
    }
    atomic_write_json(run_dir / "summary.json", summary)
    if trigger == "drift":
        _drift_report(ws, spec.name)
    return run_dir


def _drift_report(ws: Path, name: str) -> None:
    from conveyor.monitoring.drift import DriftReport, FeatureDrift
    from conveyor.monitoring.monitor import MonitorReport
    from conveyor.core.workspace import Workspace
    from conveyor.monitoring import monitor

    feats = [FeatureDrift("brightness", "images", "numeric", "drift", 300, 900, "ks", 0.4, 1e-9, 0.40, 0.55, 0.375,
                          reason="brightness 0.4 -> 0.55"),
             FeatureDrift("contrast", "images", "numeric", "no_drift", 300, 900, "ks", 0.05, 0.4, 0.20, 0.21, 0.05)]
    cams = {"cam-1": [FeatureDrift("brightness", "images", "numeric", "drift", 150, 450, "ks", 0.6, 1e-12, 0.4, 0.7, 0.75,
                                   camera="cam-1")]}
    d = DriftReport("fired", True, "7d", "2025-12-25T00:00:00+00:00", "2025-12-31T23:00:00+00:00", {"images": 3},
                    {"images": 300}, 1, feats, cams, "brightness drifted")
    rep = MonitorReport(name, "2025-12-31T23:00:00+00:00", 1, {"drift": {"status": "fired", "fired": True, "reason": d.reason}},
                        ["drift"], True, "drift", d.reason, None, d, None)
    monitor.write_report(Workspace(ws), rep)


def _html(res: report.ReportResult) -> str:
    assert Path(res.notebook_path).is_file()
    return Path(res.html_path).read_text()


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_report_renders_for_each_task_kind(tmp_path, task):
    run_dir = make_run(tmp_path, task, trigger="drift" if task == "segmentation" else "manual")
    res = report.render_report(run_dir, timeout=120)
    assert res.html_path == str(run_dir / "report" / "gate_report.html")
    assert res.notebook_path == str(run_dir / "report" / "gate_report.ipynb")
    page = _html(res)
    assert 'class="gate-table"' in page and "latency_p95_ms &lt;= 25" in page
    assert page.count("data:image/png;base64") >= 4  # figures are embedded, not linked
    assert "<script src=" not in page  # nothing fetched from a CDN
    assert "import matplotlib" not in page  # code cells are hidden
    assert "Traceback" not in page
    assert "Lineage" in page and "abc1234" in page
    assert "quarantine" in page.lower() and "zero_bytes" in page
    assert "no reliability diagram" not in page and "not at hand" not in page and "no examples" not in page
    # figure titles are the images' alternative text
    if task == "classification":
        assert 'alt="Reliability on 12 test images' in page and 'alt="Confusion matrix' in page
        assert "Hardest mistakes" in page and "most confident" in page
    if task == "detection":
        assert 'alt="AP per class' in page and 'alt="Precision-recall per class at IoU 0.5"' in page
        assert "green: ground truth" in page and "Ground truth only: the run registered no ONNX model" in page
    if task == "segmentation":
        assert 'alt="IoU per class' in page and "predicted worst" in page and "Ground truth only" not in page
        assert "brightness" in page and "not by drift" not in page  # started by drift: the drift plots are there
    else:
        assert "not by drift: no drift plots" in page


def test_missing_sections_print_notes_instead_of_failing(tmp_path):
    run_dir = make_run(tmp_path, "classification", with_champion=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    Path(summary["evaluation"]["predictions_path"]).unlink()
    Path(summary["split"]["path"]).unlink()
    (run_dir / "contracts.json").unlink()
    res = report.render_report(run_dir, out_dir=tmp_path / "elsewhere")
    assert res.html_path == str(tmp_path / "elsewhere" / "gate_report.html")
    page = _html(res)
    assert "predictions.parquet was not found: no reliability diagram" in page
    assert "contracts.json was not found" in page and 'class="gate-table"' in page


def broken_notebook(path: Path) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    cells = [new_code_cell('run_dir = ""\nworkspace = ""\ntitle = ""'), new_code_cell("print('first cell ran')"),
             new_code_cell("raise ValueError('the summary says nonsense')"), new_code_cell("print('never')")]
    cells[0]["metadata"]["tags"] = ["parameters"]
    cells[2]["id"] = "broken-section"
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_a_broken_notebook_raises_a_clear_error_and_keeps_the_partial_output(tmp_path):
    run_dir = make_run(tmp_path, "classification")
    broken = broken_notebook(tmp_path / "broken.ipynb")
    old_html = run_dir / "report" / "gate_report.html"
    old_html.parent.mkdir(parents=True)
    old_html.write_text("an older report")

    with pytest.raises(report.ReportError) as err:
        report.render_report(run_dir, notebook=broken)
    msg = str(err.value)
    assert "'broken-section'" in msg and "ValueError: the summary says nonsense" in msg
    assert err.value.ename == "ValueError"
    partial = Path(err.value.notebook_path)
    assert partial == run_dir / "report" / "gate_report.ipynb" and partial.is_file()
    text = partial.read_text()
    assert "first cell ran" in text and "never" in text and "the summary says nonsense" in text
    assert not old_html.exists(), "a failed render must not leave an older page looking current"


@pytest.mark.slow
def test_report_task_links_indexes_and_fails_with_the_notebook_error(prefect_harness, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from prefect import flow

    from conveyor.orchestration.tasks.report import report_task

    @flow
    def report_flow(*args):
        return report_task(*args)

    run_dir = make_run(tmp_path, "classification")
    registry = str(tmp_path / "ws" / "registry")
    args = ("toy-classification", str(run_dir), registry, 2, RUN_ID)
    html = report_flow(*args)
    assert html == str(run_dir / "report" / "gate_report.html") and Path(html).is_file()
    assert json.loads((run_dir / "summary.json").read_text())["report"] == html
    assert Registry(registry).report("toy-classification", 2) == html
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["toy-classification-report"])))
    assert arts and Path(html).as_uri() in str(arts[0].data)

    monkeypatch.setenv(report.ENV_SWITCH, "0")
    assert report_flow(*args) is None
    assert json.loads((run_dir / "summary.json").read_text())["report"] is None

    monkeypatch.setenv(report.ENV_SWITCH, "1")
    monkeypatch.setattr(report, "NOTEBOOK", broken_notebook(tmp_path / "broken.ipynb"))
    with pytest.raises(report.ReportError, match="'broken-section'.*ValueError: the summary says nonsense"):
        report_flow(*args)
    assert (run_dir / "report" / "gate_report.ipynb").is_file()


def test_the_kernel_is_this_interpreter():
    import sys

    km = report.kernel_manager_class()(kernel_name="python3")
    assert km.kernel_spec.argv[0] == sys.executable


def test_conveyor_report_rerenders_by_path_and_by_run_id(tmp_path, capsys):
    from conveyor.cli.main import main

    run_dir = make_run(tmp_path, "classification")
    assert main(["report", str(run_dir)]) == 0
    html = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert html == run_dir / "report" / "gate_report.html" and html.is_file()

    out = tmp_path / "re-rendered"
    assert main(["report", RUN_ID[:8], "--spec", str(tmp_path / "spec.yaml"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "gate_report.html")
    assert "data:image/png;base64" in (out / "gate_report.html").read_text()

    assert main(["report", "feedbeef"]) == 1
    assert "give the spec (--spec)" in capsys.readouterr().err
    assert main(["report", "feedbeef", "--spec", str(tmp_path / "spec.yaml")]) == 1
    assert "no run 'feedbeef'" in capsys.readouterr().err


def test_registry_keeps_the_report_of_each_version(tmp_path, capsys):
    from conveyor.cli.main import main

    make_run(tmp_path, "classification")
    reg = Registry(tmp_path / "ws" / "registry")
    reg.add_report("toy-classification", 2, "/r/registering-run.html", RUN_ID)
    reg.add_report("toy-classification", 2, "/r/later-run.html", "a-later-run")  # found the same model again
    reg.add_report("toy-classification", 1, "/r/v1-first.html", "x")
    reg.add_report("toy-classification", 1, "/r/v1-second.html", "y")
    assert reg.report("toy-classification", 2) == "/r/registering-run.html"
    assert reg.report("toy-classification", 1) == "/r/v1-second.html"  # no run registered it: the latest
    assert reg.report("toy-classification", 3) is None
    reg.add_report("toy-classification", 2, "/r/re-rendered.html", RUN_ID)
    assert reg.report("toy-classification", 2) == "/r/re-rendered.html"
    with pytest.raises(Exception, match="no version 9"):
        reg.add_report("toy-classification", 9, "/r/x.html", RUN_ID)
    assert main(["registry", "list", str(tmp_path / "spec.yaml"), "--json"]) == 0
    versions = json.loads(capsys.readouterr().out)["versions"]
    assert [v["report"] for v in versions] == ["/r/v1-second.html", "/r/re-rendered.html"]


def test_the_report_switch(monkeypatch):
    monkeypatch.delenv(report.ENV_SWITCH, raising=False)
    assert report.enabled()
    for off in ("0", "false", "off", "NO"):
        monkeypatch.setenv(report.ENV_SWITCH, off)
        assert not report.enabled()
    monkeypatch.setenv(report.ENV_SWITCH, "1")
    assert report.enabled()
