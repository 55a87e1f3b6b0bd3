"""Verbs of the labelling side: labels list, labels diff, review queue, review import, review status."""

from __future__ import annotations

import argparse
import json

from conveyor.cli.common import load
from conveyor.cli.render import (print_label_diff, print_label_history, print_review_import, print_review_queue,
                                 print_review_status)


def cmd_labels_list(args: argparse.Namespace) -> int:
    from conveyor.core.workspace import Workspace
    from conveyor.labels import versions as labels

    spec = load(args.spec)
    hist = labels.history(Workspace(spec.workspace_path(args.workspace)), spec.name)
    if args.json:
        print(json.dumps(hist, indent=2))
    else:
        print_label_history(spec.name, hist)
    return 0


def cmd_labels_diff(args: argparse.Namespace) -> int:
    from conveyor.core.workspace import Workspace
    from conveyor.labels import versions as labels

    spec = load(args.spec)
    d = labels.diff(Workspace(spec.workspace_path(args.workspace)), spec.name, args.old, args.new)
    if args.json:
        print(json.dumps(d.to_dict(), indent=2))
    else:
        print_label_diff(d)
    return 0


def cmd_review_queue(args: argparse.Namespace) -> int:
    import polars as pl

    from conveyor.core.workspace import Workspace
    from conveyor.data.ingest import ingest
    from conveyor.labels import stage as review
    from conveyor.labels import versions as labels

    spec = load(args.spec)
    ws = Workspace(spec.workspace_path(args.workspace))
    ing = ingest(spec, ws.datasets, progress=not args.json)
    champion, challenger = review.model_refs(ws.registry, spec.name)
    res = review.label_stage(spec, ws, ing.manifest_path, ing.dataset_version, ing.classes, champion, challenger,
                             progress=not args.json)
    labels.publish(ws, spec.name, pl.read_parquet(res.manifest_path))  # what an import builds on
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, default=str))
    else:
        print_review_queue(spec.name, res, spec.labeling.auto_label_threshold,
                           champion.version if champion else None)
    return 0


def cmd_review_import(args: argparse.Namespace) -> int:
    from conveyor.core.workspace import Workspace
    from conveyor.labels import stage as review

    spec = load(args.spec)
    res = review.import_review(spec, Workspace(spec.workspace_path(args.workspace)), args.file)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
    else:
        print_review_import(res)
    return 0 if res.accepted or not res.quarantined else 1


def cmd_review_status(args: argparse.Namespace) -> int:
    from conveyor.core.workspace import Workspace
    from conveyor.labels import stage as review

    spec = load(args.spec)
    st = review.status(Workspace(spec.workspace_path(args.workspace)), spec.name)
    if args.json:
        print(json.dumps(st, indent=2, default=str))
    else:
        print_review_status(spec.name, st)
    return 0
