"""Monitoring: profiles, the drift and performance triggers, the cool-down, the monitor report."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from conveyor.demo import bundled as demo
from conveyor.monitoring import drift
from conveyor.orchestration import prefect_api
from conveyor.core import events
from conveyor.monitoring import feedback
from conveyor.monitoring import monitor
from conveyor.monitoring import profiles
from conveyor.core.cycles import CycleGuard, CycleRunning
from conveyor.data.ingest import ingest
from conveyor.core.spec import SpecError, spec_from_dict
from conveyor.core.workspace import Workspace
from helpers.specs import DIGIT_CLASSES, DRIFT_FEATURES, digits_spec, toy_spec_dict

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
FEATURES = DRIFT_FEATURES
CLASSES = DIGIT_CLASSES


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The classification demo's first batch (real digits, eight cameras) and its baseline."""
    tmp = tmp_path_factory.mktemp("digits")
    manifest = demo.write_demo_batch(tmp / "train", 1)
    spec = digits_spec(manifest, tmp)
    res = ingest(spec, tmp / "datasets")
    profiles.write_baseline(tmp / "version", pl.read_parquet(res.manifest_path), None)
    return {"tmp": tmp, "spec": spec, "baseline": {"images": profiles.read_baseline(tmp / "version", "images")}}


def incoming(digits, name: str, **sample) -> profiles.ProfileStore:
    """A production sample of the same cameras, ingested and profiled as one batch an hour ago."""
    tmp = digits["tmp"]
    manifest = demo.write_production_sample(tmp / name, 400, **sample)
    res = ingest(digits_spec(manifest, tmp), tmp / f"datasets-{name}")
    store = profiles.ProfileStore(tmp / f"profiles-{name}")
    store.write_batch("images", profiles.image_table(pl.read_parquet(res.manifest_path)), at=NOW - timedelta(hours=1))
    return store


def test_drift_stays_quiet_on_a_fresh_sample_of_the_same_cameras(digits):
    store = incoming(digits, "fresh", seed=1)
    rep = drift.evaluate_drift(digits["spec"].triggers.drift, store, digits["baseline"], NOW)
    assert rep.status == "quiet" and not rep.fired and rep.drifted == []
    assert {f.feature for f in rep.features} == set(FEATURES)
    assert all(f.status == drift.NO_DRIFT for f in rep.features)
    assert sorted(rep.cameras) == demo.CAMERAS_1 and rep.rows == {"images": 400}


def test_drift_fires_on_a_brightness_shift_and_says_why(digits):
    store = incoming(digits, "brighter", seed=2, lighting=0.1)
    rep = drift.evaluate_drift(digits["spec"].triggers.drift, store, digits["baseline"], NOW)
    assert rep.fired and rep.status == "fired"
    b = next(f for f in rep.features if f.feature == "brightness")
    assert b.status == drift.DRIFT and b.window_mean > b.baseline_mean
    assert b.relative_change > 0.15 and b.pvalue < 0.05
    assert rep.reason.startswith("drift: overall brightness 0.23") and "margin 15.0%" in b.reason
    # the class mix did not change: label stays quiet
    assert next(f for f in rep.features if f.feature == "label").status == drift.NO_DRIFT


def test_drift_of_one_camera_is_caught_per_camera(digits):
    store = incoming(digits, "cam03", seed=3, lighting={"cam-03": 0.25})
    rep = drift.evaluate_drift(digits["spec"].triggers.drift, store, digits["baseline"], NOW)
    overall = next(f for f in rep.features if f.feature == "brightness")
    assert overall.status == drift.NO_DRIFT  # diluted by the seven unchanged cameras
    assert rep.fired and {f.camera for f in rep.drifted} == {"cam-03"}
    assert rep.reason.startswith("drift: camera cam-03 brightness") and "overall" not in rep.reason
    # without per-camera tests nothing fires
    cfg = digits["spec"].triggers.drift.model_copy(update={"per_camera": False})
    assert not drift.evaluate_drift(cfg, store, digits["baseline"], NOW).fired


def test_hellinger_test_agrees_on_the_shift(digits):
    cfg = digits["spec"].triggers.drift.model_copy(update={"test": "hellinger", "features": ["brightness"]})
    quiet = drift.evaluate_drift(cfg, incoming(digits, "fresh-h", seed=4), digits["baseline"], NOW)
    loud = drift.evaluate_drift(cfg, incoming(digits, "bright-h", seed=5, lighting=0.1), digits["baseline"], NOW)
    assert not quiet.fired and loud.fired
    assert loud.features[0].test == "hellinger" and loud.features[0].statistic > cfg.hellinger


