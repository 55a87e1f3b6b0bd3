"""Classification in the review queue: one ``choices`` result per task, the class as the label."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from conveyor.labels.labelstudio.export import FROM_NAME, TO_NAME, check_names, fmt, result_id, xml_attr
from conveyor.labels.labelstudio.imports import Reject, ReviewContext, one_label


def check_classes(classes: Sequence[str]) -> list[str]:
    return check_names(classes)


def config(classes: Sequence[str]) -> str:
    """A single-choice ``Choices`` control named ``label`` over the classes."""
    items = [f'    <Choice value="{xml_attr(c)}"/>' for c in classes]
    return "\n".join(["<View>", f'  <Image name="{TO_NAME}" value="${TO_NAME}"/>',
                      f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true">',
                      *items, "  </Choices>", "</View>"]) + "\n"


def prediction(item: Mapping, classes: Sequence[str]) -> list[dict] | None:
    """One ``choices`` result with the item's ``predicted`` class (None without one)."""
    cls = item.get("predicted")
    if cls is None:
        return None
    if str(cls) not in classes:
        raise ValueError(f"item {item.get('id')!r}: predicted class {cls!r} is not in classes")
    return [{"id": result_id(item.get("content_hash"), 0), "from_name": FROM_NAME, "to_name": TO_NAME,
             "type": "choices", "value": {"choices": [str(cls)]}}]


def parse(ctx: ReviewContext, result: list, info: Mapping, where: str) -> str:
    """The one class chosen in the ``label`` control."""
    choices = [r for r in result if r.get("type") == "choices"]
    mine = [r for r in choices if r.get("from_name") == FROM_NAME] or (choices if len(choices) == 1 else [])
    if not mine:
        if choices:
            raise Reject("bad_row", "label", f"{where}: {len(choices)} choices results, none from '{FROM_NAME}'")
        raise Reject("unreviewed", "label", f"{where}: the annotation has no choice")
    if len(mine) > 1:
        raise Reject("bad_row", "label", f"{where}: {len(mine)} choices results from '{FROM_NAME}'")
    v = mine[0].get("value")
    if not isinstance(v, Mapping):
        raise Reject("bad_row", "label", f"{where}: the choices result has no value object")
    return one_label(v.get("choices"), where, "choices", ctx.classes, "label")


def label_key(value: Any) -> Any:
    return value


def csv_parse(ctx: ReviewContext, rec: Mapping, where: str) -> str:
    """The class written in the ``label`` cell."""
    label = (rec.get("label") or "").strip()
    if not label:
        raise Reject("unreviewed", "label", f"{where}: the label cell is empty")
    if label not in ctx.classes:
        raise Reject("unknown_label", "label", f"{where}: {label!r} is not a class ({', '.join(ctx.classes)})")
    return label


def csv_cells(item: Mapping, classes: Sequence[str]) -> dict[str, str]:
    return {"predicted": fmt(item.get("predicted"))}


def label_digest(frame: pl.DataFrame) -> list[str | None]:
    """The class."""
    return frame["label"].cast(pl.String).to_list()


def review_record(value: str, save_mask: Callable[[np.ndarray], tuple[str, str]]) -> dict[str, Any]:
    return {"label": value}


def review_columns(records: Sequence[Mapping], classes: Sequence[str]) -> list[pl.Series]:
    return [pl.Series("label", [r["label"] for r in records], dtype=pl.String)]


def class_counts(frame: pl.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in frame["label"].drop_nulls().value_counts().iter_rows()}
