"""The documentation site: it builds strictly, its generated spec reference covers every field, and the
README stays a short entry point whose links into docs/ resolve."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

from pydantic import BaseModel

from conveyor.core.spec import Spec

# The checkout: the folder above this file that holds mkdocs.yml (whatever folder of tests/ this file is in).
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "mkdocs.yml").is_file())


def _reference_hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", ROOT / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _spec_fields() -> list[tuple[str, str, typing.Any]]:
    """(dotted path, field name, FieldInfo) of every documented field of Spec and its sub-models."""
    out = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            if field.exclude:
                continue
            path = f"{prefix}.{name}" if prefix else name
            out.append((path, name, field))
            stack = [field.annotation]
            while stack:
                t = stack.pop()
                if isinstance(t, type) and issubclass(t, BaseModel):
                    walk(t, path)
                else:
                    stack.extend(typing.get_args(t))

    walk(Spec, "")
    return out


def test_every_spec_field_has_a_description():
    missing = [path for path, _, field in _spec_fields() if not (field.description or "").strip()]
    assert not missing, f"spec fields without a description (add a docstring under the field): {missing}"


def test_spec_reference_lists_every_field_with_its_default():
    page = _reference_hook().spec_reference()
    fields = _spec_fields()
    assert len(fields) > 100
    for path, name, field in fields:
        section = path.rsplit(".", 1)[0] if "." in path else ""
        heading = f"## `{section}`" if section else "## Top level"
        assert heading in page, f"no section for {section!r}"
        body = page.split(heading, 1)[1].split("\n## ", 1)[0]
        rows = [line for line in body.splitlines() if line.startswith(f"| `{name}` |")]
        assert len(rows) == 1, f"{path}: expected one row in section {section!r}, got {rows}"
        assert " ".join(field.description.split()) in rows[0].replace("\\|", "|"), path
        if field.is_required():
            assert "**required**" in rows[0], path
    assert "| `max_pixels` | `int` (≥ 1) | `50000000` |" in page
    assert "| `strategy` | `\"replace\"` \\| `\"shadow\"` \\| `\"canary\"` \\| `\"blue_green\"` | `\"replace\"` |" in page
    assert re.search(r"\| `latency_p95_ms` \| lower \|", page)


def test_cli_reference_has_every_command():
    page = _reference_hook().cli_reference()
    for command in ("run", "validate", "demo", "serve", "approve", "registry list", "review import", "labels diff"):
        assert f"`conveyor {command}`" in page, command
    assert "usage: conveyor run" in page


def test_docs_build_strictly(tmp_path):
    """mkdocs build --strict: a broken link or anchor, a page missing from the navigation, or any warning
    (a spec field without a description among them) fails the build."""
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    spec_page = (site / "reference" / "spec" / "index.html").read_text()
    assert "near_duplicates" in spec_page and "require_approval" in spec_page
    assert (site / "reference" / "cli" / "index.html").is_file()
    assert (site / "adding-a-task-kind" / "index.html").is_file()


def test_readme_is_short_and_links_into_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make demo" in readme and "make test" in readme
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"