def test_too_little_data_or_no_baseline_is_never_reported_as_no_drift(digits, tmp_path):
    tmp = digits["tmp"]
    manifest = demo.write_production_sample(tmp_path / "few", 12, seed=6, lighting=0.3)
    res = ingest(digits_spec(manifest, tmp), tmp_path / "ds")
    store = profiles.ProfileStore(tmp_path / "profiles")
    store.write_batch("images", profiles.image_table(pl.read_parquet(res.manifest_path)), at=NOW - timedelta(hours=1))
    cfg = digits["spec"].triggers.drift
    rep = drift.evaluate_drift(cfg, store, digits["baseline"], NOW)
    assert rep.status == drift.NOT_ENOUGH_DATA and not rep.fired
    assert "fewer than min_samples 30" in rep.reason
    none = drift.evaluate_drift(cfg, store, {}, NOW)
    assert none.status == drift.NO_BASELINE and not none.fired and "no baseline" in none.reason


def test_windows_merge_batches_by_time(tmp_path):
    store = profiles.ProfileStore(tmp_path)
    t = pl.DataFrame({"brightness": [0.1, 0.2, 0.3], "camera": ["a", "b", "a"]})
    old = store.write_batch("images", t, at=NOW - timedelta(days=8))
    recent = [store.write_batch("images", t, at=NOW - timedelta(days=d)) for d in (3, 1)]
    assert store.write_batch("images", t.head(0), at=NOW) is None
    (Path(recent[0].path).parent / "half-written").mkdir()  # no batch.json: ignored
    w = store.window("images", NOW - timedelta(days=7), NOW)
    assert [b.batch_id for b in w.batches] == [b.batch_id for b in recent] and old.batch_id not in w.batches
    assert w.rows == 6 and w.camera_rows == {"a": 4, "b": 2}
    assert profiles.column_rows(w.view, "brightness") == 6 and profiles.column_rows(w.cameras["b"], "brightness") == 2
    assert profiles.column_mean(w.view, "brightness") == pytest.approx(0.2)


def test_image_table_has_detection_object_features():
    boxes = [[{"x1": 0.0, "y1": 0.0, "x2": 10.0, "y2": 10.0, "category": "a"},
              {"x1": 0.0, "y1": 0.0, "x2": 20.0, "y2": 20.0, "category": "b"}], []]
    m = pl.DataFrame({"brightness": [0.5, 0.4], "width": [100, 100], "height": [100, 100], "camera": ["c", None],
                      "boxes": boxes})
    t = profiles.image_table(m)
    assert t["objects"].to_list() == [2.0, 0.0]
    assert t["object_size"].to_list()[0] == pytest.approx(0.15) and t["object_size"].to_list()[1] is None
    assert t["camera"].to_list() == ["c", profiles.UNKNOWN_CAMERA]


# ---- performance ------------------------------------------------------------------------------
def _feedback(path: Path, n: int, noise: float, seed: int = 0, start: datetime = NOW - timedelta(days=2)) -> Path:
    rng = np.random.default_rng(seed)
    labels = rng.choice(CLASSES, n)
    predicted = [str(rng.choice(CLASSES)) if rng.random() < noise else lab for lab in labels]
    pl.DataFrame({"timestamp": [(start + timedelta(minutes=i)).isoformat() for i in range(n)],
                  "label": labels.tolist(), "predicted": predicted,
                  "camera": [f"cam-0{i % 3}" for i in range(n)]}).write_csv(path)
    return path


def _perf(path: Path, below: float = 0.9, min_samples: int = 50):
    spec = spec_from_dict({**toy_spec_dict(), "triggers": {"performance": {"below": below, "min_samples": min_samples,
                                                                           "feedback": str(path)}}})
    checked = feedback.check_feedback(path, CLASSES, "classification") if path.exists() else None
    return feedback.evaluate_performance(spec.triggers.performance, path, checked, NOW)


def test_performance_fires_on_label_noise_and_passes_clean_feedback(tmp_path):
    clean = _perf(_feedback(tmp_path / "clean.csv", 200, noise=0.02))
    assert clean.status == "ok" and not clean.fired and clean.value > 0.9 and clean.samples == 200
    noisy = _perf(_feedback(tmp_path / "noisy.csv", 200, noise=0.4))
    assert noisy.fired and noisy.status == "fired" and noisy.value < 0.9
    assert "below the target 0.9" in noisy.reason and set(noisy.per_camera) == {"cam-00", "cam-01", "cam-02"}


