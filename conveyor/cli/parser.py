"""The ``conveyor`` argument parser: every verb, its arguments and its help.

Related verbs form groups (``registry``, ``review``, ``labels``, ``rollout``, ``webhook``). The
spellings from before the ``rollout`` and ``webhook`` groups (``rollout SPEC --version N``,
``rollout-status``, ``webhook SPEC...``, ``webhook-send``) still parse, as deprecated aliases, for one
release; a namespace parsed from one carries ``deprecated_alias`` (the old and the new spelling).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from conveyor.cli.commands.labels import (cmd_labels_diff, cmd_labels_list, cmd_review_import, cmd_review_queue,
                                          cmd_review_status)
from conveyor.cli.commands.pipeline import (cmd_demo, cmd_deployments, cmd_monitor, cmd_observe, cmd_report, cmd_run,
                                            cmd_validate)
from conveyor.cli.commands.release import (cmd_approve, cmd_registry_list, cmd_reject, cmd_reproduce, cmd_rollback,
                                           cmd_rollout,
                                           cmd_rollout_status)
from conveyor.cli.commands.serving import cmd_serve, cmd_webhook, cmd_webhook_send

SPEC_HELP = "the pipeline's spec (YAML)"

# Groups whose first word was a verb of its own before: `conveyor rollout SPEC ...` is `rollout start`,
# `conveyor webhook SPEC...` is `webhook serve`.
LEGACY_GROUP_VERBS: dict[str, tuple[str, frozenset[str]]] = {
    "rollout": ("start", frozenset({"start", "status"})),
    "webhook": ("serve", frozenset({"serve", "send"})),
}


def package_version() -> str:
    """The installed distribution's version; the package's own when conveyor runs from a source tree."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("conveyor")
    except PackageNotFoundError:
        from conveyor import __version__

        return __version__


def legacy_rewrite(argv: Sequence[str]) -> tuple[list[str], tuple[str, str] | None]:
    """``argv`` in the grouped spelling, and (old, new) when it used a deprecated one."""
    argv = list(argv)
    if len(argv) >= 2 and argv[0] in LEGACY_GROUP_VERBS:
        verb, subverbs = LEGACY_GROUP_VERBS[argv[0]]
        if argv[1] not in subverbs and argv[1] not in ("-h", "--help"):
            return [argv[0], verb, *argv[1:]], (f"{argv[0]} SPEC", f"{argv[0]} {verb} SPEC")
    return argv, None


class ConveyorParser(argparse.ArgumentParser):
    """The top-level parser: reads the deprecated ``rollout SPEC`` / ``webhook SPEC`` forms as their
    group's verb before parsing."""

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        argv, alias = legacy_rewrite(sys.argv[1:] if args is None else args)
        ns, extras = super().parse_known_args(argv, namespace)
        if alias is not None:
            ns.deprecated_alias = alias
        return ns, extras


