"""The review queue in Label Studio's formats, and a reviewed export read back with validation.

Export (:func:`write_queue`) writes three files into one folder:

- ``tasks.json``: a Label Studio JSON import, a list of tasks. Each task is
  ``{"data": {"image", "content_hash", "conveyor_id", "camera", "reason", "score"}, "predictions": [...]}``;
  the model's output is a *prediction* (pre-annotation) ``{"model_version", "score", "result": [...]}``
  that the reviewer accepts or corrects. Results follow Label Studio's result format:

  - classification: one ``choices`` result, ``value = {"choices": [class]}``;
  - detection: one ``rectanglelabels`` result per box with ``original_width`` / ``original_height`` and
    ``value = {"x", "y", "width", "height", "rotation", "rectanglelabels": [class]}``, where x / y is the
    top-left corner and every value is a percentage (0..100) of the image's width or height;
  - segmentation: one ``brushlabels`` result per class present in the mask (background, class 0, is
    not painted) with ``value = {"format": "rle", "rle": [...], "brushlabels": [class]}``.

- ``label_config.xml``: the labelling interface to paste into the project (an ``Image`` named ``image``
  and a ``Choices`` / ``RectangleLabels`` / ``BrushLabels`` control named ``label``).
- ``queue.csv``: the same queue for a spreadsheet review: ``id, content_hash, image, camera, reason, score,
  predicted, confidence, current_label, label`` (``current_label``: a labelled image sent back as a
  suspected label error); detection adds ``boxes`` (prefilled with the predicted boxes as JSON,
  ``[{"x1", "y1", "x2", "y2", "category"}]`` in pixels), segmentation adds ``mask`` (empty; the reviewer
  writes the path of a PNG of class indices, relative to the CSV's folder or absolute).

Brush RLE is Label Studio's own run-length code (:mod:`conveyor.labels.labelstudio.rle`).

Import (:func:`read_review`) reads a Label Studio JSON export (``.json``: a list of tasks with
``annotations``) or the queue CSV filled in (``.csv``), matches every task / row to a known image by
content hash (then by conveyor id), checks it and returns the accepted labels and a quarantine frame
(:data:`QUARANTINE_SCHEMA`) with a reason code per rejected item: ``missing_image``, ``unreviewed``,
``unknown_label``, ``conflicting_labels``, ``duplicate``, ``bad_box``, ``bad_mask``, ``bad_row``. Only a
file that cannot be read as a whole raises (:class:`ReviewFileError`).

In the CSV a row counts as reviewed once its ``label`` cell is filled: the class for classification, any
mark (``ok``, a name) for detection and segmentation, whose ``boxes`` / ``mask`` cells hold the label;
an empty ``boxes`` cell is also unreviewed, while ``[]`` means "no objects". Row numbers in messages
count data rows from 1 (the CSV header and the JSON list brackets not counted).

The modules: :mod:`~conveyor.labels.labelstudio.rle` (the brush codec),
:mod:`~conveyor.labels.labelstudio.export` (the queue files) and
:mod:`~conveyor.labels.labelstudio.imports` (reading a review back). What differs by task lives with
the task kind (``conveyor/kinds/<kind>/labelstudio.py``). Nothing here does work at import time.
"""

from __future__ import annotations

from conveyor.labels.labelstudio.export import (
    CSV_COLUMNS,
    FROM_NAME,
    IGNORE_INDEX,
    TO_NAME,
    label_config,
    make_task,
    write_queue,
)
from conveyor.labels.labelstudio.imports import (
    QUARANTINE_SCHEMA,
    REASONS,
    Reject,
    ReviewChecked,
    ReviewContext,
    ReviewedLabel,
    ReviewFileError,
    read_review,
)
from conveyor.labels.labelstudio.rle import rle_decode, rle_encode

__all__ = ["CSV_COLUMNS", "FROM_NAME", "IGNORE_INDEX", "QUARANTINE_SCHEMA", "REASONS", "TO_NAME", "Reject",
           "ReviewChecked", "ReviewContext", "ReviewFileError", "ReviewedLabel", "label_config", "make_task",
           "read_review", "rle_decode", "rle_encode", "write_queue"]