def test_performance_without_enough_feedback_is_not_a_pass(tmp_path):
    few = _perf(_feedback(tmp_path / "few.csv", 20, noise=0.5))
    assert few.status == "not_enough_data" and not few.fired and "20 samples" in few.reason
    missing = _perf(tmp_path / "nothing-yet.csv")
    assert missing.status == "no_feedback" and not missing.fired
    # rows older than the window do not count
    old = _perf(_feedback(tmp_path / "old.csv", 200, noise=0.5, start=NOW - timedelta(days=30)))
    assert old.status == "not_enough_data" and old.samples == 0


def test_bad_feedback_rows_are_quarantined_with_row_and_reason(tmp_path):
    log = pl.DataFrame({"prediction_id": ["p1", "p2"], "predicted": ["3", "4"]})
    path = tmp_path / "fb.csv"
    pl.DataFrame({
        "timestamp": [NOW.isoformat(), "yesterday", NOW.isoformat(), NOW.isoformat(), NOW.isoformat(), NOW.isoformat(),
                      NOW.isoformat(), NOW.isoformat()],
        "label": ["3", "3", None, "eleven", "4", "4", "5", "5"],
        "predicted": ["3", "3", "3", "3", None, None, "7", "x"],
        "prediction_id": [None, None, None, None, "p2", "p9", "p1", None],
    }).write_csv(path)
    checked = feedback.check_feedback(path, CLASSES, "classification", log)
    assert checked.received == 8 and checked.accepted.height + checked.quarantined.height == 8
    assert checked.reasons == {"bad_timestamp": 1, "missing_label": 1, "unknown_label": 1, "unknown_prediction": 1,
                               "unknown_class": 1}
    assert checked.accepted["predicted"].to_list() == ["3", "4", "7"]  # p2 joined from the prediction log
    row = checked.quarantined.filter(pl.col("reason") == "bad_timestamp").row(0, named=True)
    assert row["row"] == 2 and row["field"] == "timestamp" and "yesterday" in row["detail"]
    with pytest.raises(feedback.FeedbackError, match="lacks the required column"):
        pl.DataFrame({"label": ["1"]}).write_csv(tmp_path / "nolabel.csv")
        feedback.check_feedback(tmp_path / "nolabel.csv", CLASSES, "classification")


def test_prediction_log_accounts_for_every_row(tmp_path):
    spec = digits_spec(tmp_path / "src", tmp_path)
    ws = Workspace(tmp_path / "ws")
    table = tmp_path / "preds.jsonl"
    rows = [
        {"prediction_id": "a", "timestamp": "2026-11-26T10:00:00Z", "camera": "cam-01", "predicted": "3", "confidence": 0.9},
        {"prediction_id": "b", "timestamp": "2026-11-27T10:00:00Z", "camera": "cam-02", "predicted": "4", "confidence": 0.7},
        {"prediction_id": "c", "timestamp": "2026-11-27T10:05:00Z", "predicted": "4", "confidence": 1.5},
        {"prediction_id": "a", "timestamp": "2026-11-27T10:06:00Z", "predicted": "4", "confidence": 0.5},
        {"prediction_id": "d", "timestamp": "2026-11-27T10:07:00Z", "predicted": "cat", "confidence": 0.5},
        {"prediction_id": "e", "timestamp": "2026-11-27T10:08:00Z", "predicted": "1", "confidence": "high"},
        {"prediction_id": "f", "timestamp": "2026-11-27T10:09:00Z", "confidence": 0.6},
    ]
    table.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = monitor.observe_predictions(spec, ws, table, at=NOW)
    assert (res.received, res.accepted, res.quarantined) == (7, 2, 5)
    assert res.quarantine_reasons == {"out_of_range": 1, "duplicate_row": 1, "unknown_class": 1, "bad_value": 1,
                                      "missing_prediction": 1}
    assert len(res.batches) == 2  # one per day
    log = feedback.read_prediction_log(monitor.prediction_log_dir(ws, "digits"))
    assert sorted(log["prediction_id"].to_list()) == ["a", "b"]
    w = monitor.profile_store(ws, "digits").window("predictions", NOW - timedelta(days=7), NOW)
    assert w.rows == 2 and profiles.column_counts(w.view, "predicted") == {"3": 1, "4": 1}


