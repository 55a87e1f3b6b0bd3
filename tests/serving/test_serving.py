"""The inference service: routing, switching, bad input, the prediction log, metrics (tiny ONNX models)."""

from __future__ import annotations

import io
import json
import threading
import time
import warnings
from contextlib import contextmanager

import httpx
import numpy as np
import polars as pl
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from conveyor.monitoring import feedback
from conveyor.monitoring import monitor
from conveyor.serving import log as prediction_log
from conveyor.kinds.detection import serving as detection_serving
from conveyor.release import rollout as rollout_state
from conveyor.serving import captures, preprocess, routing
from conveyor.serving import service as service_mod
from conveyor.serving.http import BackgroundServer, create_app
from conveyor.serving.preprocess import RequestError
from conveyor.serving.service import InferenceService, ServiceConfig
from conveyor.core.spec import spec_from_dict
from conveyor.core.io import atomic_write_json
from conveyor.core.workspace import Workspace

from helpers.serving import png, register, set_champion
from helpers.specs import toy_spec_dict
from helpers.tinymodels import SIDE
from helpers.toydata import TOY_COLOURS

CLASSES = list(TOY_COLOURS)  # red, green, blue
FAST = dict(poll_s=0.05, warmup_runs=1, flush_rows=10_000, flush_s=60.0)


def write_rollout(ws: Workspace, name: str, strategy: str, champion: int, challenger: int, traffic: float = 1.0,
                  status: str = "running", rollout_id: str = "r-1", sticky_header: str | None = None) -> None:
    atomic_write_json(rollout_state.rollout_path(ws, name), {
        "rollout_id": rollout_id, "strategy": strategy, "champion": champion, "challenger": challenger,
        "traffic": traffic, "sticky_header": sticky_header, "started_at": "2026-01-01T00:00:00+00:00",
        "ends_at": "2026-01-01T01:00:00+00:00", "status": status, "reason": None,
        "updated_at": "2026-01-01T00:00:00+00:00"})


@pytest.fixture
def cls_env(tmp_path, models):
    """A classification pipeline with v1 = always red, v2 = always green, v3 = dominant colour."""
    spec = spec_from_dict(toy_spec_dict(data={"max_pixels": 40_000}), base_dir=tmp_path)
    ws = Workspace(tmp_path / "ws")
    versions = [register(ws, spec.name, models[m], m) for m in ("red", "green", "colour")]
    assert versions == [1, 2, 3]
    return spec, ws


@contextmanager
def client(service: InferenceService):
    with TestClient(create_app(service)) as c:
        service.refresh()
        yield c


def log_rows(ws: Workspace, name: str) -> pl.DataFrame:
    return feedback.read_prediction_log(monitor.prediction_log_dir(ws, name))


def post(c, data: bytes, **headers):
    return c.post("/predict", content=data, headers={"Content-Type": "image/png", **headers})


