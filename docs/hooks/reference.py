"""MkDocs hook: generate the reference pages from the code, so they cannot drift from it.

- ``reference/spec.md``: every section and field of the pipeline spec (``conveyor.core.spec.Spec``
  and its sub-models) with its type, constraints, default and description, and the metrics gate
  rules may name. A field without a description is a build warning (an error under ``strict``).
- ``reference/cli.md``: the help of every ``conveyor`` command and sub-command, from the
  argparse parser (``conveyor.cli.main.build_parser``).

The pages are added to the build in memory; nothing is written into ``docs/``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.plugins.conveyor.reference")

SPEC_PAGE = "reference/spec.md"
CLI_PAGE = "reference/cli.md"
HELP_WIDTH = 100


def on_config(config: Any) -> Any:
    # Document the checkout this mkdocs.yml belongs to, even when another copy of conveyor is installed.
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def on_files(files: Any, config: Any) -> Any:
    files.append(File.generated(config, SPEC_PAGE, content=spec_reference()))
    files.append(File.generated(config, CLI_PAGE, content=cli_reference()))
    return files


# ---- the spec -------------------------------------------------------------------------------
def _submodels(annotation: Any) -> list[type]:
    """The pydantic models an annotation refers to (directly, or inside Optional, list, dict)."""
    from pydantic import BaseModel

    found = []
    stack = [annotation]
    while stack:
        t = stack.pop()
        if isinstance(t, type) and issubclass(t, BaseModel):
            found.append(t)
        else:
            stack.extend(typing.get_args(t))
    return found


def _anchor(path: str) -> str:
    return "spec-" + path.replace(".", "-") if path else "spec"


def _type_name(t: Any, sections: dict[type, str]) -> str:
    origin = typing.get_origin(t)
    args = typing.get_args(t)
    if t is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a, sections) for a in args)
    if t in sections:
        return f"[{t.__name__}](#{_anchor(sections[t])})"
    if origin is not None:
        inner = ", ".join(_type_name(a, sections) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if t is Any:
        return "any"
    return f"`{getattr(t, '__name__', str(t))}`"


_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "at least {} items", "max_length": "at most {} items"}


def _constraints(field: Any) -> list[str]:
    out = []
    for meta in field.metadata:
        for attr, sign in _BOUNDS.items():
            value = getattr(meta, attr, None)
            if value is not None:
                out.append(sign.format(value) if "{}" in sign else f"{sign} {value:g}")
        pattern = getattr(meta, "pattern", None)
        if pattern:
            out.append(f"pattern `{pattern}`")
    return out


def _default(field: Any, sections: dict[type, str]) -> str:
    from pydantic import BaseModel

    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "its fields' defaults"
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def spec_reference() -> str:
    from conveyor import kinds
    from conveyor.core import spec as spec_module

    # Sections in the order a spec reads: depth first from the top level.
    sections: dict[type, str] = {}
    order: list[type] = []

    def visit(model: type, path: str) -> None:
        if model in sections:
            return
        sections[model] = path
        order.append(model)
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            for sub in _submodels(field.annotation):
                visit(sub, f"{path}.{name}" if path else name)

    visit(spec_module.Spec, "")

    lines = [
        "# Spec reference",
        "",
        "<!-- Generated from conveyor/core/spec.py by docs/hooks/reference.py; edit the docstrings there. -->",
        "",
        "Every field of a pipeline spec, generated from the pydantic model in `conveyor/core/spec.py`",
        "(`Spec` and its sub-models). Fields without a default are marked **required**; everything else",
        "may be left out. Relative paths resolve against the spec file's folder. See [The spec](../spec.md)",
        "for an overview and examples.",
        "",
        f"`task` names a registered task kind; this build knows: "
        + ", ".join(f"`{k}`" for k in kinds.available()) + ".",
        "",
    ]
    for model in order:
        path = sections[model]
        title = f"`{path}`" if path else "Top level"
        lines += [f"## {title} {{ #{_anchor(path)} }}", ""]
        doc = model.__dict__.get("__doc__")  # the class's own docstring, not an inherited one
        if doc:
            lines += [" ".join(doc.split()), ""]
        lines += ["| field | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            key = f"{path}.{name}" if path else name
            if not field.description:
                log.warning("spec reference: %s.%s (%s) has no description", model.__name__, name, key)
            kind = _type_name(field.annotation, sections)
            bounds = _constraints(field)
            if bounds:
                kind += " (" + ", ".join(bounds) + ")"
            lines.append(f"| `{name}` | {_cell(kind)} | {_cell(_default(field, sections))} | "
                         f"{_cell(field.description or '')} |")
        lines.append("")

    lines += _metric_tables(kinds, spec_module)
    return "\n".join(lines) + "\n"


def _metric_tables(kinds: Any, spec_module: Any) -> list[str]:
    """The metrics gate rules and champion comparisons may name, per kind when the kinds declare them."""
    directions: dict[str, str] = dict(getattr(spec_module, "METRIC_DIRECTIONS", {}))
    per_class_all = set(getattr(spec_module, "PER_CLASS_METRICS", set()))
    by_kind = {}
    for name in kinds.available():
        kind = kinds.get(name)
        declared = getattr(kind, "metrics", None)
        if declared:
            by_kind[name] = (dict(declared), set(getattr(kind, "per_class_metrics", ())))
    lines = ["## Task kinds and gate metrics { #spec-metrics }", "",
             "The metrics `gates.rules` and `gates.champion.metrics` may name, and whether higher or lower is",
             "better. A per-class metric is written `name[class]`, e.g. `recall[cat] >= 0.8`.", ""]

    def table(metrics: dict[str, str], per_class: set[str]) -> list[str]:
        rows = ["| metric | better | per class |", "|---|---|---|"]
        rows += [f"| `{m}` | {d} | {'yes' if m in per_class else ''} |" for m, d in sorted(metrics.items())]
        return rows + [""]

    generic = {m: d for m, d in directions.items() if not any(m in ms for ms, _ in by_kind.values())}
    for name, (metrics, per_class) in by_kind.items():
        lines += [f"### `{name}`", ""]
        formats = getattr(kinds.get(name), "source_formats", ())
        if formats:
            lines += ["Reads `data.format`: " + ", ".join(f"`{f}`" for f in formats) + ".", ""]
        lines += table(metrics, per_class)
    if generic:
        if by_kind:
            lines += ["### Every kind", "", "Latency and size, measured on the exported ONNX model.", ""]
        lines += table(generic, per_class_all)
    return lines


# ---- the CLI --------------------------------------------------------------------------------
def _subcommands(parser: Any) -> list[tuple[str, list[str], str, Any]]:
    """(name, aliases, help, parser) of each sub-command, in the order they were added."""
    import argparse

    out = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        seen: dict[int, int] = {}
        for name, sub in action.choices.items():
            if id(sub) in seen:
                out[seen[id(sub)]][1].append(name)
                continue
            seen[id(sub)] = len(out)
            out.append((name, [], helps.get(name, ""), sub))
    return out


def cli_reference() -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)
    try:
        from conveyor.cli.main import build_parser

        parser = build_parser()
        lines = [
            "# CLI reference",
            "",
            "<!-- Generated from the argparse parser (conveyor.cli.main.build_parser) by docs/hooks/reference.py. -->",
            "",
            "The `--help` of every `conveyor` command, generated from the parser. See [The command line](../cli.md)",
            "for what the commands are for.",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
            "",
        ]

        def walk(p: Any, prefix: str, level: int) -> None:
            for name, aliases, helptext, sub in _subcommands(p):
                full = f"{prefix} {name}"
                lines.extend([f"{'#' * level} `{full}`", ""])
                if aliases:
                    lines.extend(["Also spelled " + ", ".join(f"`{prefix} {a}`" for a in aliases) + ".", ""])
                if helptext:
                    lines.extend([_cell(helptext[:1].upper() + helptext[1:]).rstrip(".") + ".", ""])
                lines.extend(["```text", sub.format_help().rstrip(), "```", ""])
                walk(sub, full, min(level + 1, 4))

        walk(parser, "conveyor", 2)
        return "\n".join(lines) + "\n"
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