def test_observe_manifest_profiles_each_image_once(tmp_path):
    from helpers.toydata import write_toy_dataset

    manifest = write_toy_dataset(tmp_path / "data", per_class_per_camera=2, cameras=2)
    spec = spec_from_dict(toy_spec_dict(source=str(manifest)))
    ws = Workspace(tmp_path / "ws")
    res = ingest(spec, ws.datasets)
    first = monitor.observe_manifest(spec, ws, res.manifest_path, at=NOW)
    assert first.rows == 12 and first.cameras == {"cam-00": 6, "cam-01": 6}
    assert monitor.observe_manifest(spec, ws, res.manifest_path, at=NOW) is None
    write_toy_dataset(tmp_path / "data", per_class_per_camera=1, cameras=1, seed=9, start_index=100, camera_offset=5)
    res2 = ingest(spec, ws.datasets)
    second = monitor.observe_manifest(spec, ws, res2.manifest_path, at=NOW)
    assert second.rows == 3 and set(second.cameras) == {"cam-05"}


# ---- cool-down and the running lock -------------------------------------------------------------
def test_cycle_guard_blocks_a_second_cycle_and_applies_the_cool_down(tmp_path):
    guard = CycleGuard(tmp_path)
    assert not guard.suppression("drift", 3600).blocked
    with guard.hold("run-1", "schedule"):
        assert guard.running()["run_id"] == "run-1"
        sup = guard.suppression("drift", 3600)
        assert sup.blocked and "run-1" in sup.reason
        assert guard.suppression("manual", 3600).blocked  # manual runs never run beside another cycle
        with pytest.raises(CycleRunning, match="already running: run run-1"):
            with CycleGuard(tmp_path).hold("run-2", "manual"):
                pass
    assert guard.running() is None
    sup = guard.suppression("drift", 3600)
    assert sup.blocked and sup.reason.startswith("cool-down") and sup.until
    assert not guard.suppression("manual", 3600).blocked and not guard.suppression("demo-batch-2", 3600).blocked
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    assert not guard.suppression("drift", 3600, now=later).blocked


def test_a_crashed_cycle_does_not_hold_the_lock(tmp_path):
    import subprocess
    import sys

    code = ("import os, sys; from conveyor.core.cycles import CycleGuard\n"
            f"g = CycleGuard({str(tmp_path)!r}); cm = g.hold('crashed', 'drift'); cm.__enter__(); os._exit(1)")
    subprocess.run([sys.executable, "-c", code], check=False)
    guard = CycleGuard(tmp_path)
    assert guard.running() is None
    assert guard.state()["running"]["run_id"] == "crashed"  # its record stays, the lock does not
    with guard.hold("next", "manual"):
        pass


# ---- the whole report ----------------------------------------------------------------------------
def _register_champion(ws: Workspace, name: str, baseline_dir: Path) -> None:
    from conveyor.release.registry import Registry

    reg = Registry(ws.registry)
    (baseline_dir / "metrics.json").write_text("{}")
    files = {"metrics.json": str(baseline_dir / "metrics.json")}
    files.update(profiles.write_baseline(baseline_dir, pl.read_parquet(baseline_dir / "train.parquet"), None))
    mv = reg.register(name, files=files, model_hash="h1", metrics={}, lineage={}, gate={})
    reg.set_alias(name, mv.version, reason="test")


