"""Data contracts: Great Expectations suites over the manifest and the split.

The suites live as GX 1.x JSON files in ``data_contracts/`` (``name`` + ``expectations`` with
``type`` and ``kwargs``). Values that depend on the spec are GX suite parameters
(``{"$PARAMETER": "classes"}``), filled in at validation time from :func:`contract_params`.

Suites and the frames they run on:

- ``manifest``: the manifest frame (required columns, unique ids, hash formats, labels in the
  class set, image paths, sizes, capture times not in the future).
- ``manifest_time``: the manifest frame, only when ``split.group_by`` is ``time``
  (``captured_at`` not null).
- ``split_frame``: the split frame itself (ids, labels, groups, split names).
- ``split_groups``: distinct (group, split) rows; ``group`` unique, or a group sits in two splits.
- ``split_duplicates``: distinct (content_hash, split) rows; ``content_hash`` unique.
- ``split_near_duplicates``: near-duplicate pairs across different splits; must have 0 rows.
- ``split_class_coverage``: (eval split, class) counts over the full class set; count >= minimum.
- ``split_sizes``: image count of every split whose ratio is above 0; count >= 1.
- ``split_eval_loss``: the frozen evaluation images of the last cycle that this split no longer
  holds (:class:`conveyor.data.split.EvalSetChange`), each with the share that is gone;
  ``lost_fraction`` <= ``split.max_eval_loss``. Only when the split stage compared with an earlier
  cycle; the report's ``eval_set`` says how many were lost either way.

Task kinds bring their own suites (``TaskKind.contract_suites``): ``contract_frames`` gives the
frames of the kind's manifest and split-frame suites (which replace ``manifest`` and
``split_frame``, e.g. ``detection_manifest``), plus derived ones (``detection_boxes``); class
coverage counts the kind's ``class_frame`` under its ``coverage_suite``.

GX has no polars support, so frames are converted to pandas (through pyarrow) here. Great
Expectations is imported lazily, inside functions: importing this module costs nothing.
"""

from __future__ import annotations

from conveyor.core.resources import resource_path

import json
import math
import os
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from conveyor import kinds
from conveyor.core.io import atomic_write_json
from conveyor.data.neardup import near_duplicate_pairs
from conveyor.data.split import EvalSetChange
from conveyor.kinds.base import TaskKind

if TYPE_CHECKING:  # pragma: no cover
    from conveyor.core.spec import Spec

CONTRACTS_ENV = "CONVEYOR_CONTRACTS_DIR"
DEFAULT_CONTRACTS_DIR = resource_path("conveyor.data", "suites")

SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")
MAX_EXAMPLES = 5
# GX returns the row positions of up to this many failing rows; we keep MAX_EXAMPLES of them.
_PARTIAL_COUNT = 20
MAX_LISTED_LOST = 50  # lost evaluation images named in a failure message (all are in the report)
_DATASOURCE = "conveyor_contracts"
_ASSET = "frame"
_BATCH_DEFINITION = "whole_frame"
_ID_NAMESPACE = uuid.UUID("5f1d6c1e-8a0b-4f5e-9a43-7c2f0b6d9e11")
_PHASH_PATTERN = r"^(?:[0-9a-f]{2})+$"  # polars (Rust) regex: ``$`` is the end of the text


class ContractConfigError(ValueError):
    """A suite file that cannot be read, or parameters that do not fit the suites."""


# ---- report -------------------------------------------------------------------------------


@dataclass
class ExpectationOutcome:
    suite: str
    expectation: str
    kwargs: dict[str, Any]
    success: bool
    observed: Any = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    why: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "suite": self.suite,
                "expectation": self.expectation,
                "kwargs": self.kwargs,
                "success": self.success,
                "observed": self.observed,
                "examples": self.examples,
                "why": self.why,
            }
        )

    def title(self) -> str:
        shown = {k: v for k, v in self.kwargs.items() if k not in ("batch_id",)}
        args = ", ".join(f"{k}={_short(v)}" for k, v in shown.items())
        return f"{self.expectation}({args})"


@dataclass
class SuiteOutcome:
    name: str
    success: bool
    evaluated: int
    failed: list[ExpectationOutcome] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "success": self.success,
            "evaluated": self.evaluated,
            "failed": [f.to_dict() for f in self.failed],
        }


