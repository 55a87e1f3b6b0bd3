"""Rebuild a registered model from its lineage alone, and say whether it came out the same.

A registered version keeps what made it: the checkpoint (weights, the semantic configuration,
classes, data version, environment), the split it was trained and evaluated on, and the run
record (``run.json``). :func:`reproduce` trains again from those files (not from today's spec or
data folders), then compares the weights bit for bit and the test metrics one by one. On CPU,
with the same package versions, training is deterministic and the weights are identical.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conveyor.core.io import environment
from conveyor.core.spec import RUNTIME_METRICS, spec_from_dict
from conveyor.release.registry import Registry, RegistryError

# Files of a version that a rebuild needs.
NEEDED = ("checkpoint.pt", "split.parquet", "run.json")


class ReproduceError(RuntimeError):
    """A version that cannot be rebuilt (registered before it kept its split or run record)."""


@dataclass
class MetricComparison:
    registered: float | None
    reproduced: float | None
    difference: float | None
    equal: bool


@dataclass
class Reproduction:
    name: str
    version: int
    identical: bool  # the weights are bit-identical
    registered_weights_hash: str
    reproduced_weights_hash: str
    registered_model_hash: str
    reproduced_model_hash: str
    environment_matches: bool  # the packages, Python and platform are those the version was trained with
    environment_differences: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, MetricComparison] = field(default_factory=dict)
    checkpoint_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weights_hash(checkpoint_path: str | Path) -> str:
    """sha256 over the weights alone: every tensor of the state dict, in key order, with its name,
    dtype and shape."""
    import torch

    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)["state_dict"]
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def _differences(then: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("python", "platform"):
        if then.get(key) != now.get(key):
            out[key] = {"registered": then.get(key), "now": now.get(key)}
    for pkg in sorted(set(then.get("packages", {})) | set(now.get("packages", {}))):
        a, b = then.get("packages", {}).get(pkg), now.get("packages", {}).get(pkg)
        if a != b:
            out[pkg] = {"registered": a, "now": b}
    return out


def reproduce(registry_root: str | Path, name: str, version: int, workspace: str | Path | None = None,
              out_dir: str | Path | None = None, num_threads: int = 2) -> Reproduction:
    """Train ``name`` v``version`` again from its registered lineage and compare it with the original."""
    import torch

    from conveyor.model.evaluate import evaluate
    from conveyor.model.train import load_run_metadata, train

    reg = Registry(registry_root)
    try:
        mv = reg.get(name, version)
    except RegistryError as err:
        raise ReproduceError(str(err)) from None
    vdir = Path(mv.artifact_dir)
    missing = [f for f in NEEDED if not (vdir / f).is_file()]
    if missing:
        raise ReproduceError(f"{name} v{version} cannot be rebuilt from its lineage: {vdir} lacks {', '.join(missing)} "
                             f"(versions registered before the registry kept them)")
    ckpt = torch.load(vdir / "checkpoint.pt", map_location="cpu", weights_only=True)
    run = load_run_metadata(vdir / "checkpoint.pt")
    spec = spec_from_dict(run["resolved_spec"])
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix=f"reproduce-{name}-v{version}-"))
    lineage = {**run.get("lineage", {}), "reproduces": {"name": name, "version": version, "model_hash": mv.model_hash}}
    trained = train(spec, vdir / "split.parquet", list(ckpt["classes"]), out / "model",
                    dataset_version=ckpt["dataset_version"], lineage=lineage,
                    workspace=workspace if workspace is not None else out)
    evaluated = evaluate(trained.checkpoint_path, vdir / "split.parquet", out / "eval", split="test",
                         num_threads=num_threads, export_onnx=False)
    registered = json.loads((vdir / "metrics.json").read_text()) if (vdir / "metrics.json").is_file() else mv.metrics
    registered = registered.get("metrics", registered)
    comparison: dict[str, MetricComparison] = {}
    for key in sorted(set(registered) | set(evaluated.metrics)):
        if key.split("[", 1)[0] in RUNTIME_METRICS:
            continue  # timed on a shared machine: not part of what is reproduced
        a, b = registered.get(key), evaluated.metrics.get(key)
        if not isinstance(a, (int, float)) and a is not None or not isinstance(b, (int, float)) and b is not None:
            continue
        diff = None if a is None or b is None else float(b) - float(a)
        comparison[key] = MetricComparison(a, b, diff, a == b)
    then_env = ckpt.get("environment") or {}
    diffs = _differences(then_env, environment())
    before, after = weights_hash(vdir / "checkpoint.pt"), weights_hash(trained.checkpoint_path)
    return Reproduction(name, version, before == after, before, after, mv.model_hash, trained.checkpoint_hash,
                        not diffs, diffs, comparison, trained.checkpoint_path)