def test_evaluate_triggers_reports_every_trigger_and_respects_the_cool_down(digits, tmp_path):
    tmp = digits["tmp"]
    fb = _feedback(tmp_path / "feedback.csv", 120, noise=0.5)
    spec = digits_spec(tmp / "train" / "manifest.csv", tmp_path,
                       performance={"below": 0.9, "feedback": str(fb)}, schedule={"cron": "0 3 * * 1"},
                       webhook=True, cooldown="6h")
    ws = Workspace(tmp_path / "ws")
    bdir = tmp_path / "baseline"
    bdir.mkdir()
    pl.read_parquet(next((tmp / "datasets").rglob("manifest.parquet"))).write_parquet(bdir / "train.parquet")
    _register_champion(ws, "digits", bdir)
    store = monitor.profile_store(ws, "digits")
    manifest = demo.write_production_sample(tmp_path / "bright", 300, seed=8, lighting=0.12)
    res = ingest(digits_spec(manifest, tmp), tmp_path / "ds")
    store.write_batch("images", profiles.image_table(pl.read_parquet(res.manifest_path)), at=NOW - timedelta(hours=2))

    rep = monitor.evaluate_triggers(spec, ws, NOW)
    assert rep.champion_version == 1 and rep.fired == ["drift", "performance"]
    assert rep.start_cycle and rep.trigger == "drift+performance" and rep.suppressed_by is None
    assert rep.triggers["schedule"]["next_run"] == "2026-11-30T03:00:00+00:00"
    assert rep.triggers["webhook"]["status"] == "on" and rep.triggers["manual"]["status"] == "on"
    names = [e["event"] for e in monitor.report_events(rep)]
    assert names == ["conveyor.drift.detected", "conveyor.performance.degraded"]
    ev = monitor.report_events(rep)[0]
    assert ev["resource"]["prefect.resource.id"] == "conveyor.pipeline.digits"
    assert any(f["feature"] == "brightness" for f in ev["payload"]["features"])

    # a cycle started an hour ago: the same evidence starts nothing, and the events say why
    guard = CycleGuard(ws.state("digits"))
    guard._write(last_start={"run_id": "r1", "trigger": "drift", "started_at": (NOW - timedelta(hours=1)).isoformat()})
    rep2 = monitor.evaluate_triggers(spec, ws, NOW)
    assert rep2.fired and not rep2.start_cycle and rep2.suppressed_by.startswith("cool-down")
    assert {e["event"] for e in monitor.report_events(rep2)} >= {"conveyor.drift.suppressed"}
    path = monitor.write_report(ws, rep2)
    assert json.loads(path.read_text())["suppressed_by"].startswith("cool-down")


def test_events_are_logged_locally_even_without_a_prefect_api(tmp_path, monkeypatch):
    import prefect.events

    def boom(**kwargs):
        raise ConnectionError("no API")

    monkeypatch.setattr(prefect.events, "emit_event", boom)
    ev = events.make_event("conveyor.drift.checked", "p", {"reason": "quiet"})
    assert prefect_api.emit(ev, tmp_path / "events.jsonl") is None
    assert events.read_log(tmp_path / "events.jsonl")[0]["event"] == "conveyor.drift.checked"
    with pytest.raises(ValueError, match="unknown event"):
        events.make_event("conveyor.nonsense", "p", {})


def test_trigger_settings_are_validated_with_clear_errors(tmp_path):
    def load(triggers):
        return spec_from_dict({**toy_spec_dict(), "triggers": triggers})

    for triggers, message in [
        ({"drift": {"features": ["brightnes"]}}, "unknown drift feature"),
        ({"drift": {"window": "a week"}}, "triggers.drift.window"),
        ({"drift": {"pvalue": 2}}, "triggers.drift.pvalue"),
        ({"schedule": {"cron": "0 3 * * 9"}}, "not a valid cron expression"),
        ({"schedule": {"cron": "0 3 * *"}}, "must have 5 fields"),
        ({"schedule": {"cron": "0 3 * * 1", "timezone": "Mars/Olympus"}}, "not an IANA time zone"),
        ({"performance": {"below": 1.5}}, "triggers.performance.below"),
        ({"performance": {"below": 0.9, "metric": "auc"}}, "triggers.performance.metric"),
        ({"cooldown": "soon"}, "triggers.cooldown"),
        ({"webhook": "yes please"}, "triggers.webhook"),
    ]:
        with pytest.raises(SpecError, match=message):
            load(triggers)
    ok = load({"drift": {"features": ["brightness", "predicted", "confidence"], "test": "hellinger"},
               "cooldown": "30m", "monitor_every": "15m"})
    assert ok.triggers.drift.test == "hellinger" and ok.triggers.cooldown == "30m"
    assert yaml.safe_load(ok.resolved_yaml())["triggers"]["monitor_every"] == "15m"


# ---- drift windows leave out the champion's own training data ------------------------------------
def _lit(manifest: Path, factor: float) -> pl.DataFrame:
    """A manifest's image rows with brightness scaled as a lamp change would (clipped at 1)."""
    df = pl.read_parquet(manifest)
    return df.with_columns((pl.col("brightness") * factor).clip(0.0, 1.0))


