"""Spec builders for the tests: one base dictionary per kind of pipeline, overridden section by section.

Every builder starts from :func:`spec_dict` (the smallest valid spec) or :func:`toy_spec_dict` (the toy
classification pipeline of :mod:`helpers.toydata`), so a change to the spec format is made here once.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from conveyor.core.spec import Spec, spec_from_dict

from helpers.toydata import TOY_COLOURS

SPLIT_BY_CAMERA = {"group_by": "camera", "ratios": {"train": 0.5, "val": 0.25, "test": 0.25}, "min_per_class_eval": 1}


def with_overrides(spec: dict, overrides: dict[str, Any]) -> dict:
    """``spec`` with each override applied: a mapping is merged into the section of the same name, anything
    else replaces it. The result shares nothing with its arguments."""
    out = copy.deepcopy(spec)
    for key, value in copy.deepcopy(overrides).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def spec_dict(name: str = "t", task: str = "classification", source: str = ".", **sections) -> dict:
    """The smallest valid spec (a name, a task and a data source) with ``sections`` applied."""
    return with_overrides({"name": name, "task": task, "data": {"source": source}}, sections)


def toy_spec_dict(source: str = "data/manifest.csv", **overrides) -> dict:
    """The toy classification pipeline: three colours, split by camera, a two-epoch resnet10t."""
    spec = spec_dict(
        name="toy", source=source,
        data={"classes": list(TOY_COLOURS)},
        split=SPLIT_BY_CAMERA,
        train={"model": "resnet10t", "image_size": 16, "epochs": 2, "batch_size": 16, "lr": 0.01, "seed": 0},
        gates={"rules": ["f1 >= 0.5", "latency_p95_ms <= 1000"], "champion": {"metrics": ["f1"], "tolerance": 0.05}},
    )
    return with_overrides(spec, overrides)


def write_toy_spec(folder: Path, filename: str = "spec.yaml", **overrides) -> Path:
    """The toy spec (with ``overrides``) as ``folder/filename``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_text(yaml.safe_dump(toy_spec_dict(**overrides)))
    return path


def write_pipeline_spec(folder: Path, name: str = "toy", **triggers) -> Path:
    """The toy spec named ``name`` with ``triggers``, as ``folder/<name>.yaml``."""
    return write_toy_spec(folder, f"{name}.yaml", name=name, triggers=triggers)


DIGIT_CLASSES = [str(i) for i in range(10)]
DRIFT_FEATURES = ["brightness", "contrast", "saturation", "hue", "sharpness", "label"]


def digits_spec(source: Path, base: Path, **triggers) -> Spec:
    """The toy pipeline on the classification demo's digits (``source``), watching every drift feature,
    with ``triggers``."""
    d = toy_spec_dict(source=str(source), name="digits", data={"classes": DIGIT_CLASSES},
                      triggers={"drift": {"features": DRIFT_FEATURES}, **triggers})
    return spec_from_dict(d, base_dir=str(base))


# ---- stage by stage ----------------------------------------------------------------------------------------


def ingest_spec(base: Path, source: str, **data) -> Spec:
    """Ingest of ``source`` (relative to ``base``) with the data settings ``data``."""
    return spec_from_dict(spec_dict(source=source, data=data), base_dir=base)


def curate_spec(base: Path, curation: dict | None = None, source: str = "data/manifest.csv") -> Spec:
    """Curation of the manifest ``source`` with the curation settings ``curation`` (the defaults when None)."""
    sections = {} if curation is None else {"curation": curation}
    return spec_from_dict(spec_dict(source=source, **sections), base_dir=base)


def split_spec(task: str = "classification", **split) -> Spec:
    """A split of a ``task`` spec with the settings ``split`` (near duplicates within distance 2 share a side)."""
    return spec_from_dict(spec_dict(name="s", task=task, split=split, curation={"near_duplicates": {"max_distance": 2}}))


def contracts_spec(**split) -> Spec:
    """Data contracts: images of 8 to 512 pixels a side, a split with the settings ``split``."""
    sections = {"split": split} if split else {}
    return spec_from_dict(spec_dict(data={"min_side": 8, "max_side": 512}, **sections))


def train_spec(base: Path, **train) -> Spec:
    """A tiny resnet10t on 16-pixel images for three epochs, with the training settings ``train``."""
    settings = {"model": "resnet10t", "image_size": 16, "epochs": 3, "batch_size": 16, "lr": 3e-3, **train}
    return spec_from_dict(spec_dict(name="tiny", source=str(base), train=settings), base_dir=base)


def gate_spec(rules: Sequence[str] = ("f1 >= 0.9", "ece <= 0.05", "latency_p95_ms <= 25"),
              champion: Sequence[str] = ("f1", "ece"), tol: float = 0.01) -> Spec:
    """A gate of ``rules`` that compares ``champion`` metrics with the champion's, within ``tol``."""
    return spec_from_dict(spec_dict(name="m", gates={"rules": list(rules),
                                                     "champion": {"metrics": list(champion), "tolerance": tol}}))


def rollout_spec(base: Path, **deploy) -> Spec:
    """The toy pipeline deployed by a one-hour canary on 20% of the traffic, with the settings ``deploy``."""
    return spec_from_dict(toy_spec_dict(deploy={"strategy": "canary", "traffic": 0.2, "duration": "1h", **deploy}),
                          base_dir=base)


def detection_spec(base: Path, fmt: str, annotations: str | None, classes: Sequence[str] | None = ("cat", "dog"),
                   **sections) -> Spec:
    """A detection pipeline on ``base/images`` with ``fmt`` annotations (coco/yolo) at ``annotations``;
    ``sections`` replace whole sections."""
    d = spec_dict(
        name="det", task="detection", source="images",
        data={"format": fmt, "annotations": annotations, "classes": None if classes is None else list(classes),
              "min_side": 8},
        split=SPLIT_BY_CAMERA,
        train={"model": "fcos_resnet18_fpn", "image_size": 64, "epochs": 1, "batch_size": 4},
        gates={"rules": ["map50 >= 0.5"], "champion": {"metrics": ["map50"]}},
    )
    d.update(sections)
    return spec_from_dict(d, base_dir=base)


SEGMENTATION_CLASSES = ["background", "defect"]


def segmentation_spec(base: Path, **train) -> Spec:
    """A two-class segmentation pipeline on the mask pairs of :func:`helpers.toydata.write_pairs` in ``base``."""
    d = spec_dict(
        name="seg-toy", task="segmentation", source="images",
        data={"format": "masks", "annotations": "masks", "classes": SEGMENTATION_CLASSES, "min_side": 8},
        split=SPLIT_BY_CAMERA,
        train={"model": "unet", "model_kwargs": {"depth": 2, "width": 4}, "image_size": 32, "epochs": 2,
               "batch_size": 8, "lr": 0.01, "num_threads": 1, **train},
        gates={"rules": ["miou >= 0.5", "fn_rate[defect] <= 0.5"], "champion": {"metrics": ["miou"]}},
    )
    return spec_from_dict(d, base_dir=base)