def add_workspace(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--workspace", help="state folder (default: the spec's workspace, or ./workspace beside it)")


def add_spec(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("spec", help=SPEC_HELP)


def deprecated(sp: argparse.ArgumentParser, old: str, new: str) -> None:
    sp.set_defaults(deprecated_alias=(old, new))


def add_rollout_start(sp: argparse.ArgumentParser) -> None:
    add_spec(sp)
    sp.add_argument("--version", type=int, required=True, metavar="N", help="the registered version to roll out")
    sp.add_argument("--watch", action="store_true", help="run the rollout flow here until the rollout ends")
    sp.add_argument("--force", action="store_true",
                    help="send out a version that was rolled back before (needs --reason; recorded with --by)")
    sp.add_argument("--reason", help="why a rolled-back version goes out again (with --force)")
    sp.add_argument("--by", default=None, help="who decides (default: the login name)")
    sp.add_argument("--json", action="store_true")
    add_workspace(sp)
    sp.set_defaults(func=cmd_rollout)


def add_rollout_status(sp: argparse.ArgumentParser) -> None:
    add_spec(sp)
    sp.add_argument("--json", action="store_true")
    add_workspace(sp)
    sp.set_defaults(func=cmd_rollout_status)


def add_webhook_serve(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("spec", nargs="+", help="specs of the pipelines to serve (each with triggers.webhook: true)")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8787, help="port (default: 8787)")
    sp.add_argument("--mode", choices=["deployment", "event"], default="deployment",
                    help="start the conveyor-cycle/<name> deployment, or emit a Prefect event (default: deployment)")
    sp.add_argument("--rate-per-minute", type=float, default=6, help="accepted requests per pipeline per minute")
    sp.add_argument("--burst", type=int, default=3, help="requests a pipeline accepts at once before the rate applies")
    add_workspace(sp)
    sp.set_defaults(func=cmd_webhook)


def add_webhook_send(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("url", help="e.g. http://127.0.0.1:8787/hooks/digits-classifier")
    sp.add_argument("--reason", help="why the run is wanted (recorded with the run)")
    sp.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    sp.set_defaults(func=cmd_webhook_send)


def group(sub: Any, name: str, helptext: str) -> Any:
    """A verb group (``conveyor NAME VERB ...``); returns its sub-parsers."""
    g = sub.add_parser(name, help=helptext, description=helptext)
    return g.add_subparsers(dest=f"{name}_command", required=True, parser_class=argparse.ArgumentParser,
                            metavar="VERB", help=f"what to do (conveyor {name} VERB -h: its arguments)")


def build_parser() -> argparse.ArgumentParser:
    p = ConveyorParser(prog="conveyor", description="Continuous training for computer-vision models.")
    p.add_argument("--version", action="version", version=f"conveyor {package_version()}",
                   help="print conveyor's version and exit")
    p.set_defaults(deprecated_alias=None)
    # the verbs' own parsers are plain ArgumentParsers: only the first word can be a deprecated group form
    sub = p.add_subparsers(dest="command", required=True, parser_class=argparse.ArgumentParser, metavar="COMMAND",
                           help="what to do (conveyor COMMAND -h: its arguments)")

    v = sub.add_parser("validate", help="check a spec and print what it resolves to")
    add_spec(v)
    v.add_argument("--show", action="store_true", help="print the resolved spec")
    add_workspace(v)
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("run", help="run one cycle of the pipeline a spec describes")
    add_spec(r)
    r.add_argument("--json", action="store_true", help="print a machine-readable summary")
    r.add_argument("--trigger", default="manual", help="what started this run (recorded in the lineage)")
    r.add_argument("--reason", help="why this run was started, in words (recorded with the run)")
    add_workspace(r)
    r.set_defaults(func=cmd_run)

    lbsub = group(sub, "labels", "label versions: list them, or show what changed between two")
    ll = lbsub.add_parser("list", help="every label version, oldest first")
    add_spec(ll)
    ll.add_argument("--json", action="store_true")
    add_workspace(ll)
    ll.set_defaults(func=cmd_labels_list)
    ld = lbsub.add_parser("diff", help="labels changed, added and removed between two versions")
    add_spec(ld)
    ld.add_argument("old", help="a label version id (or unique prefix), or previous")
    ld.add_argument("new", nargs="?", default="latest", help="another one (default: latest)")
    ld.add_argument("--json", action="store_true")
    add_workspace(ld)
    ld.set_defaults(func=cmd_labels_diff)

    rvsub = group(sub, "review", "the human review queue: build it, import a reviewed export, status")
    rq = rvsub.add_parser("queue", help="ingest, auto-label and write the review queue now (no training)")
    add_spec(rq)
    rq.add_argument("--json", action="store_true")
    add_workspace(rq)
    rq.set_defaults(func=cmd_review_queue)
    ri = rvsub.add_parser("import", help="read a reviewed export (Label Studio JSON or the queue CSV) back")
    add_spec(ri)
    ri.add_argument("file", help="Label Studio JSON export or the edited queue.csv")
    ri.add_argument("--json", action="store_true")
    add_workspace(ri)
    ri.set_defaults(func=cmd_review_import)
    rs = rvsub.add_parser("status", help="the latest queue, imports and label versions")
    add_spec(rs)
    rs.add_argument("--json", action="store_true")
    add_workspace(rs)
    rs.set_defaults(func=cmd_review_status)

    mo = sub.add_parser("monitor", help="evaluate every trigger now and say why each did or did not fire")
    add_spec(mo)
    mo.add_argument("--json", action="store_true", help="print the full report")
    mo.add_argument("--trigger", action="store_true", help="start a cycle here when a trigger fired (and no "
                                                           "cycle runs and the cool-down allows)")
    mo.add_argument("--now", help=argparse.SUPPRESS)  # evaluate as of another time (ISO 8601), for replays
    add_workspace(mo)
    mo.set_defaults(func=cmd_monitor)

    ob = sub.add_parser("observe", help="add a table of production predictions to the prediction log and profiles")
    add_spec(ob)
    ob.add_argument("--predictions", required=True, metavar="TABLE",
                    help="CSV/Parquet/JSONL: confidence, predicted, [timestamp, prediction_id, camera, ...]")
    ob.add_argument("--at", help="when the rows without a timestamp were made (ISO 8601; default: now)")
    ob.add_argument("--json", action="store_true")
    add_workspace(ob)
    ob.set_defaults(func=cmd_observe)

    regsub = group(sub, "registry", "inspect the model registry")
    rl = regsub.add_parser("list", help="list versions with metrics, lineage and the champion")
    add_spec(rl)
    rl.add_argument("--json", action="store_true")
    add_workspace(rl)
    rl.set_defaults(func=cmd_registry_list)

    for verb, helptext in (("approve", "approve a version waiting for a reviewer (gates.require_approval): promote "
                                       "it, or start its rollout"),
                           ("reject", "reject a version waiting for a reviewer; the champion stays")):
        ap = sub.add_parser(verb, help=helptext)
        add_spec(ap)
        ap.add_argument("run", metavar="RUN", help="the cycle's run id or its first 8 characters (with --version: "
                                                   "the version number)")
        ap.add_argument("--version", action="store_true", help="RUN is a version number")
        ap.add_argument("--by", required=True, metavar="NAME", help="who decides (recorded in the registry)")
        ap.add_argument("--reason", required=verb == "reject", metavar="TEXT",
                        help="why (required to reject; recorded in the registry)")
        ap.add_argument("--json", action="store_true")
        add_workspace(ap)
        ap.set_defaults(func=cmd_approve if verb == "approve" else cmd_reject)

    rb = sub.add_parser("rollback", help="move the champion alias back to an earlier version")
    add_spec(rb)
    rb.add_argument("--to", type=int, required=True, metavar="VERSION")
    rb.add_argument("--reason", default="manual rollback",
                    help="why (kept in the alias history and in the rolled-back version's record)")
    rb.add_argument("--by", default=None, help="who rolls back (default: the login name)")
    add_workspace(rb)
    rb.set_defaults(func=cmd_rollback)

    rp = sub.add_parser("reproduce", help="train a registered version again from its lineage alone and compare "
                                          "weights and metrics")
    add_spec(rp)
    rp.add_argument("--version", type=int, required=True, metavar="N", help="the registered version to rebuild")
    rp.add_argument("--out", help="where to write the rebuilt model (default: a temporary folder)")
    rp.add_argument("--json", action="store_true")
    add_workspace(rp)
    rp.set_defaults(func=cmd_reproduce)

    rosub = group(sub, "rollout", "roll a registered version out against the champion (deploy.strategy shadow, "
                                  "canary or blue_green); `rollout SPEC --version N` is a deprecated alias of "
                                  "`rollout start`")
    add_rollout_start(rosub.add_parser("start", help="start a rollout of a registered version against the champion"))
    add_rollout_status(rosub.add_parser("status", help="the rollout's state, live metrics and what its alerts say "
                                                       "now"))
    ros = sub.add_parser("rollout-status", help="deprecated alias of `rollout status`")
    add_rollout_status(ros)
    deprecated(ros, "rollout-status", "rollout status")

    d = sub.add_parser("demo", help="run a bundled example: two cycles, a second batch of data arriving between them")
    d.add_argument("--example", default=None,
                   help="which bundled example (a spec name in conveyor/demo/specs; default: the digits classifier)")
    d.add_argument("--dir", default=".demo", help="where the demo spec and data go (default: ./.demo)")
    d.add_argument("--fresh", action="store_true", help="delete the demo folder first")
    d.add_argument("--json", action="store_true")
    add_workspace(d)
    d.set_defaults(func=cmd_demo)

    whsub = group(sub, "webhook", "signed HTTP webhooks that start pipeline runs (secret from "
                                  "CONVEYOR_WEBHOOK_SECRET); `webhook SPEC...` is a deprecated alias of "
                                  "`webhook serve`")
    add_webhook_serve(whsub.add_parser("serve", help="serve a signed HTTP webhook that starts pipeline runs"))
    add_webhook_send(whsub.add_parser("send", help="send a signed request to a conveyor webhook"))
    whs = sub.add_parser("webhook-send", help="deprecated alias of `webhook send`")
    add_webhook_send(whs)
    deprecated(whs, "webhook-send", "webhook send")

    sv = sub.add_parser("serve", help="serve the champion (and a running rollout's challenger) over HTTP with "
                                      "onnxruntime")
    add_spec(sv)
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    sv.add_argument("--threads", type=int, default=1,
                    help="onnxruntime threads per model call (default: 1; requests run in parallel)")
    sv.add_argument("--poll", type=float, default=1.0, metavar="SECONDS",
                    help="how often to check the champion alias and rollout.json (default: 1.0)")
    add_workspace(sv)
    sv.set_defaults(func=cmd_serve)

    rp = sub.add_parser("report", help="render the gate report (HTML) of a past run again")
    rp.add_argument("run", help="a run folder, or a run id (or its first 8 characters) looked up with --spec")
    rp.add_argument("--spec", help="the pipeline's spec: run ids are looked up in its workspace's runs/")
    rp.add_argument("--out", metavar="DIR", help="where the notebook and HTML go (default: RUN/report)")
    add_workspace(rp)
    rp.set_defaults(func=cmd_report)

    dp = sub.add_parser("deployments", help="generate the prefect.yaml deployments of one or more specs "
                                             "(schedules, event triggers, monitors)")
    dp.add_argument("spec", nargs="+", help="specs of the pipelines to deploy")
    dp.add_argument("--work-pool", default="conveyor", metavar="NAME", help="work pool to deploy to (default: conveyor)")
    dp.add_argument("--write", metavar="PATH", help="write the YAML to PATH (atomically) instead of printing it; "
                                                    "spec paths are written relative to PATH's folder")
    dp.set_defaults(func=cmd_deployments)
    return p