# ---- preprocessing --------------------------------------------------------------------------------
def test_preprocessing_matches_the_training_decode(tmp_path):
    from conveyor.data.imageio import decode_image as decode_with_stats
    from conveyor.kinds.classification.model import decode_image

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (23, 37, 4), dtype=np.uint8), "RGBA")
    rgba.save(tmp_path / "a.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: width and height swap after the transpose
    Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(tmp_path / "b.jpg", exif=exif)
    for path, size in ((tmp_path / "a.png", (37, 23)), (tmp_path / "b.jpg", (30, 50))):
        data = path.read_bytes()
        req = preprocess.decode_request(data, max_pixels=10**6)
        want = torch.from_numpy(decode_image(path, SIDE).copy()).permute(2, 0, 1)[None].float() / 255.0
        assert np.array_equal(req.input(SIDE), want.numpy()), path.name
        assert (req.width, req.height) == size
        ref = decode_with_stats(data, max_pixels=10**6)
        for stat in ("brightness", "contrast", "saturation", "sharpness"):
            assert req.stats[stat] == pytest.approx(getattr(ref, stat), abs=1e-12)


def test_score_threshold_is_the_detection_adapters():
    from conveyor.kinds.detection import model as detection

    assert detection_serving.SCORE_THRESHOLD == detection.SCORE_THRESHOLD


def test_multipart_upload_is_extracted():
    body = (b"--xyz\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n\r\n--xyz--\r\n")
    assert preprocess.extract_upload(body, "multipart/form-data; boundary=xyz") == b"\x89PNG\r\n\x1a\n"
    assert preprocess.extract_upload(b"raw", "image/png") == b"raw"
    with pytest.raises(RequestError) as err:
        preprocess.extract_upload(body.replace(b'"file"', b'"other"'), "multipart/form-data; boundary=xyz")
    assert err.value.reason == "missing_file"


# ---- endpoints ------------------------------------------------------------------------------------
def test_not_ready_before_a_champion_exists(cls_env):
    spec, ws = cls_env
    service = InferenceService(spec, ws, ServiceConfig(**FAST))
    with client(service) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        r = post(c, png())
        assert r.status_code == 503 and r.json()["reason"] == "not_ready"
        set_champion(ws, spec.name, 1)
        service.refresh()
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json()["champion"] == 1
        assert post(c, png()).status_code == 200


def test_predict_answers_with_the_champion(cls_env):
    spec, ws = cls_env
    set_champion(ws, spec.name, 3)
    service = InferenceService(spec, ws, ServiceConfig(**FAST))
    with client(service) as c:
        r = post(c, png(TOY_COLOURS["red"]), **{"X-Request-Id": "req-1", "X-Camera": "cam-07"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["label"], body["model_version"], body["role"], body["request_id"]) == ("red", 3, "champion", "req-1")
        assert r.headers["X-Request-Id"] == "req-1"
        assert set(body["probabilities"]) == set(CLASSES)
        assert sum(body["probabilities"].values()) == pytest.approx(1.0)
        assert body["confidence"] == pytest.approx(max(body["probabilities"].values()))
        assert body["latency_ms"] > 0
        r = c.post("/predict", files={"file": ("g.png", png(TOY_COLOURS["green"]), "image/png")})
        assert r.status_code == 200 and r.json()["label"] == "green"
        r = c.post("/predict", content=png(TOY_COLOURS["blue"]), headers={"Content-Type": "application/octet-stream"})
        assert r.json()["label"] == "blue"
        status = c.get("/status").json()
        assert status["champion"] == 3 and status["challenger"] is None and status["loaded"] == [3]
        metrics = c.get("/metrics").text
        assert 'conveyor_requests_total{model_version="3",role="champion",status="ok"} 3.0' in metrics
        assert 'conveyor_model_info{role="champion",version="3"} 1.0' in metrics
        assert 'conveyor_request_latency_seconds_count{model_version="3",role="champion"} 3.0' in metrics
        assert 'conveyor_prediction_confidence_count{model_version="3"} 3.0' in metrics
    rows = log_rows(ws, spec.name)
    assert rows.height == 3
    first = rows.filter(pl.col("prediction_id") == "req-1").row(0, named=True)
    assert first["camera"] == "cam-07" and first["predicted"] == "red" and first["model_version"] == 3
    assert (first["width"], first["height"], first["status"], first["role"]) == (24, 20, "ok", "champion")
    assert first["brightness"] > 0 and first["latency_ms"] > 0
    # every answered image is kept once, content-addressed, for feedback and the review queue
    kept = captures.captures_dir(ws, spec.name) / first["capture"]
    assert kept.read_bytes() == png(TOY_COLOURS["red"]) and kept.suffix == ".png"
    assert rows["capture"].null_count() == 0 and rows["capture"].n_unique() == 3


def test_no_image_of_a_privacy_excluded_camera_is_kept(cls_env):
    spec, ws = cls_env
    set_champion(ws, spec.name, 1)
    spec = spec.model_copy(update={"curation": spec.curation.model_copy(update={
        "privacy": spec.curation.privacy.model_copy(update={"exclude_cameras": ["cam-private"]})})})
    service = InferenceService(spec, ws, ServiceConfig(**FAST))
    with client(service) as c:
        assert post(c, png(), **{"X-Camera": "cam-private", "X-Request-Id": "p-1"}).status_code == 200
        assert post(c, png(TOY_COLOURS["green"]), **{"X-Camera": "cam-07", "X-Request-Id": "p-2"}).status_code == 200
    rows = dict(log_rows(ws, spec.name).select("prediction_id", "capture").iter_rows())
    assert rows["p-1"] is None and rows["p-2"] is not None


def test_capture_share_is_a_stable_draw_per_request_id():
    ids = [f"req-{i}" for i in range(2000)]
    share = sum(captures.should_capture(i, 0.25) for i in ids) / len(ids)
    assert 0.2 < share < 0.3
    assert [captures.should_capture(i, 0.25) for i in ids[:50]] == [captures.should_capture(i, 0.25) for i in ids[:50]]
    assert not any(captures.should_capture(i, 0.0) for i in ids[:50])
    assert all(captures.should_capture(i, 1.0) for i in ids[:50])


def test_bad_requests_get_400_or_413_are_quarantined_and_serving_goes_on(cls_env):
    spec, ws = cls_env
    set_champion(ws, spec.name, 1)
    service = InferenceService(spec, ws, ServiceConfig(**FAST, max_body=4096))
    truncated = png(size=(40, 40))[:60]
    cases = [
        (b"", {}, 400, "zero_byte"),
        (b"hello, I am not an image", {"Content-Type": "text/plain"}, 400, "not_an_image"),
        (truncated, {}, 400, "corrupt"),
        (png(size=(300, 300)), {}, 400, "decompression_bomb"),  # 90,000 pixels > data.max_pixels 40,000
        (np.random.default_rng(0).bytes(5000), {}, 413, "body_too_large"),
        (png(), {"X-Request-Id": "no spaces allowed"}, 400, "bad_header"),
    ]
    with client(service) as c:
        for data, headers, status, reason in cases:
            r = c.post("/predict", content=data, headers={"Content-Type": "image/png", **headers})
            assert r.status_code == status, (reason, r.text)
            assert r.json()["reason"] == reason and r.json()["detail"]
        r = c.post("/predict", files={"other": ("a.png", png(), "image/png")})
        assert r.status_code == 400 and r.json()["reason"] == "missing_file"
        r = post(c, png())
        assert r.status_code == 200 and r.json()["label"] == "red"
        metrics = c.get("/metrics").text
        assert 'conveyor_requests_total{model_version="none",role="none",status="bad_request"} 7.0' in metrics
        assert 'status="error"' not in metrics
    q = prediction_log.read_quarantine(ws, spec.name)
    assert sorted(q["reason"].to_list()) == sorted([c[3] for c in cases] + ["missing_file"])
    assert q.filter(pl.col("reason") == "body_too_large")["size"].item() == 5000
    assert all(p.name.startswith("requests-") for p in prediction_log.quarantine_dir(ws, spec.name).iterdir())
    assert log_rows(ws, spec.name).height == 1


def test_shadow_answers_with_the_champion_and_logs_the_challenger(cls_env, tmp_path):
    spec, ws = cls_env
    set_champion(ws, spec.name, 1)
    write_rollout(ws, spec.name, "shadow", champion=1, challenger=2)
    service = InferenceService(spec, ws, ServiceConfig(**FAST))
    with client(service) as c:
        assert service.status()["challenger"] == 2
        answers = [post(c, png(), **{"X-Request-Id": f"s-{i}"}).json() for i in range(20)]
    assert {(a["label"], a["model_version"], a["role"]) for a in answers} == {("red", 1, "champion")}
    rows = log_rows(ws, spec.name)
    answered, shadow = rows.filter(pl.col("role") == "champion"), rows.filter(pl.col("role") == "shadow")
    assert answered.height == 20 and shadow.height == 20
    assert set(shadow["predicted"]) == {"green"} and set(shadow["model_version"]) == {2}
    assert set(shadow["prediction_id"]) == set(answered["prediction_id"])
    # feedback joins by prediction id with the answer the caller got, not the shadow copy
    fb = tmp_path / "feedback.csv"
    pl.DataFrame({"timestamp": ["2026-01-01T00:00:00Z"] * 20, "prediction_id": [f"s-{i}" for i in range(20)],
                  "label": ["red"] * 20}).write_csv(fb)
    checked = feedback.check_feedback(fb, CLASSES, "classification", rows)
    assert checked.accepted.height == 20 and set(checked.accepted["predicted"]) == {"red"}
    # profiles: the answers only, in both streams
    store = monitor.profile_store(ws, spec.name)
    assert sum(b.rows for b in store.batches("predictions")) == 20
    assert sum(b.rows for b in store.batches("images")) == 20


def test_model_failures_answer_500_and_shadow_failures_change_nothing(cls_env):
    spec, ws = cls_env
    set_champion(ws, spec.name, 1)
    write_rollout(ws, spec.name, "shadow", champion=1, challenger=2)
    service = InferenceService(spec, ws, ServiceConfig(**FAST))

    def boom(request):
        raise RuntimeError("boom")

    with client(service) as c:
        service.routing.challenger.predict = boom
        r = post(c, png(), **{"X-Request-Id": "shadow-fails"})
        assert r.status_code == 200 and r.json()["label"] == "red"
        real = service.routing.champion.predict
        service.routing.champion.predict = boom
        r = post(c, png(), **{"X-Request-Id": "champion-fails"})
        assert r.status_code == 500 and r.json()["reason"] == "model_error"
        service.routing.champion.predict = real
        assert post(c, png()).status_code == 200
    metrics = service.metrics.render().decode()  # after the shutdown: every shadow copy has run
    assert 'conveyor_requests_total{model_version="1",role="champion",status="error"} 1.0' in metrics
    assert 'conveyor_requests_total{model_version="2",role="shadow",status="error"} 2.0' in metrics
    rows = log_rows(ws, spec.name)
    failed = rows.filter(pl.col("status") == "error")
    assert failed.height == 3 and set(failed["error"]) == {"RuntimeError: boom"}
    assert rows.filter((pl.col("role") == "champion") & (pl.col("status") == "ok")).height == 2


def test_canary_sends_its_share_and_sticky_keys_stay_put(cls_env):
    spec, ws = cls_env
    set_champion(ws, spec.name, 1)
    write_rollout(ws, spec.name, "canary", champion=1, challenger=2, traffic=0.3, rollout_id="canary-7")
    service = InferenceService(spec, ws, ServiceConfig(**FAST))
    data = png()
    with client(service) as c:
        roles = [post(c, data).json()["role"] for _ in range(200)]
        share = roles.count("challenger") / len(roles)
        assert 0.2 <= share <= 0.4, share  # binomial(200, 0.3): +-3 standard deviations
        seen: dict[str, set] = {}
        for rep in range(3):
            for k in range(40):
                r = post(c, data, **{"X-Request-Key": f"user-{k}"}).json()
                seen.setdefault(f"user-{k}", set()).add((r["model_version"], r["role"]))
        assert all(len(v) == 1 for v in seen.values())
        for key, v in seen.items():
            want = "challenger" if routing.sticky_fraction("canary-7", key) < 0.3 else "champion"
            assert next(iter(v))[1] == want
        assert 0 < sum(next(iter(v))[1] == "challenger" for v in seen.values()) < 40
    rows = log_rows(ws, spec.name)
    assert rows.height == 320 and rows.filter(pl.col("request_key") == "user-3").height == 3


def test_blue_green_switches_everything_once_the_challenger_is_ready(cls_env, models):
    spec, ws = cls_env
    set_champion(ws, spec.name, 1)
    broken = register(ws, spec.name, models["broken"], "broken")
    write_rollout(ws, spec.name, "blue_green", champion=1, challenger=broken)
    service = InferenceService(spec, ws, ServiceConfig(**FAST))
    with client(service) as c:
        # a challenger that cannot load is never switched to
        assert {post(c, png()).json()["model_version"] for _ in range(5)} == {1}
        st = c.get("/status").json()
        assert st["challenger"] is None and str(broken) in st["load_errors"] and st["traffic"] == 0.0
        write_rollout(ws, spec.name, "blue_green", champion=1, challenger=2, rollout_id="r-2")
        service.refresh()
        answers = [post(c, png()).json() for _ in range(10)]
        assert {(a["model_version"], a["role"], a["label"]) for a in answers} == {(2, "challenger", "green")}
        st = c.get("/status").json()
        assert (st["champion"], st["challenger"], st["strategy"], st["traffic"]) == (1, 2, "blue_green", 1.0)
        state = json.loads(service_mod.service_state_path(ws, spec.name).read_text())
        assert state["ready"] == [1, 2] and state["rollout_id"] == "r-2" and state["pid"] > 0
        # an unusable rollout.json leaves the routing as it is
        rollout_state.rollout_path(ws, spec.name).write_text("{not json")
        service.refresh()
        assert post(c, png()).json()["model_version"] == 2 and c.get("/status").json()["rollout_error"]
        # the controller promotes: the alias moves, the rollout ends; v1 is unloaded
        set_champion(ws, spec.name, 2)
        write_rollout(ws, spec.name, "blue_green", champion=1, challenger=2, status="promoted", rollout_id="r-2")
        service.refresh()
        r = post(c, png()).json()
        assert (r["model_version"], r["role"]) == (2, "champion")
        assert c.get("/status").json()["loaded"] == [2]
        assert 'conveyor_model_info{role="champion",version="2"} 1.0' in c.get("/metrics").text


def test_an_in_flight_request_keeps_the_model_it_started_with(cls_env):
    spec, ws = cls_env
    set_champion(ws, spec.name, 1)
    service = InferenceService(spec, ws, ServiceConfig(**FAST))
    service.refresh()
    old = service.routing.champion
    started, release = threading.Event(), threading.Event()
    real = old.predict

    def slow(request):
        started.set()
        assert release.wait(10)
        return real(request)

    old.predict = slow
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(service.predict(png(), service.context({}))))
    t.start()
    assert started.wait(10)
    set_champion(ws, spec.name, 2)
    service.refresh()  # loads v2, switches, and drops v1 while the request is still inside it
    assert service.routing.champion.version == 2 and service.status()["loaded"] == [2]
    release.set()
    t.join(10)
    assert result["model_version"] == 1 and result["label"] == "red"
    assert service.predict(png(), service.context({}))["model_version"] == 2
    service.stop()
    assert log_rows(ws, spec.name)["model_version"].to_list() == [1, 2]


@pytest.mark.slow
def test_no_request_fails_while_models_switch_on_a_real_server(cls_env):
    spec, ws = cls_env
    set_champion(ws, spec.name, 1)
    service = InferenceService(spec, ws, ServiceConfig(**FAST))
    data = png()
    results: list[tuple[int, int | None]] = []
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(timeout=30) as h:
            for _ in range(300):  # bounded in count, and in time by `stop`
                if stop.is_set():
                    return
                r = h.post(f"{srv.url}/predict", content=data, headers={"Content-Type": "image/png"})
                results.append((r.status_code, r.json().get("model_version")))

    def wait_for(cond, timeout=20.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, "the service did not switch in time"
            time.sleep(0.02)

    with BackgroundServer(create_app(service)) as srv:
        wait_for(lambda: service.ready)
        clients = [threading.Thread(target=loop) for _ in range(3)]
        for t in clients:
            t.start()
        try:
            wait_for(lambda: len(results) >= 20)
            set_champion(ws, spec.name, 2)  # replace
            wait_for(lambda: service.routing.champion.version == 2)
            n = len(results)
            wait_for(lambda: len(results) >= n + 20)
            write_rollout(ws, spec.name, "canary", champion=2, challenger=3, traffic=0.5)  # canary
            wait_for(lambda: service.routing.challenger is not None)
            n = len(results)
            wait_for(lambda: len(results) >= n + 20)
            set_champion(ws, spec.name, 3)  # promoted
            write_rollout(ws, spec.name, "canary", champion=2, challenger=3, traffic=0.5, status="promoted")
            wait_for(lambda: service.routing.champion.version == 3 and service.routing.challenger is None)
            n = len(results)
            wait_for(lambda: len(results) >= n + 10)
        finally:
            stop.set()
            for t in clients:
                t.join(30)
    assert results and all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:5]
    assert {v for _, v in results} == {1, 2, 3}
    rows = log_rows(ws, spec.name)  # the server's shutdown wrote every buffered row
    assert rows.height == len(results) and set(rows["status"]) == {"ok"}


def test_a_restart_serves_the_same_state(cls_env):
    spec, ws = cls_env
    set_champion(ws, spec.name, 2)
    write_rollout(ws, spec.name, "canary", champion=2, challenger=3, traffic=0.2, rollout_id="r-9")
    first = InferenceService(spec, ws, ServiceConfig(**FAST))
    first.refresh()
    first.stop()
    assert json.loads(service_mod.service_state_path(ws, spec.name).read_text())["stopped"] is True
    second = InferenceService(spec, ws, ServiceConfig(**FAST))
    routing = second.refresh()
    assert (routing.champion.version, routing.challenger.version, routing.traffic) == (2, 3, 0.2)
    state = json.loads(service_mod.service_state_path(ws, spec.name).read_text())
    assert (state["champion"], state["challenger"], state["ready"], state["strategy"], state["rollout_id"]) == (
        2, 3, [2, 3], "canary", "r-9")
    second.stop()


def _wait_rows(ws: Workspace, name: str, n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while log_rows(ws, name).height < n:
        assert time.monotonic() < deadline, log_rows(ws, name).height
        time.sleep(0.05)


def test_the_log_is_written_by_rows_by_age_and_at_shutdown(cls_env):
    spec, ws = cls_env
    set_champion(ws, spec.name, 1)
    by_rows = InferenceService(spec, ws, ServiceConfig(**{**FAST, "flush_rows": 5, "flush_s": 600}))
    by_rows.refresh()
    by_rows.start()
    try:
        for i in range(5):
            by_rows.predict(png(), by_rows.context({"x-request-id": f"p-{i}"}))
        _wait_rows(ws, spec.name, 5)  # the row limit
        for i in range(5, 7):  # these wait: under the row limit, and the age limit is 10 minutes
            by_rows.predict(png(), by_rows.context({"x-request-id": f"p-{i}"}))
        time.sleep(0.3)
        assert log_rows(ws, spec.name).height == 5
    finally:
        by_rows.stop()
    assert log_rows(ws, spec.name).height == 7  # the shutdown wrote the rest
    by_age = InferenceService(spec, ws, ServiceConfig(**{**FAST, "flush_rows": 1000, "flush_s": 0.2}))
    by_age.refresh()
    by_age.start()
    try:
        for i in range(7, 9):
            by_age.predict(png(), by_age.context({"x-request-id": f"p-{i}"}))
        _wait_rows(ws, spec.name, 9)
    finally:
        by_age.stop()
    rows = log_rows(ws, spec.name)
    assert rows.height == 9 and rows["prediction_id"].n_unique() == 9
    files = list(monitor.prediction_log_dir(ws, spec.name).rglob("*.parquet"))
    assert len(files) == 3 and all(f.parent.name == f"{rows['timestamp'][0]:%Y-%m-%d}" for f in files)
    assert dict(pl.read_parquet(files[0]).schema) == prediction_log.LOG_SCHEMA


def test_a_failed_write_keeps_its_rows_for_the_next_try():
    written: list[list[dict]] = []
    fail = [True]

    def write(day: str, rows: list[dict]) -> None:
        if fail[0]:
            raise OSError("disk full")
        written.append(rows)

    buf = prediction_log.SegmentBuffer(write, max_rows=100, max_age_s=60, what="test rows")
    for i in range(3):
        buf.add("2026-01-01", {"i": i})
    assert buf.flush() == 0 and buf.pending == 3
    fail[0] = False
    buf.add("2026-01-01", {"i": 3})
    buf.close()
    assert [r["i"] for r in written[0]] == [0, 1, 2, 3] and buf.pending == 0


def test_service_rows_and_observed_tables_share_the_log(cls_env, tmp_path):
    spec, ws = cls_env
    set_champion(ws, spec.name, 1)
    service = InferenceService(spec, ws, ServiceConfig(**FAST))
    service.refresh()
    service.predict(png(), service.context({"X-Request-Id": "svc-1"}))
    service.stop()
    table = tmp_path / "preds.csv"
    pl.DataFrame({"prediction_id": ["obs-1"], "predicted": ["blue"], "confidence": [0.8],
                  "timestamp": ["2026-01-01T00:00:00Z"]}).write_csv(table)
    assert monitor.observe_predictions(spec, ws, table).accepted == 1
    rows = log_rows(ws, spec.name)
    assert rows.height == 2 and set(prediction_log.LOG_SCHEMA) <= set(rows.columns)
    fb = tmp_path / "feedback.csv"
    pl.DataFrame({"timestamp": ["2026-01-01T00:00:00Z"] * 2, "prediction_id": ["svc-1", "obs-1"],
                  "label": ["red", "red"]}).write_csv(fb)
    checked = feedback.check_feedback(fb, CLASSES, "classification", rows)
    assert checked.accepted.sort("prediction_id")["predicted"].to_list() == ["blue", "red"]


# ---- other task kinds -----------------------------------------------------------------------------
def test_detection_payload(tmp_path, models):
    spec = spec_from_dict({
        "name": "det", "task": "detection",
        "data": {"source": str(tmp_path), "format": "coco", "annotations": "x.json", "classes": ["red", "green"]},
        "train": {"model": "fcos_resnet18_fpn", "image_size": SIDE},
        "gates": {"rules": ["map50 >= 0.5"], "champion": {"metrics": ["map50"]}},
    }, base_dir=tmp_path)
    ws = Workspace(tmp_path / "ws")
    set_champion(ws, spec.name, register(ws, spec.name, models["det"], "det"))
    service = InferenceService(spec, ws, ServiceConfig(**FAST))
    with client(service) as c:
        body = post(c, png(size=(64, 32))).json()  # x scaled by 4, y by 2
    assert body["task"] == "detection" and body["count"] == 2
    assert body["objects"] == [{"label": "red", "score": pytest.approx(0.9), "box": [0.0, 0.0, 32.0, 16.0]},
                               {"label": "green", "score": pytest.approx(0.7), "box": [8.0, 8.0, 40.0, 24.0]}]
    row = log_rows(ws, spec.name).row(0, named=True)
    assert row["predicted_objects"] == 2 and row["predicted"] == "red"
    assert row["confidence"] == pytest.approx(0.9) and row["predicted_object_size"] == pytest.approx(0.5)


def test_segmentation_payload(tmp_path, models):
    spec = spec_from_dict({
        "name": "seg", "task": "segmentation",
        "data": {"source": "images", "format": "masks", "annotations": "masks", "classes": ["background", "defect"]},
        "train": {"model": "unet", "image_size": SIDE},
        "gates": {"rules": ["miou >= 0.5"], "champion": {"metrics": ["miou"]}},
    }, base_dir=tmp_path)
    ws = Workspace(tmp_path / "ws")
    set_champion(ws, spec.name, register(ws, spec.name, models["seg"], "seg"))
    arr = np.zeros((32, 32, 3), dtype=np.uint8)
    arr[:, :16, 0] = 255  # the left half is red
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    service = InferenceService(spec, ws, ServiceConfig(**FAST))
    with client(service) as c:
        body = post(c, buf.getvalue()).json()
    assert body["task"] == "segmentation" and set(body["classes"]) == {"background", "defect"}
    assert sum(body["classes"].values()) == pytest.approx(1.0)
    assert body["foreground"] == pytest.approx(0.5, abs=0.07) and 0.5 < body["confidence"] <= 1.0
    row = log_rows(ws, spec.name).row(0, named=True)
    assert row["predicted_foreground"] == pytest.approx(body["foreground"]) and row["predicted"] == "defect"


def test_serve_command_line():
    from conveyor.cli.main import build_parser

    args = build_parser().parse_args(["serve", "spec.yaml", "--port", "9001", "--threads", "2", "--poll", "0.5",
                                      "--workspace", "w"])
    assert (args.func.__name__, args.host, args.port, args.threads, args.poll, args.workspace) == (
        "cmd_serve", "127.0.0.1", 9001, 2, 0.5, "w")
    with pytest.raises(ValueError):
        ServiceConfig(threads=0)
