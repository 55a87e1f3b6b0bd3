"""Train stage: determinism, self-describing checkpoints, and behavioural checks of a trained model.

The data is a tiny synthetic task made in tmp_path: 16 px images that are a noisy solid colour,
red, green or blue. A small timm model learns it in a few seconds on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from conveyor.kinds.classification import model as cls_kind
from conveyor.core.spec import spec_from_dict
from conveyor.model.train import load_run_metadata, TrainResult, load_checkpoint, seed_everything, train
from conveyor.core.io import sha256_file
from helpers.specs import train_spec as make_spec
from helpers.toydata import make_color_dataset

COLORS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}
CLASSES = list(COLORS)
SIZE = 16


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_color_dataset(tmp_path_factory.mktemp("colors"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> TrainResult:
    out = tmp_path_factory.mktemp("run")
    spec = make_spec(out, epochs=3)
    return train(spec, data, CLASSES, out, dataset_version="dv-test", lineage={"note": "from the test"})


def _test_images(split_path: Path, split: str = "test") -> cls_kind.ImageSet:
    return cls_kind.load_split(split_path, CLASSES, split, SIZE)


# ---- determinism ------------------------------------------------------------------------------
@pytest.mark.slow
def test_same_seed_gives_identical_weights_and_metrics(tmp_path, data):
    from conveyor.model.evaluate import evaluate

    augment = {"random_crop_padding": 2, "hflip": True, "rotation_deg": 10, "color_jitter": 0.2}
    spec = make_spec(tmp_path, epochs=2, augment=augment, label_smoothing=0.1)
    fixed = {"code_commit": "test", "packages": {}}
    a = train(spec, data, CLASSES, tmp_path / "a", dataset_version="dv", lineage=fixed)
    # The same rows in another order: training sorts by id, so the order of the table is irrelevant.
    reordered = tmp_path / "reordered.parquet"
    pl.read_parquet(data).sort("path", descending=True).write_parquet(reordered)
    b = train(spec, reordered, CLASSES, tmp_path / "b", dataset_version="dv", lineage=fixed)
    assert a.history == b.history  # exact float equality, val metrics included
    sa = torch.load(a.checkpoint_path, weights_only=True)["state_dict"]
    sb = torch.load(b.checkpoint_path, weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    # The checkpoint bytes do not depend on the output folder: equal runs, equal content hash.
    assert a.checkpoint_hash == b.checkpoint_hash == sha256_file(a.checkpoint_path)
    ea = evaluate(a.checkpoint_path, data, tmp_path / "ea", latency_runs=0, export_onnx=False)
    eb = evaluate(b.checkpoint_path, data, tmp_path / "eb", latency_runs=0, export_onnx=False)
    assert ea.metrics == eb.metrics
    assert ea.confusion_matrix == eb.confusion_matrix

    c = train(make_spec(tmp_path, epochs=2, augment=augment, label_smoothing=0.1, seed=1), data, CLASSES,
              tmp_path / "c", dataset_version="dv", lineage=fixed)
    sc = torch.load(c.checkpoint_path, weights_only=True)["state_dict"]
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert c.checkpoint_hash != a.checkpoint_hash


def test_model_identity_ignores_run_metadata_names_and_paths(tmp_path, data):
    """The model hash is a function of the weights and the semantic configuration: a run id,
    trigger, reason, spec name or folder does not change it, and lives in run.json instead."""
    a_spec = make_spec(tmp_path / "one", epochs=2)
    b_spec = spec_from_dict({**a_spec.model_dump(mode="json", exclude={"base_dir"}), "name": "renamed",
                             "data": {"source": str(tmp_path / "elsewhere")}}, base_dir=tmp_path / "two")
    a = train(a_spec, data, CLASSES, tmp_path / "a", dataset_version="dv",
              lineage={"run_id": "run-1", "trigger": "manual", "reason": "first"})
    b = train(b_spec, data, CLASSES, tmp_path / "b", dataset_version="dv",
              lineage={"run_id": "run-2", "trigger": "drift", "reason": "brightness moved"})
    assert a.checkpoint_hash == b.checkpoint_hash
    assert load_run_metadata(a.checkpoint_path)["lineage"]["run_id"] == "run-1"
    assert load_run_metadata(b.checkpoint_path)["lineage"]["reason"] == "brightness moved"
    c = train(make_spec(tmp_path / "three", epochs=2, lr=1e-3), data, CLASSES, tmp_path / "c", dataset_version="dv")
    assert c.checkpoint_hash != a.checkpoint_hash  # the configuration is part of the identity


def test_seed_everything_sets_threads_and_determinism():
    before = torch.get_num_threads()
    try:
        seed_everything(123, 1)
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
        x = torch.rand(3)
        seed_everything(123, 1)
        assert torch.equal(x, torch.rand(3))
    finally:
        torch.set_num_threads(before)


def test_augmentation_is_driven_by_its_generator():
    aug = cls_kind.Augment(padding=2, hflip=True, rotation_deg=15, color_jitter=0.3)
    images = torch.randint(0, 256, (8, 3, SIZE, SIZE), dtype=torch.uint8)
    one = aug(images, torch.Generator().manual_seed(7))
    torch.manual_seed(999)  # the global RNG must not matter
    two = aug(images, torch.Generator().manual_seed(7))
    assert one.dtype == torch.uint8 and one.shape == images.shape
    assert torch.equal(one, two)
    assert not torch.equal(one, aug(images, torch.Generator().manual_seed(8)))


# ---- the checkpoint ---------------------------------------------------------------------------
@pytest.mark.slow
def test_train_result_and_history(trained):
    assert Path(trained.checkpoint_path).name == "checkpoint.pt"
    assert trained.checkpoint_hash == sha256_file(trained.checkpoint_path)
    assert trained.epochs == 3 and len(trained.history) == 3
    assert 1 <= trained.best_epoch <= 3
    assert trained.train_seconds > 0
    for rec in trained.history:
        assert {"epoch", "loss", "val_f1", "val_accuracy", "val_loss"} <= set(rec)
    # the best epoch is the one with the best val F1 (ties go to the later epoch)
    best = max(trained.history, key=lambda r: (r["val_f1"], r["epoch"]))
    assert trained.best_epoch == best["epoch"]
    d = trained.to_dict()
    assert d["checkpoint_path"] == trained.checkpoint_path and isinstance(d["history"], list)


@pytest.mark.slow
def test_checkpoint_describes_itself(trained, data):
    model, meta = load_checkpoint(trained.checkpoint_path)
    assert not model.training
    assert meta["classes"] == CLASSES and meta["num_classes"] == 3
    assert meta["task"] == "classification" and meta["model_name"] == "resnet10t"
    assert meta["dataset_version"] == "dv-test"
    assert meta["image_size"] == SIZE and len(meta["mean"]) == 3 and len(meta["std"]) == 3
    assert meta["train_config"]["train"]["model"] == "resnet10t"
    assert meta["environment"]["packages"]["torch"] and meta["environment"]["python"]
    run = load_run_metadata(trained.checkpoint_path)  # the run's own record, beside the weights
    assert run["lineage"]["note"] == "from the test"
    assert run["lineage"]["code_commit"] == trained.code_commit
    assert "torch" in run["lineage"]["packages"]
    assert run["resolved_spec"]["train"]["model"] == "resnet10t"
    assert run["checkpoint_hash"] == trained.checkpoint_hash
    assert meta["best_epoch"] == trained.best_epoch and meta["history"] == trained.history
    assert "state_dict" not in meta
    # predicts without the spec: from raw uint8 images and the metadata alone
    test = _test_images(data)
    probs = cls_kind.predict_proba(model, test.images, meta)
    assert probs.shape == (len(test), 3)
    assert torch.allclose(probs.sum(1), torch.ones(len(test)), atol=1e-5)


def test_load_checkpoint_rejects_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")


# ---- behaviour of the trained model -----------------------------------------------------------
@pytest.mark.slow
def test_learns_the_easy_task(trained, data):
    model, meta = load_checkpoint(trained.checkpoint_path)
    test = _test_images(data)
    pred = cls_kind.predict_proba(model, test.images, meta).argmax(1)
    accuracy = (pred == test.targets).float().mean().item()
    assert accuracy > 0.9, accuracy


@pytest.mark.slow
def test_invariance_to_small_brightness_change(trained, data):
    model, meta = load_checkpoint(trained.checkpoint_path)
    images = _test_images(data).images
    brighter = (images.float() * 1.08).clamp(0, 255).to(torch.uint8)
    base = cls_kind.predict_proba(model, images, meta).argmax(1)
    moved = cls_kind.predict_proba(model, brighter, meta).argmax(1)
    assert (base == moved).float().mean().item() >= 0.9


@pytest.mark.slow
def test_directional_more_red_means_more_red(trained):
    """Blending a green image towards red must raise P(red) at the end of the path."""
    model, meta = load_checkpoint(trained.checkpoint_path)
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 10, (SIZE, SIZE, 3))
    red, green = np.array(COLORS["red"], float), np.array(COLORS["green"], float)
    steps = [0.0, 0.5, 1.0]
    images = torch.stack([
        torch.from_numpy(np.clip((1 - a) * green + a * red + noise, 0, 255).astype(np.uint8)).permute(2, 0, 1)
        for a in steps
    ])
    p_red = cls_kind.predict_proba(model, images, meta)[:, CLASSES.index("red")]
    assert p_red[-1] > p_red[0] + 0.5
    assert p_red[-1] >= p_red[1] - 1e-6


# ---- errors -----------------------------------------------------------------------------------
def test_unknown_model_name_is_a_clear_error(tmp_path, data):
    spec = make_spec(tmp_path, model="resnet10x")
    with pytest.raises(ValueError) as err:
        train(spec, data, CLASSES, tmp_path / "out", dataset_version="dv")
    message = str(err.value)
    assert "train.model" in message and "resnet10x" in message
    assert "resnet10t" in message  # suggests close names
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_bad_model_kwargs_name_the_field(tmp_path, data):
    with pytest.raises(ValueError, match="train.model_kwargs"):
        train(make_spec(tmp_path, model_kwargs={"no_such_argument": 1}), data, CLASSES, tmp_path / "o",
              dataset_version="dv")
    with pytest.raises(ValueError, match="train.model_kwargs"):
        train(make_spec(tmp_path, model_kwargs={"num_classes": 5}), data, CLASSES, tmp_path / "o", dataset_version="dv")


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer": "sgd", "scheduler": "cosine", "lr": 0.05},
        {"optimizer": "adamw", "scheduler": "none", "model_kwargs": {"drop_rate": 0.1}},
    ],
)
def test_other_optimisers_and_schedules_without_val_rows(tmp_path, data, overrides):
    no_val = tmp_path / "no_val.parquet"
    pl.read_parquet(data).filter(pl.col("split") != "val").write_parquet(no_val)
    result = train(make_spec(tmp_path, epochs=2, **overrides), no_val, CLASSES, tmp_path / "o", dataset_version="dv")
    assert result.best_epoch == 2  # no validation rows: the last epoch is kept
    assert all("val_f1" not in rec and rec["loss"] > 0 for rec in result.history)
    _, meta = load_checkpoint(result.checkpoint_path)
    assert meta["selection_metric"] == "last_epoch"


def test_labels_outside_the_class_list_are_rejected(tmp_path, data):
    with pytest.raises(ValueError, match="not in the class list"):
        train(make_spec(tmp_path, epochs=1), data, ["red", "green"], tmp_path / "out", dataset_version="dv")


def test_no_train_rows_is_an_error(tmp_path, data):
    only_test = pl.read_parquet(data).with_columns(pl.lit("test").alias("split"))
    path = tmp_path / "split.parquet"
    only_test.write_parquet(path)
    with pytest.raises(ValueError, match="no rows with split == 'train'"):
        train(make_spec(tmp_path, epochs=1), path, CLASSES, tmp_path / "out", dataset_version="dv")


def test_decoding_is_fixed_size_rgb(data):
    test = _test_images(data, "train")
    assert test.images.dtype == torch.uint8 and test.images.shape[1:] == (3, SIZE, SIZE)
    assert test.ids == sorted(test.ids)


def test_decoding_normalises_modes_like_ingest(tmp_path):
    transparent = tmp_path / "clear.png"
    Image.new("RGBA", (20, 10), (255, 0, 0, 0)).save(transparent)  # fully transparent red
    deep = tmp_path / "deep.png"
    Image.new("I;16", (9, 9), 65535).save(deep)
    assert (cls_kind.decode_image(transparent, 8) == 255).all()  # composited on white, as ingest does
    assert (cls_kind.decode_image(deep, 8) == 255).all()  # 16-bit scaled, not clipped
    assert cls_kind.decode_image(transparent, 8).shape == (8, 8, 3)
