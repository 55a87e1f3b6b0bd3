"""The train stage: a split table and a spec in, a self-describing checkpoint out.

The loop here is generic; the task adapter (``conveyor.kinds.get(spec.task)``) supplies the model,
the decoded data, the loss and the validation metric. On the CPU a run is deterministic: the same
spec, seed and data give bit-identical weights and exactly equal metrics.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from conveyor import kinds
from conveyor.model import tracking
from conveyor.core.io import (atomic_write_bytes, atomic_write_json, code_commit, environment, package_versions,
                              sha256_bytes)

if TYPE_CHECKING:
    from conveyor.core.spec import Spec

CHECKPOINT_NAME = "checkpoint.pt"
# The run that made a checkpoint (lineage, resolved spec, run id, trigger, times, paths) is
# written beside it: the checkpoint's bytes, and so the model hash, hold only what determines the
# weights (weights, model configuration, classes, data version, environment, history).
RUN_METADATA_NAME = "run.json"
CHECKPOINT_FORMAT = 2


def seed_everything(seed: int, num_threads: int) -> None:
    """Seed python, numpy and torch, force deterministic kernels and pin the thread count."""
    # cuBLAS needs this before its first use to be deterministic; harmless on the CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.set_num_threads(int(num_threads))


def _seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: derive python/numpy seeds from the worker's torch seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


@dataclass(frozen=True)
class TrainResult:
    checkpoint_path: str
    checkpoint_hash: str
    model_name: str
    epochs: int
    best_epoch: int
    train_seconds: float
    history: list[dict] = field(default_factory=list)
    # Where the weights were made: package versions, Python and platform (also inside the checkpoint)
    # and the code commit at training time; a cached result keeps the values of the original run.
    environment: dict = field(default_factory=dict)
    code_commit: str = ""
    run_metadata_path: str = ""
    # The experiment-tracking run (conveyor.model.tracking): mode, run_id, project, name, run_dir (offline), url
    # (online); None when tracking is disabled or unavailable. Not part of the checkpoint: its bytes stay
    # a function of the weights and the semantic configuration alone.
    tracking: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


def _build_optimizer(model: torch.nn.Module, tspec) -> torch.optim.Optimizer:
    # No weight decay on biases and normalisation weights (1-d parameters).
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": tspec.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if tspec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=tspec.lr)
    if tspec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=tspec.lr, momentum=0.9, nesterov=True)
    raise ValueError(f"train.optimizer: unknown optimizer {tspec.optimizer!r}")


def _build_scheduler(optimizer: torch.optim.Optimizer, tspec, total_steps: int):
    """A per-step learning-rate schedule (None for a constant rate)."""
    if tspec.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=tspec.lr, total_steps=max(total_steps, 1), pct_start=0.25
        )
    if tspec.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if tspec.scheduler == "none":
        return None
    raise ValueError(f"train.scheduler: unknown scheduler {tspec.scheduler!r}")


def _plain(obj: Any) -> Any:
    """JSON-able copy (so the checkpoint loads with ``weights_only=True``)."""
    return json.loads(json.dumps(obj, default=str))


def train(
    spec: Spec,
    split_path: str | Path,
    classes: list[str],
    out_dir: str | Path,
    *,
    dataset_version: str,
    lineage: dict | None = None,
    progress: bool = False,
    workspace: str | Path | None = None,
) -> TrainResult:
    """Train ``spec.train.model`` on the ``train`` rows, pick the epoch with the best val metric.

    Writes ``out_dir/checkpoint.pt`` atomically and returns its path and sha256. The run is tracked
    with wandb as the environment says (``conveyor.model.tracking``), under ``workspace`` (default: the
    spec's workspace); a failed run is closed with exit code 1.
    """
    t_start = time.perf_counter()
    run = _start_tracking(spec, list(classes), dataset_version, lineage, workspace)
    try:
        res = _train(spec, split_path, classes, out_dir, dataset_version=dataset_version, lineage=lineage,
                     progress=progress, run=run, t_start=t_start)
    except BaseException:
        run.finish(exit_code=1)
        raise
    return dataclasses.replace(res, tracking=run.finish())


def _start_tracking(spec: Spec, classes: list[str], dataset_version: str, lineage: dict | None,
                    workspace: str | Path | None) -> tracking.TrackedRun:
    lin = lineage or {}
    config = {
        "task": spec.task,
        "train": spec.resolved_dict()["train"],
        "classes": classes,
        "dataset_version": dataset_version,
        **{k: lin.get(k) for k in ("curated_version", "split_version", "eval_set_hash", "spec_hash", "trigger",
                                  "run_id") if lin.get(k) is not None},
        "seed": spec.train.seed,
    }
    run_id = lin.get("run_id")
    return tracking.start_run(workspace if workspace is not None else spec.workspace_path(), spec.name,
                              name=str(run_id)[:8] if run_id else None, config=config, job_type="train",
                              tags=[spec.task])


def _train(spec: Spec, split_path: str | Path, classes: list[str], out_dir: str | Path, *, dataset_version: str,
           lineage: dict | None, progress: bool, run: tracking.TrackedRun, t_start: float) -> TrainResult:
    adapter = kinds.get(spec.task).training
    tspec = spec.train
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise ValueError("classes has repeated names")
    out_dir = Path(out_dir)

    device = resolve_device(tspec.device)
    seed_everything(tspec.seed, tspec.num_threads)
    if device.type == "cuda":
        # Some CUDA kernels have no deterministic version (none was hit by resnet10t on an H200):
        # warn instead of failing. Bit-identical reruns are guaranteed on the CPU only.
        torch.use_deterministic_algorithms(True, warn_only=True)
    # The model is built right after seeding, so its initial weights depend on the seed alone.
    model = adapter.build_model(tspec.model, len(classes), tspec.model_kwargs)
    mean, std = adapter.normalization(model)
    norm = (mean, std)

    train_set = adapter.load_split(split_path, classes, "train", tspec.image_size, progress=progress)
    val_set = adapter.load_split(split_path, classes, "val", tspec.image_size, progress=progress)
    if len(train_set) == 0:
        raise ValueError(f"split table {split_path} has no rows with split == 'train'")

    n_train = len(train_set)
    batch_size = min(tspec.batch_size, n_train)
    loader_gen = torch.Generator().manual_seed(tspec.seed)
    augment_gen = torch.Generator().manual_seed((tspec.seed + 0x5EED) % 2**63)
    loader = torch.utils.data.DataLoader(
        adapter.make_dataset(train_set),
        batch_size=batch_size,
        shuffle=True,
        generator=loader_gen,
        num_workers=0,
        worker_init_fn=_seed_worker,
        collate_fn=adapter.collate,
        # A last batch of one image breaks batch norm in train mode.
        drop_last=(n_train % batch_size == 1 and n_train > batch_size),
    )
    model.to(device)
    optimizer = _build_optimizer(model, tspec)
    scheduler = _build_scheduler(optimizer, tspec, tspec.epochs * len(loader))
    criterion = adapter.make_criterion(tspec)
    augment = adapter.make_augment(tspec.augment, tspec.image_size)

    history: list[dict[str, Any]] = []
    best_score = -math.inf
    best_epoch = 0
    best_state: dict[str, torch.Tensor] | None = None

    epoch_iter: Any = range(1, tspec.epochs + 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(epoch_iter, desc=f"train {tspec.model}", unit="epoch")
        epoch_iter = bar
    for epoch in epoch_iter:
        model.train()
        loss_sum, seen = 0.0, 0
        for batch in loader:
            loss = adapter.training_loss(
                model, batch, criterion=criterion, augment=augment, generator=augment_gen, norm=norm, device=device
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            n_b = len(batch[1]) if isinstance(batch, (tuple, list)) else batch_size
            loss_sum += float(loss.detach()) * n_b
            seen += n_b
        mean_loss = loss_sum / max(seen, 1)
        if not math.isfinite(mean_loss):
            raise RuntimeError(f"training diverged at epoch {epoch}: loss is {mean_loss}; try a lower train.lr")
        record: dict[str, Any] = {"epoch": epoch, "loss": mean_loss, "lr": float(optimizer.param_groups[0]["lr"])}
        if len(val_set):
            outputs = adapter.predict(model, val_set, norm=norm, device=device)
            vm = adapter.epoch_metrics(outputs, val_set, classes, criterion)
            record.update({f"val_{k}": v for k, v in vm.items()})
            score = vm[adapter.PRIMARY_METRIC]
        else:
            score = float(epoch)  # no validation rows: keep the last epoch
        history.append(record)
        run.log(record, step=epoch)
        if score >= best_score:  # ties go to the later epoch
            best_score, best_epoch = score, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if bar is not None:
            bar.set_postfix(loss=f"{mean_loss:.4f}",
                            **({f"val_{adapter.PRIMARY_METRIC}": f"{score:.4f}"} if len(val_set) else {}))
    if bar is not None:
        bar.close()
    assert best_state is not None

    env = environment()
    lineage = dict(lineage or {})
    lineage.setdefault("code_commit", code_commit())
    lineage["packages"] = {**package_versions(), **env["packages"]}
    lineage["environment"] = env
    lineage.setdefault("seed", tspec.seed)
    lineage.setdefault("spec_hash", spec.spec_hash)
    lineage.setdefault("device", device.type)

    checkpoint = {
        "format_version": CHECKPOINT_FORMAT,
        "task": adapter.TASK,
        "state_dict": best_state,
        "model_name": tspec.model,
        "model_kwargs": _plain(tspec.model_kwargs),
        "num_classes": len(classes),
        "classes": classes,
        "image_size": tspec.image_size,
        "mean": mean,
        "std": std,
        # the semantic configuration: what the weights depend on, without names, paths or run ids
        "train_config": _plain({"task": spec.task, "train": spec.model_dump(mode="json")["train"]}),
        "dataset_version": dataset_version,
        "environment": _plain(env),
        "history": _plain(history),
        "best_epoch": best_epoch,
        "selection_metric": f"val_{adapter.PRIMARY_METRIC}" if len(val_set) else "last_epoch",
    }
    # Serialise to memory first: the bytes do not depend on the file name, so equal runs give
    # equal hashes, and the write is atomic (temp file + os.replace).
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    data = buf.getvalue()
    ckpt_path = atomic_write_bytes(out_dir / CHECKPOINT_NAME, data)
    checkpoint_hash = sha256_bytes(data)
    train_seconds = round(time.perf_counter() - t_start, 3)
    run_path = atomic_write_json(out_dir / RUN_METADATA_NAME, _plain({
        "checkpoint_hash": checkpoint_hash, "lineage": lineage, "resolved_spec": spec.resolved_dict(),
        "train_seconds": train_seconds}))
    best = next(r for r in history if r["epoch"] == best_epoch)
    run.summary({**{f"best_{k}": v for k, v in best.items() if k != "epoch"}, "best_epoch": best_epoch,
                 "epochs": tspec.epochs, "train_seconds": train_seconds,
                 "selection_metric": checkpoint["selection_metric"]})
    run.log_artifact(ckpt_path, f"{spec.name}-model", "model",
                     metadata={"checkpoint_hash": checkpoint_hash, "dataset_version": dataset_version,
                               "best_epoch": best_epoch, "model_name": tspec.model, "task": adapter.TASK})
    return TrainResult(
        checkpoint_path=str(ckpt_path),
        checkpoint_hash=checkpoint_hash,
        model_name=tspec.model,
        epochs=tspec.epochs,
        best_epoch=best_epoch,
        train_seconds=train_seconds,
        history=copy.deepcopy(checkpoint["history"]),
        environment=copy.deepcopy(checkpoint["environment"]),
        code_commit=str(lineage["code_commit"]),
        run_metadata_path=str(run_path),
    )


def load_run_metadata(checkpoint_path: str | Path) -> dict[str, Any]:
    """The run that made a checkpoint (``run.json`` beside it): lineage, resolved spec, train time.
    Empty when the file is gone (a checkpoint alone still describes the model)."""
    p = Path(checkpoint_path).with_name(RUN_METADATA_NAME)
    return json.loads(p.read_text()) if p.is_file() else {}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from a checkpoint alone. Returns (model in eval mode, metadata without weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a conveyor checkpoint (no state_dict)")
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    adapter = kinds.get(meta.get("task") or kinds.LEGACY_TASK).training
    # Building the model draws random initial weights; keep that off the caller's RNG stream.
    with torch.random.fork_rng(devices=[]):
        model = adapter.build_model(meta["model_name"], int(meta["num_classes"]), meta.get("model_kwargs") or {})
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.to(map_location)
    model.eval()
    return model, meta