def test_the_drift_window_compares_only_images_that_arrived_after_the_champions_data(digits, tmp_path):
    """Training images, new images like them, then a brighter batch: with the training images in
    the window the shift is diluted; without them it is measured on the arrivals alone."""
    tmp = digits["tmp"]
    train = pl.read_parquet(ingest(digits_spec(demo.write_production_sample(tmp_path / "t", 180, seed=11), tmp),
                                   tmp_path / "dt").manifest_path)
    same = pl.read_parquet(ingest(digits_spec(demo.write_production_sample(tmp_path / "s", 180, seed=12), tmp),
                                  tmp_path / "ds").manifest_path)
    bright = _lit(ingest(digits_spec(demo.write_production_sample(tmp_path / "b", 180, seed=13), tmp),
                         tmp_path / "db").manifest_path, 1.5)
    profiles.write_baseline(tmp_path / "v1", train, None)
    base = {"images": profiles.read_baseline(tmp_path / "v1", "images")}
    store = profiles.ProfileStore(tmp_path / "profiles")
    for k, df in enumerate((train, same, bright)):
        store.write_batch("images", profiles.image_table(df), at=NOW - timedelta(hours=3 - k),
                          keys=df["content_hash"])
    cfg = digits["spec"].triggers.drift.model_copy(update={"features": ["brightness"], "per_camera": False})

    diluted = drift.evaluate_drift(cfg, store, base, NOW)
    honest = drift.evaluate_drift(cfg, store, base, NOW, exclude=frozenset(train["content_hash"].to_list()))
    d, h = diluted.features[0], honest.features[0]
    assert diluted.rows == {"images": 540} and honest.rows == {"images": 360}
    expected = float(pl.concat([same, bright])["brightness"].mean()) / float(train["brightness"].mean()) - 1
    assert h.relative_change == pytest.approx(expected, rel=0.05)
    assert h.relative_change > d.relative_change + 0.04
    assert honest.fired
    print(f"window with the training images {d.relative_change:+.1%}, arrivals only {h.relative_change:+.1%}")


def test_the_monitor_leaves_out_the_registered_champions_images(digits, tmp_path):
    """Through the monitor: the champion's registered split names the images it was trained on."""
    from conveyor.release.registry import Registry

    tmp = digits["tmp"]
    train = pl.read_parquet(ingest(digits_spec(demo.write_production_sample(tmp_path / "t", 200, seed=31), tmp),
                                   tmp_path / "dt").manifest_path)
    ws = Workspace(tmp_path / "ws")
    vdir = tmp_path / "v1"
    train.select("content_hash").write_parquet(tmp_path / "split.parquet")
    files = {"split.parquet": str(tmp_path / "split.parquet")}
    files.update(profiles.write_baseline(vdir, train, None))
    reg = Registry(ws.registry)
    reg.set_alias("digits", reg.register("digits", files=files, model_hash="h1", metrics={}, lineage={}, gate={}).version,
                  reason="test")
    assert monitor.champion_images(ws, "digits") == frozenset(train["content_hash"].to_list())
    store = monitor.profile_store(ws, "digits")
    store.write_batch("images", profiles.image_table(train), at=NOW - timedelta(hours=2), keys=train["content_hash"])
    spec = digits_spec(tmp / "train" / "manifest.csv", tmp_path)
    rep = monitor.evaluate_triggers(spec, ws, NOW)  # only the training images arrived: nothing to compare
    assert rep.drift.rows["images"] == 0 and rep.drift.status == drift.NOT_ENOUGH_DATA


def test_a_quarter_brighter_batch_after_training_fires_with_at_least_20_percent(digits, tmp_path):
    tmp = digits["tmp"]
    train = pl.read_parquet(ingest(digits_spec(demo.write_production_sample(tmp_path / "t", 180, seed=21), tmp),
                                   tmp_path / "dt").manifest_path)
    lamp = _lit(ingest(digits_spec(demo.write_production_sample(tmp_path / "l", 180, seed=22), tmp),
                       tmp_path / "dl").manifest_path, 1.25)
    profiles.write_baseline(tmp_path / "v1", train, None)
    store = profiles.ProfileStore(tmp_path / "profiles")
    store.write_batch("images", profiles.image_table(train), at=NOW - timedelta(hours=2), keys=train["content_hash"])
    store.write_batch("images", profiles.image_table(lamp), at=NOW - timedelta(hours=1), keys=lamp["content_hash"])
    cfg = digits["spec"].triggers.drift.model_copy(update={"features": ["brightness"], "per_camera": False})
    rep = drift.evaluate_drift(cfg, store, {"images": profiles.read_baseline(tmp_path / "v1", "images")}, NOW,
                               exclude=frozenset(train["content_hash"].to_list()))
    assert rep.fired and rep.features[0].relative_change >= 0.20
    print(f"1.25x brightness batch: relative change {rep.features[0].relative_change:+.1%}")
