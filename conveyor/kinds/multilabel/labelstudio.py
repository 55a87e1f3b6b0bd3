"""Multi-label review in Label Studio and in the queue CSV (the kind's ``labelstudio_module``).

Label Studio: an ``Image`` named ``image`` and a ``Choices`` control named ``label`` with
``choice="multiple"``, one ``Choice`` per class. The model's pre-annotation is one ``choices``
result with the predicted labels, ``value = {"choices": [...]}``; an annotation may hold an empty
choice list (or no choices result at all): the image shows none of the labels.

Queue CSV: the ``labels`` column holds the names separated by ``;`` (prefilled with the prediction);
the row counts as reviewed once its ``label`` cell holds a mark (``ok``, a name). An empty
``labels`` cell on a reviewed row means "none of the labels".

Rejected items raise :class:`conveyor.labels.labelstudio.Reject` with a reason code of the review
import (``unknown_label``, ``unreviewed``, ``bad_row``), the field and a detail naming where.
Stored reviewed labels keep the set as a JSON list in the ``labels`` column.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from conveyor.labels.labelstudio.export import FROM_NAME, TO_NAME, check_names, result_id, xml_attr
from conveyor.labels.labelstudio.imports import Reject

RESULT_TYPE = "choices"
SEPARATOR = ";"


def check_classes(classes: Sequence[str]) -> list[str]:
    return check_names(classes)


def config(classes: Sequence[str]) -> str:
    """The Label Studio labelling config (XML): several choices per image."""
    names = check_names(classes)
    head = f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="multiple" showInline="true">'
    items = [f'    <Choice value="{xml_attr(c)}"/>' for c in names]
    return "\n".join(["<View>", f'  <Image name="{TO_NAME}" value="${TO_NAME}"/>', head, *items, "  </Choices>",
                      "</View>"]) + "\n"


def _item_labels(item: Mapping) -> list[str] | None:
    """The predicted label set of a queue item: its ``labels`` (the champion's machine label, as the
    label stage fills a queue item's ``label_field``) or ``predicted_labels`` list, else its
    ``predicted`` text (names joined by ``;``); None without a prediction."""
    value = item.get("labels")
    if value is None:
        value = item.get("predicted_labels")
    if value is None:
        text = item.get("predicted")
        if text is None:
            return None
        from conveyor.kinds.multilabel.sources import parse_labels

        return parse_labels(text)
    return [str(v) for v in value]


def prediction(item: Mapping, classes: Sequence[str]) -> list[dict] | None:
    """The pre-annotation result list of one queue item; None when the item has no prediction."""
    names = check_names(classes)
    labels = _item_labels(item)
    if labels is None:
        return None
    unknown = [c for c in labels if c not in names]
    if unknown:
        raise ValueError(f"item {item.get('id')!r}: predicted labels {unknown} are not in classes")
    ordered = [c for c in names if c in labels]
    return [{"id": result_id(item.get("content_hash") or item.get("id"), 0), "from_name": FROM_NAME,
             "to_name": TO_NAME, "type": RESULT_TYPE, "value": {"choices": ordered}}]


def _check(labels: Any, where: str, fld: str, classes: Sequence[str]) -> list[str]:
    if not isinstance(labels, list):
        raise Reject("bad_row", fld, f"{where}: {fld} is {type(labels).__name__}, not a list")
    bad = [v for v in labels if not isinstance(v, str)]
    if bad:
        raise Reject("bad_row", fld, f"{where}: {fld} holds {bad[:5]!r}, not names")
    unknown = [v for v in labels if v not in classes]
    if unknown:
        raise Reject("unknown_label", fld, f"{where}: {unknown} not classes ({', '.join(classes)})")
    return [c for c in classes if c in labels]


def parse(ctx: Any, result: Any, info: Mapping, where: str) -> list[str]:
    """One annotation's result list to the label set (class order); raises ``Reject``."""
    names = list(ctx.classes)
    if not isinstance(result, list):
        raise Reject("bad_row", "result", f"{where}: result is {type(result).__name__}, not a list")
    for k, r in enumerate(result):
        if not isinstance(r, Mapping):
            raise Reject("bad_row", "result", f"{where}: result {k} is {type(r).__name__}, not an object")
    choices = [r for r in result if r.get("type") == RESULT_TYPE]
    mine = [r for r in choices if r.get("from_name") == FROM_NAME] or (choices if len(choices) == 1 else [])
    if not mine:
        if choices:
            raise Reject("bad_row", "labels", f"{where}: {len(choices)} choices results, none from '{FROM_NAME}'")
        return []  # nothing ticked: the image shows none of the labels
    if len(mine) > 1:
        raise Reject("bad_row", "labels", f"{where}: {len(mine)} choices results from '{FROM_NAME}'")
    v = mine[0].get("value")
    if not isinstance(v, Mapping):
        raise Reject("bad_row", "labels", f"{where}: the choices result has no value object")
    return _check(v.get("choices", []), where, "labels", names)


def label_key(value: Any) -> tuple[str, ...]:
    return tuple(sorted(value or ()))


def csv_parse(ctx: Any, rec: Mapping, where: str) -> list[str]:
    """A queue-CSV row's label set; raises ``Reject`` (``unreviewed`` without a mark)."""
    from conveyor.kinds.multilabel.sources import LabelsError, parse_labels

    mark = (rec.get("label") or "").strip()
    if not mark:
        raise Reject("unreviewed", "label", f"{where}: the label cell is empty; write a mark (e.g. 'ok') "
                     "once the labels are reviewed")
    try:
        labels = parse_labels(rec.get("labels"))
    except LabelsError as err:
        raise Reject("bad_row", "labels", f"{where}: {err}") from None
    return _check(labels, where, "labels", list(ctx.classes))


def csv_cells(item: Mapping, classes: Sequence[str]) -> dict[str, str]:
    """``predicted`` and the prefilled ``labels`` cell: the predicted names joined by ``;``."""
    labels = _item_labels(item)
    if labels is None:
        return {"predicted": "", "labels": ""}
    text = SEPARATOR.join(c for c in classes if c in labels)
    return {"predicted": text, "labels": text}


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [str(v) for v in json.loads(value)]
    return [str(v) for v in value]


def label_digest(frame: pl.DataFrame) -> list[str]:
    """Per row the label set as one string: the names joined by ``;`` (sorted; "" for none). Rows of a
    manifest (a list column) or of stored reviewed labels (JSON text)."""
    return [SEPARATOR.join(sorted(_as_list(v))) for v in frame.get_column("labels").to_list()]


def review_record(value: list[str], save_mask: Callable[[np.ndarray], tuple[str, str]]) -> dict[str, Any]:
    return {"labels": json.dumps(list(value))}


def review_columns(records: Sequence[Mapping], classes: Sequence[str]) -> list[pl.Series]:
    return [pl.Series("labels", [_as_list(r["labels"]) for r in records], dtype=pl.List(pl.String))]


def class_counts(frame: pl.DataFrame) -> dict[str, int]:
    """Images per label."""
    if "labels" not in frame.columns:
        return {}
    return dict(Counter(str(c) for v in frame.get_column("labels").to_list() for c in _as_list(v)))
