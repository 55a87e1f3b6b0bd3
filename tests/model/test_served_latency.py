"""The gated latency is the served path: encoded bytes -> safe decode -> preprocessing -> ONNX ->
the kind's decode_prediction; the model call alone is reported beside it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from conveyor.model import evaluate as ev
from conveyor.serving import preprocess

from helpers.tinymodels import classifier, export_model

CLASSES = ["red", "green", "blue"]


def _png(side: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("served")
    return export_model(classifier(torch.eye(3) * 3.0, torch.zeros(3)), root / "colour.onnx", "classification",
                        CLASSES, ["logits"], {"images": {0: "batch"}, "logits": {0: "batch"}})


def test_served_p95_covers_the_model_call_and_decode_is_timed(onnx_model):
    small = [_png(16, s) for s in range(4)]
    large = [_png(768, s) for s in range(4)]
    lat_small = ev.measure_served_latency(onnx_model, small, runs=200, num_threads=1)
    lat_large = ev.measure_served_latency(onnx_model, large, runs=200, num_threads=1)
    for lat in (lat_small, lat_large):
        assert lat["timed_path"] == ev.SERVED_PATH and lat["model_timed_path"] == ev.MODEL_PATH
        assert lat["runs"] == 200 and lat["batch"] == 1 and lat["served_images"] == 4
        assert lat["latency_p95_ms"] >= lat["latency_p50_ms"] > 0
        assert set(ev.MODEL_LATENCY_KEYS) <= set(lat)
        assert lat["model_latency_p95_ms"] >= lat["model_latency_p50_ms"] > 0
        # the served path contains the model call: it cannot be cheaper
        assert lat["latency_p95_ms"] >= lat["model_latency_p95_ms"]
        assert lat["latency_p50_ms"] >= lat["model_latency_p50_ms"]
        assert lat["throughput_ips"] > 0
    # decoding a 768 px PNG costs more than a 16 px one; the model input (16 px) is the same size
    assert lat_large["latency_p50_ms"] > 2 * lat_small["latency_p50_ms"]
    assert lat_large["model_latency_p50_ms"] < lat_large["latency_p50_ms"] / 2


def test_served_path_uses_the_service_decode_and_the_kind_decode(onnx_model, monkeypatch):
    from conveyor import kinds

    calls = {"decode_request": 0, "decode_prediction": 0}
    real_decode = preprocess.decode_request
    kind = kinds.get("classification")
    real_pred = type(kind).decode_prediction

    def counting_decode(data, max_pixels, name="<request>"):
        calls["decode_request"] += 1
        return real_decode(data, max_pixels, name)

    def counting_pred(self, *args, **kwargs):
        calls["decode_prediction"] += 1
        return real_pred(self, *args, **kwargs)

    monkeypatch.setattr(ev, "decode_request", counting_decode)
    monkeypatch.setattr(type(kind), "decode_prediction", counting_pred)
    ev.measure_served_latency(onnx_model, [_png(16)], runs=200, num_threads=1, warmup=5)
    assert calls["decode_prediction"] == 205  # every timed (and warm-up) call decodes the prediction
    assert calls["decode_request"] >= 205  # ... and decodes the request bytes


def test_served_path_honours_the_decode_limit(onnx_model):
    from conveyor.data.imageio import DecodeError

    with pytest.raises(DecodeError):
        ev.measure_served_latency(onnx_model, [_png(64)], runs=200, num_threads=1, max_pixels=100)


def test_served_torch_fallback():
    model = classifier(torch.eye(3) * 3.0, torch.zeros(3))
    threads = torch.get_num_threads()
    lat = ev.measure_served_torch_latency(model, "classification", CLASSES, 16, ["logits"], [_png(64)], runs=200,
                                          num_threads=1)
    assert torch.get_num_threads() == threads
    assert lat["backend"] == "torch" and lat["timed_path"] == ev.SERVED_PATH
    assert lat["latency_p95_ms"] >= lat["model_latency_p95_ms"] > 0


def test_read_encoded_images(tmp_path):
    rows = []
    for i, split in enumerate(["train", "test", "test", "val"]):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(_png(16, i))
        rows.append({"path": str(p), "split": split})
    split_path = tmp_path / "split.parquet"
    pl.DataFrame(rows).write_parquet(split_path)
    got = ev.read_encoded_images(split_path, "test")
    assert got == [(tmp_path / "img1.png").read_bytes(), (tmp_path / "img2.png").read_bytes()]
    assert len(ev.read_encoded_images(split_path, "test", limit=1)) == 1
    with pytest.raises(ValueError, match="holdout"):
        ev.read_encoded_images(split_path, "holdout")
    with pytest.raises(ValueError, match="at least 200"):
        ev.measure_served_latency(split_path, got, runs=50)
