"""Multi-label review in Label Studio and in the queue CSV.

Label Studio: an ``Image`` named ``image`` and a ``Choices`` control named ``label`` with
``choice="multiple"``, one ``Choice`` per class. The model's pre-annotation is one ``choices``
result with the predicted labels, ``value = {"choices": [...]}``; an annotation may hold an empty
choice list (or no choices result at all): the image shows none of the labels.

Queue CSV: the ``labels`` column holds the names separated by ``;`` (prefilled with the prediction);
the row counts as reviewed once its ``label`` cell holds a mark (``ok``, a name). An empty
``labels`` cell on a reviewed row means "none of the labels".

Rejected items raise :class:`ReviewReject` with a reason code of the review import (``unknown_label``,
``unreviewed``, ``bad_row``), the field and a detail naming where.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

FROM_NAME = "label"
TO_NAME = "image"
RESULT_TYPE = "choices"


class ReviewReject(Exception):
    """One reviewed item that cannot be accepted (reason code, field, detail)."""

    def __init__(self, reason: str, field: str, detail: str):
        super().__init__(detail)
        self.reason, self.field, self.detail = reason, field, detail


def _xml_attr(text: str) -> str:
    if any(ord(ch) < 32 and ch not in "\t\n\r" for ch in text) or "\ufffe" in text or "\uffff" in text:
        raise ValueError(f"class name {text!r} has characters XML cannot hold")
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
            .replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;"))


def _names(classes: Sequence[str]) -> list[str]:
    names = [str(c) for c in classes]
    if not names:
        raise ValueError("classes is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"classes repeat: {sorted({c for c in names if names.count(c) > 1})}")
    return names


def label_config(classes: Sequence[str]) -> str:
    """The Label Studio labelling config (XML): several choices per image."""
    names = _names(classes)
    head = f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="multiple" showInline="true">'
    items = [f'    <Choice value="{_xml_attr(c)}"/>' for c in names]
    return "\n".join(["<View>", f'  <Image name="{TO_NAME}" value="${TO_NAME}"/>', head, *items, "  </Choices>",
                      "</View>"]) + "\n"


def _item_labels(item: Mapping) -> list[str] | None:
    value = item.get("predicted_labels")
    if value is None:
        value = item.get("labels_predicted")
    if value is None:
        text = item.get("predicted")
        if text is None:
            return None
        from conveyor.kinds.multilabel.sources import parse_labels

        return parse_labels(text)
    return [str(v) for v in value]


def prediction_result(item: Mapping, classes: Sequence[str]) -> list[dict] | None:
    """The pre-annotation result list of one queue item (its ``predicted_labels`` list, or its
    ``predicted`` cell as names joined by ``;``); None when the item has no prediction."""
    names = _names(classes)
    labels = _item_labels(item)
    if labels is None:
        return None
    unknown = [c for c in labels if c not in names]
    if unknown:
        raise ValueError(f"item {item.get('id')!r}: predicted labels {unknown} are not in classes")
    ordered = [c for c in names if c in labels]
    rid = f"{item.get('content_hash') or item.get('id')}"[:10] or "0"
    return [{"id": rid, "from_name": FROM_NAME, "to_name": TO_NAME, "type": RESULT_TYPE,
             "value": {"choices": ordered}}]


def _check(labels: Any, where: str, fld: str, classes: Sequence[str]) -> list[str]:
    if not isinstance(labels, list):
        raise ReviewReject("bad_row", fld, f"{where}: {fld} is {type(labels).__name__}, not a list")
    bad = [v for v in labels if not isinstance(v, str)]
    if bad:
        raise ReviewReject("bad_row", fld, f"{where}: {fld} holds {bad[:5]!r}, not names")
    unknown = [v for v in labels if v not in classes]
    if unknown:
        raise ReviewReject("unknown_label", fld, f"{where}: {unknown} not classes ({', '.join(classes)})")
    return [c for c in classes if c in labels]


def parse_result(classes: Sequence[str], result: Any, where: str) -> list[str]:
    """One annotation's result list to the label set (class order); raises :class:`ReviewReject`."""
    names = list(classes)
    if not isinstance(result, list):
        raise ReviewReject("bad_row", "result", f"{where}: result is {type(result).__name__}, not a list")
    for k, r in enumerate(result):
        if not isinstance(r, Mapping):
            raise ReviewReject("bad_row", "result", f"{where}: result {k} is {type(r).__name__}, not an object")
    choices = [r for r in result if r.get("type") == RESULT_TYPE]
    mine = [r for r in choices if r.get("from_name") == FROM_NAME] or (choices if len(choices) == 1 else [])
    if not mine:
        if choices:
            raise ReviewReject("bad_row", "labels", f"{where}: {len(choices)} choices results, none from '{FROM_NAME}'")
        return []  # nothing ticked: the image shows none of the labels
    if len(mine) > 1:
        raise ReviewReject("bad_row", "labels", f"{where}: {len(mine)} choices results from '{FROM_NAME}'")
    v = mine[0].get("value")
    if not isinstance(v, Mapping):
        raise ReviewReject("bad_row", "labels", f"{where}: the choices result has no value object")
    return _check(v.get("choices", []), where, "labels", names)


def parse_csv(classes: Sequence[str], rec: Mapping, where: str) -> list[str]:
    """A queue-CSV row's label set; raises :class:`ReviewReject` (``unreviewed`` without a mark)."""
    from conveyor.kinds.multilabel.sources import LabelsError, parse_labels

    mark = (rec.get("label") or "").strip()
    if not mark:
        raise ReviewReject("unreviewed", "label", f"{where}: the label cell is empty; write a mark (e.g. 'ok') "
                           "once the labels are reviewed")
    try:
        labels = parse_labels(rec.get("labels"))
    except LabelsError as err:
        raise ReviewReject("bad_row", "labels", f"{where}: {err}") from None
    return _check(labels, where, "labels", list(classes))