@dataclass
class ContractReport:
    success: bool
    suites: list[SuiteOutcome] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    # Raw GX ``ExpectationSuiteValidationResult.to_json_dict()`` per suite name.
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    # The evaluation set against the last cycle's (EvalSetChange.to_dict()); None: not compared.
    eval_set: dict[str, Any] | None = None

    @property
    def failed_count(self) -> int:
        return sum(len(s.failed) for s in self.suites)

    @property
    def evaluated(self) -> int:
        return sum(s.evaluated for s in self.suites)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [f for s in self.suites for f in s.failed]

    def suite(self, name: str) -> SuiteOutcome | None:
        return next((s for s in self.suites if s.name == name), None)

    def to_dict(self, include_raw: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "success": self.success,
            "evaluated": self.evaluated,
            "failed_count": self.failed_count,
            "params": _jsonable(self.params),
            "suites": [s.to_dict() for s in self.suites],
            "eval_set": _jsonable(self.eval_set),
        }
        if include_raw:
            d["gx_results"] = _jsonable(self.raw)
        return d

    def eval_set_line(self) -> str | None:
        """How many of the last cycle's frozen evaluation images are gone (None: not compared)."""
        e = self.eval_set
        if not e:
            return None
        return (f"evaluation set: {e['lost_count']} of {e['previous_size']} frozen val/test images of dataset "
                f"{e['previous_dataset']} are gone ({e['lost_fraction']:.1%}, limit split.max_eval_loss="
                f"{e['max_loss']:.1%}); {e['size']} now")

    def summary(self) -> str:
        names = ", ".join(s.name for s in self.suites)
        eval_line = self.eval_set_line()
        if self.success:
            return (f"data contracts passed: {self.evaluated} expectations in {len(self.suites)} suites ({names})"
                    + (f"; {eval_line}" if eval_line else ""))
        bad = [s for s in self.suites if not s.success]
        lines = [
            f"data contracts failed: {self.failed_count} of {self.evaluated} expectations failed "
            f"in {len(bad)} of {len(self.suites)} suites ({', '.join(s.name for s in bad)})"
        ]
        for s in bad:
            for f in s.failed:
                lines.append(f"- [{s.name}] {f.title()}")
                if f.why:
                    lines.append(f"    why: {f.why}")
                lines.append(f"    observed: {_observed_text(f.observed)}")
                for ex in f.examples:
                    lines.append(f"    e.g. {_short(ex, 300)}")
        if eval_line:
            lines.append(f"- {eval_line}")
            lost = (self.eval_set or {}).get("lost") or []
            if not (self.suite("split_eval_loss") or SuiteOutcome("", True, 0)).success:
                lines.append("    missing evaluation images (path, content hash):")
                lines.extend(f"    {x['path']} {x['content_hash']}" for x in lost[:MAX_LISTED_LOST])
                if len(lost) > MAX_LISTED_LOST:
                    lines.append(f"    ... and {len(lost) - MAX_LISTED_LOST} more (all in the report's eval_set)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


class ContractError(RuntimeError):
    """Raised when data contracts fail. ``.report`` holds the :class:`ContractReport`."""

    def __init__(self, report: ContractReport) -> None:
        self.report = report
        super().__init__(report.summary())


# ---- parameters -----------------------------------------------------------------------------


def contract_params(spec: Spec, classes: list[str], now: datetime | None = None) -> dict[str, Any]:
    """The suite parameters (and the few values that shape the derived frames) for a spec.

    ``classes`` is the resolved class set (from the spec, the folder names or the manifest).
    All values are JSON-able, so the dict goes into the report as it is.
    """
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    ratios = spec.split.ratios
    return {
        # GX suite parameters
        "classes": [str(c) for c in classes],
        "splits": list(SPLITS),
        "min_side": int(spec.data.min_side),
        "max_side": int(spec.data.max_side),
        "max_file_bytes": int(spec.data.max_file_mb * 1024 * 1024),
        "max_captured_at": (now.astimezone(timezone.utc) + timedelta(days=1)).isoformat(),
        "min_per_class_eval": int(spec.split.min_per_class_eval),
        "max_eval_loss": float(spec.split.max_eval_loss),
        # used here to choose suites and build derived frames
        "group_by": spec.split.group_by,
        "eval_splits": [s for s in EVAL_SPLITS if ratios.get(s, 0) > 0],
        "nonempty_splits": [s for s in SPLITS if ratios.get(s, 0) > 0],
        "near_duplicate_max_distance": int(spec.curation.near_duplicates.max_distance),
        "task": spec.task,
        "eval_label_sources": ["human", "review", "feedback"],
    }


def _kind(params: dict[str, Any]) -> TaskKind:
    """The task kind of the parameters (``task``), which names the kind's suites and frames."""
    return kinds.get(str(params.get("task") or kinds.LEGACY_TASK))


# ---- suites ---------------------------------------------------------------------------------


def contracts_dir(path: str | Path | None = None) -> Path:
    """The folder of suite files: the argument, else ``$CONVEYOR_CONTRACTS_DIR``, else ``data_contracts/``."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get(CONTRACTS_ENV)
    if env:
        return Path(env).expanduser()
    return DEFAULT_CONTRACTS_DIR


def _suite_parameters(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        if set(obj) == {"$PARAMETER"}:
            return {str(obj["$PARAMETER"])}
        return set().union(*(_suite_parameters(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_suite_parameters(v) for v in obj)) if obj else set()
    return set()


def read_suite(name: str, directory: str | Path | None = None) -> dict[str, Any]:
    """The JSON of suite ``name`` (``<dir>/<name>.json``), checked for the GX 1.x layout."""
    path = contracts_dir(directory) / f"{name}.json"
    if not path.is_file():
        raise ContractConfigError(f"data contract suite {name!r} not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ContractConfigError(f"data contract suite {path}: not valid JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise ContractConfigError(f"data contract suite {path}: needs a 'name' and a list of 'expectations'")
    for i, exp in enumerate(data["expectations"]):
        if not isinstance(exp, dict) or not isinstance(exp.get("type"), str) or not isinstance(exp.get("kwargs", {}), dict):
            raise ContractConfigError(f"data contract suite {path}: expectation {i} needs a 'type' and 'kwargs'")
    data.setdefault("name", name)
    data["_path"] = str(path)
    return data


def _build_suite(data: dict[str, Any]):
    """A GX ExpectationSuite from suite JSON. Unlike ``ExpectationSuite(expectations=...)``,
    which logs and drops an invalid expectation, this raises, naming the file and the entry."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    name = data["name"]
    expectations = []
    for i, exp in enumerate(data["expectations"]):
        meta = dict(exp.get("meta") or {})
        try:
            config = ExpectationConfiguration(
                type=exp["type"],
                kwargs=dict(exp.get("kwargs") or {}),
                meta=meta,
                notes=exp.get("notes"),
                # a stable id lets us put the results back in suite order
                id=str(uuid.uuid5(_ID_NAMESPACE, f"{name}:{i}")),
            )
            config.to_domain_obj()  # raises on a bad type or bad kwargs
            expectations.append(config)
        except Exception as err:  # noqa: BLE001 - GX raises several types here
            msg = getattr(err, "message", None) or str(err)
            raise ContractConfigError(
                f"data contract suite {data.get('_path', name)}: expectation {i} ({exp.get('type')}) is invalid: {msg}"
            ) from None
    return gx.ExpectationSuite(name=name, expectations=expectations, meta={k: v for k, v in (data.get("meta") or {}).items()})


# ---- GX plumbing -------------------------------------------------------------------------------


def new_context():
    """A fresh ephemeral GX context, progress bars off. Creating one (with the GX import) takes a few seconds:
    make one per contracts stage and pass it to the ``validate_*`` functions."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    try:
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    except Exception:  # noqa: BLE001 - cosmetic only
        pass
    return context


class _Validator:
    """One GX context with one pandas datasource, dataframe asset and whole-frame batch definition,
    reused for every suite."""

    def __init__(self, context=None) -> None:
        self.context = context if context is not None else new_context()
        try:
            ds = self.context.data_sources.get(_DATASOURCE)
        except (KeyError, ValueError, LookupError):
            ds = self.context.data_sources.add_pandas(_DATASOURCE)
        try:
            asset = ds.get_asset(_ASSET)
        except (KeyError, ValueError, LookupError):
            asset = ds.add_dataframe_asset(_ASSET)
        try:
            self.batch_definition = asset.get_batch_definition(_BATCH_DEFINITION)
        except (KeyError, ValueError, LookupError):
            self.batch_definition = asset.add_batch_definition_whole_dataframe(_BATCH_DEFINITION)

    def run(
        self,
        suite_name: str,
        frame: pl.DataFrame,
        params: dict[str, Any],
        directory: str | Path | None,
        example_columns: list[str] | None = None,
        table_examples: bool = False,
    ) -> tuple[SuiteOutcome, dict[str, Any]]:
        data = read_suite(suite_name, directory)
        needed = _suite_parameters(data["expectations"])
        missing = sorted(needed - set(params))
        if missing:
            raise ContractConfigError(
                f"data contract suite {suite_name!r} needs parameters {missing}; given {sorted(params)}"
            )
        suite = _build_suite(data)
        if not isinstance(frame, pl.DataFrame):  # a pandas frame from a task kind's contract_frames
            frame = pl.from_pandas(frame)
        pdf = frame.to_pandas()
        batch = self.batch_definition.get_batch(batch_parameters={"dataframe": pdf})
        gx_params = {k: _jsonable(params[k]) for k in needed}
        result = batch.validate(
            suite,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": _PARTIAL_COUNT},
            expectation_parameters=gx_params,
        )
        order = {str(uuid.uuid5(_ID_NAMESPACE, f"{suite_name}:{i}")): i for i in range(len(data["expectations"]))}
        results = sorted(result.results, key=lambda r: order.get(str(r.expectation_config.id), len(order)))
        failed = [
            _outcome(suite_name, r, frame, example_columns, table_examples) for r in results if not r.success
        ]
        outcome = SuiteOutcome(name=suite_name, success=bool(result.success), evaluated=len(results), failed=failed)
        return outcome, result.to_json_dict()


def _outcome(
    suite: str, r, frame: pl.DataFrame, example_columns: list[str] | None, table_examples: bool
) -> ExpectationOutcome:
    cfg = r.expectation_config
    kwargs = {k: _jsonable(v) for k, v in dict(cfg.kwargs).items() if k != "batch_id"}
    res = dict(r.result or {})
    observed: Any
    examples: list[dict[str, Any]] = []
    error = _exception_message(r.exception_info)
    if error:
        observed = {"error": error}
    elif "observed_value" in res:
        observed = res["observed_value"]
        details = res.get("details")
        if details:
            observed = {"observed_value": observed, "details": details}
    else:
        observed = {
            k: res.get(k)
            for k in ("unexpected_count", "element_count", "unexpected_percent", "missing_count")
            if k in res
        }
        counts = res.get("partial_unexpected_counts")
        if counts:
            observed["unexpected_values"] = counts[:MAX_EXAMPLES]
    index_list = res.get("partial_unexpected_index_list")
    column = kwargs.get("column")
    if index_list and frame.height:
        cols = _example_columns(frame, example_columns, column)
        rows = [i for i in index_list if isinstance(i, int) and 0 <= i < frame.height][:MAX_EXAMPLES]
        if rows:
            examples = frame.select(cols)[rows].to_dicts()
    elif res.get("partial_unexpected_list"):
        examples = [{column or "value": v} for v in res["partial_unexpected_list"][:MAX_EXAMPLES]]
    elif table_examples and frame.height:
        examples = frame.head(MAX_EXAMPLES).to_dicts()
    meta = dict(cfg.meta or {})
    return ExpectationOutcome(
        suite=suite,
        expectation=cfg.type,
        kwargs=kwargs,
        success=bool(r.success),
        observed=_jsonable(observed),
        examples=_jsonable(examples),
        why=meta.get("why"),
    )


def _example_columns(frame: pl.DataFrame, wanted: list[str] | None, column: str | None) -> list[str]:
    if wanted is None:
        return frame.columns
    cols = [c for c in wanted if c in frame.columns]
    if column and column in frame.columns and column not in cols:
        cols.append(column)
    return cols or frame.columns


def _exception_message(info: Any) -> str | None:
    """GX puts ``exception_info`` either flat or keyed by metric id; dig out the first message."""
    if not info:
        return None
    if isinstance(info, dict):
        if info.get("raised_exception"):
            return str(info.get("exception_message") or "exception")
        for v in info.values():
            msg = _exception_message(v) if isinstance(v, dict) else None
            if msg:
                return msg
    return None


# ---- derived frames ---------------------------------------------------------------------------


def _has(frame: pl.DataFrame, *cols: str) -> bool:
    return all(c in frame.columns for c in cols)


def split_groups_frame(split: pl.DataFrame) -> pl.DataFrame:
    """Distinct (group, split) rows with the number of images of each."""
    return split.group_by(["group", "split"]).agg(pl.len().alias("n_images")).sort(
        ["group", "split"], nulls_last=True
    )


def split_label_sources_frame(split: pl.DataFrame, eval_splits: list[str]) -> pl.DataFrame:
    """Distinct (split, label_source) rows with the number of images; ``eval_label_source`` repeats
    the source for val/test rows (null for train, where every source is allowed)."""
    return (
        split.group_by(["split", "label_source"]).agg(pl.len().alias("n_images"))
        .with_columns(pl.when(pl.col("split").is_in(eval_splits)).then(pl.col("label_source"))
                      .otherwise(None).alias("eval_label_source"))
        .sort(["split", "label_source"], nulls_last=True)
    )


def split_duplicates_frame(split: pl.DataFrame) -> pl.DataFrame:
    """Distinct (content_hash, split) rows with the number of images and a few of their ids."""
    return (
        split.group_by(["content_hash", "split"])
        .agg(pl.len().alias("n_images"), pl.col("id").sort().head(3).str.join(", ").alias("ids"))
        .sort(["content_hash", "split"], nulls_last=True)
    )


def split_near_duplicates_frame(split: pl.DataFrame, max_distance: int) -> pl.DataFrame:
    """Near-duplicate pairs (phash Hamming distance <= ``max_distance``) across different splits.

    Only pairs across splits are computed (split against split), so many near-identical images
    inside one split cost nothing here. Rows with a missing or malformed phash are skipped (the
    ``split_frame`` suite reports those).
    """
    schema = {"id_a": pl.String, "split_a": pl.String, "id_b": pl.String, "split_b": pl.String, "distance": pl.Int64}
    rows: list[tuple[str, str, str, str, int]] = []
    ok = split.select("id", "split", "phash").filter(
        pl.col("phash").is_not_null() & pl.col("split").is_not_null() & pl.col("id").is_not_null()
    )
    ok = ok.filter(pl.col("phash").str.contains(_PHASH_PATTERN))
    ok = ok.with_columns(pl.col("phash").str.len_bytes().alias("_len")).sort(["split", "id"])
    for (length,), bucket in ok.group_by(["_len"], maintain_order=True):
        names = sorted(bucket.get_column("split").unique().to_list())
        parts = {n: bucket.filter(pl.col("split") == n) for n in names}
        for i, sa in enumerate(names):
            for sb in names[i + 1 :]:
                a, b = parts[sa], parts[sb]
                pairs = near_duplicate_pairs(a.get_column("phash").to_list(), max_distance, b.get_column("phash").to_list())
                ids_a, ids_b = a.get_column("id").to_list(), b.get_column("id").to_list()
                rows.extend((ids_a[x], sa, ids_b[y], sb, d) for x, y, d in pairs)
    rows.sort(key=lambda r: (r[4], r[1], r[0], r[3], r[2]))
    return pl.DataFrame(rows, schema=schema, orient="row")


def class_coverage_frame(occurrences: pl.DataFrame, classes: list[str], eval_splits: list[str]) -> pl.DataFrame:
    """One row per (eval split, class) over the full class set, with ``count``: the rows of
    ``occurrences`` (``split``, ``cls``; a task kind's ``class_frame``) of that split and class
    (0 when absent)."""
    counts = (
        occurrences.filter(pl.col("split").is_in(eval_splits))
        .select(pl.col("split").cast(pl.String), pl.col("cls").cast(pl.String).alias("label"))
        .group_by(["split", "label"])
        .agg(pl.len().alias("count"))
    )
    grid = pl.DataFrame(
        [(s, c) for s in eval_splits for c in classes], schema={"split": pl.String, "label": pl.String}, orient="row"
    )
    return grid.join(counts, on=["split", "label"], how="left").with_columns(pl.col("count").fill_null(0).cast(pl.Int64))


def split_class_coverage_frame(split: pl.DataFrame, classes: list[str], eval_splits: list[str]) -> pl.DataFrame:
    """:func:`class_coverage_frame` of the split's labels (one per image)."""
    return class_coverage_frame(split.select("split", pl.col("label").alias("cls")), classes, eval_splits)


def split_sizes_frame(split: pl.DataFrame, splits: list[str]) -> pl.DataFrame:
    """One row per split in ``splits`` with its image ``count`` (0 when empty)."""
    counts = split.group_by("split").agg(pl.len().alias("count")).with_columns(pl.col("split").cast(pl.String))
    grid = pl.DataFrame({"split": list(splits)}, schema={"split": pl.String})
    return grid.join(counts, on="split", how="left").with_columns(pl.col("count").fill_null(0).cast(pl.Int64))


# ---- public entry points ------------------------------------------------------------------------


def _merge(outcomes: list[tuple[SuiteOutcome, dict[str, Any]]], params: dict[str, Any]) -> ContractReport:
    suites = [o for o, _ in outcomes]
    return ContractReport(
        success=all(s.success for s in suites),
        suites=suites,
        params=dict(params),
        raw={o.name: raw for o, raw in outcomes},
    )


def _validator(context) -> _Validator:
    return context if isinstance(context, _Validator) else _Validator(context)


# Columns the failing rows of a task kind's suite frames are shown by (those the frame has).
_KIND_EXAMPLE_COLUMNS = ["id", "split", "category"]


def validate_manifest(
    manifest: pl.DataFrame, params: dict[str, Any], context=None, contracts_dir: str | Path | None = None,
    spec: Spec | None = None,
) -> ContractReport:
    """Run the task kind's manifest suites (for classification ``manifest``), and ``manifest_time``
    after the first of them when ``params['group_by'] == 'time'``."""
    v = _validator(context)
    frames = _kind(params).contract_frames(manifest, None, spec)
    outcomes = [v.run(name, frame, params, contracts_dir, example_columns=_KIND_EXAMPLE_COLUMNS)
                for name, frame in frames.items()]
    if params.get("group_by") == "time":
        outcomes.insert(min(1, len(outcomes)),
                        v.run("manifest_time", manifest, params, contracts_dir, example_columns=["id"]))
    return _merge(outcomes, params)


def validate_split(
    split: pl.DataFrame, params: dict[str, Any], context=None, contracts_dir: str | Path | None = None,
    spec: Spec | None = None, eval_change: EvalSetChange | None = None,
) -> ContractReport:
    """Run the task kind's split-frame suite on the split frame, then the leakage suites on derived
    frames, the kind's other split suites, class coverage (the kind's ``class_frame`` counted per
    eval split and class) and the split sizes.

    A derived suite whose input columns are missing is skipped; the split-frame suite fails then.
    """
    v = _validator(context)
    kind = _kind(params)
    kind_runs = [v.run(name, frame, params, contracts_dir, example_columns=_KIND_EXAMPLE_COLUMNS)
                 for name, frame in kind.contract_frames(split, split, spec).items()]
    outcomes = kind_runs[:1]
    if _has(split, "group", "split"):
        outcomes.append(v.run("split_groups", split_groups_frame(split), params, contracts_dir))
    if _has(split, "label_source", "split"):  # machine labels never in val / test
        frame = split_label_sources_frame(split, list(params.get("eval_splits", EVAL_SPLITS)))
        outcomes.append(v.run("split_label_sources", frame, params, contracts_dir, table_examples=True))
    if _has(split, "content_hash", "split", "id"):
        outcomes.append(v.run("split_duplicates", split_duplicates_frame(split), params, contracts_dir))
    if _has(split, "phash", "split", "id"):
        nd = split_near_duplicates_frame(split, int(params.get("near_duplicate_max_distance", 0)))
        outcomes.append(v.run("split_near_duplicates", nd, params, contracts_dir, table_examples=True))
    outcomes.extend(kind_runs[1:])
    occurrences = _class_occurrences(kind, split)
    if occurrences is not None:
        cov = class_coverage_frame(occurrences, list(params.get("classes", [])), list(params.get("eval_splits", EVAL_SPLITS)))
        outcomes.append(v.run(kind.coverage_suite, cov, params, contracts_dir))
    if _has(split, "split"):
        sizes = split_sizes_frame(split, list(params.get("nonempty_splits", SPLITS)))
        outcomes.append(v.run("split_sizes", sizes, params, contracts_dir))
    if eval_change is not None:
        outcomes.append(v.run("split_eval_loss", eval_loss_frame(eval_change), params, contracts_dir,
                              example_columns=["path", "content_hash", "split"]))
    report = _merge(outcomes, params)
    if eval_change is not None:
        report.eval_set = eval_change.to_dict()
    return report


def eval_loss_frame(change: EvalSetChange) -> pl.DataFrame:
    """One row per lost frozen evaluation image, with the share of the last set that is gone."""
    return pl.DataFrame(
        {"content_hash": [x.content_hash for x in change.lost], "split": [x.split for x in change.lost],
         "path": [x.path for x in change.lost], "lost_fraction": [change.lost_fraction] * len(change.lost)},
        schema={"content_hash": pl.Utf8, "split": pl.Utf8, "path": pl.Utf8, "lost_fraction": pl.Float64},
    )


def _class_occurrences(kind: TaskKind, split: pl.DataFrame) -> pl.DataFrame | None:
    """The kind's class occurrences of the split, or None when the split lacks the columns
    (the split-frame suite reports those)."""
    if not _has(split, "split"):
        return None
    try:
        return kind.class_frame(split)
    except pl.exceptions.ColumnNotFoundError:
        return None


def run_contracts(
    manifest: pl.DataFrame,
    split: pl.DataFrame,
    spec: Spec,
    classes: list[str],
    out_path: str | Path | None = None,
    raise_on_failure: bool = True,
    context=None,
    contracts_dir: str | Path | None = None,
    eval_change: EvalSetChange | None = None,
) -> ContractReport:
    """Validate the manifest and the split with one GX context.

    ``eval_change`` (the split stage's comparison with the last cycle's evaluation set) adds the
    ``split_eval_loss`` suite: more than ``split.max_eval_loss`` of it gone fails the contracts.

    Writes the report (with the raw GX results per suite) to ``out_path`` atomically when given,
    before raising :class:`ContractError` on failure.
    """
    params = contract_params(spec, classes)
    v = _validator(context)
    m = validate_manifest(manifest, params, context=v, contracts_dir=contracts_dir, spec=spec)
    s = validate_split(split, params, context=v, contracts_dir=contracts_dir, spec=spec, eval_change=eval_change)
    report = ContractReport(
        success=m.success and s.success, suites=m.suites + s.suites, params=params, raw={**m.raw, **s.raw},
        eval_set=s.eval_set,
    )
    if out_path is not None:
        atomic_write_json(out_path, report.to_dict(include_raw=True))
    if raise_on_failure and not report.success:
        raise ContractError(report)
    return report


# ---- JSON helpers ---------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: timestamps to ISO strings, NaN/NaT to None, numpy scalars to Python."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in obj]
        return sorted(items, key=str) if isinstance(obj, (set, frozenset)) else items
    if isinstance(obj, (datetime, date)):
        try:
            import pandas as pd

            if obj is pd.NaT:
                return None
        except ImportError:  # pragma: no cover
            pass
        return obj.isoformat()
    if hasattr(obj, "to_json_dict"):
        return _jsonable(obj.to_json_dict())
    item = getattr(obj, "item", None)
    if callable(item):  # numpy scalars
        try:
            return _jsonable(item())
        except (TypeError, ValueError):
            pass
    try:
        import pandas as pd

        if pd.isna(obj):
            return None
    except (ImportError, TypeError, ValueError):
        pass
    return str(obj)


def _observed_text(observed: Any) -> str:
    if isinstance(observed, dict) and "unexpected_count" in observed and "element_count" in observed:
        text = f"{observed['unexpected_count']} of {observed['element_count']} rows unexpected"
        pct = observed.get("unexpected_percent")
        if isinstance(pct, (int, float)):
            text += f" ({pct:.3g}%)"
        values = observed.get("unexpected_values")
        if values:
            text += "; values: " + ", ".join(
                f"{_short(v.get('value'), 70)} x{v.get('count')}" for v in values if isinstance(v, dict)
            )
        return text
    return _short(observed, 300)


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(_jsonable(value), default=str, sort_keys=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
