"""Gate reports: one parameterised notebook that draws a run's outputs, executed with papermill and
rendered to a self-contained HTML page with nbconvert.

``render_report(run_dir)`` executes ``notebooks/gate_report.ipynb`` with the run folder as its
parameter and writes ``<run_dir>/report/gate_report.ipynb`` (the executed notebook) and
``<run_dir>/report/gate_report.html`` (code hidden, figures embedded as PNG data URIs, no script
or style fetched from the network). The notebook runs on the ``python3`` kernel of *this*
interpreter (ipykernel's own kernel spec, launched with ``sys.executable``), never on whatever
``python3`` kernel spec a user or system Jupyter folder holds, so it sees the same packages.

A notebook that fails raises :class:`ReportError` naming the failing cell and exception; the
partial executed notebook stays where it was written, next to where the HTML would have gone.
"""

from __future__ import annotations

from conveyor.core.resources import resource_path

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from conveyor.core.io import atomic_write_text

NOTEBOOK = resource_path("conveyor.reporting", "notebooks", "gate_report.ipynb")
TEMPLATES = resource_path("conveyor.reporting", "notebooks", "templates")
TEMPLATE_NAME = "conveyor_report"  # nbconvert's lab template without the CDN scripts (require.js, MathJax, mermaid)
KERNEL_NAME = "python3"
REPORT_DIR = "report"
NOTEBOOK_NAME = "gate_report.ipynb"
HTML_NAME = "gate_report.html"
DEFAULT_TIMEOUT = 300  # seconds per notebook cell
ENV_SWITCH = "CONVEYOR_REPORT"  # "0" (or false/no/off) skips the report at the end of a cycle


class ReportError(RuntimeError):
    """The report notebook failed (or could not start); ``notebook_path`` is the partial output, if any."""

    def __init__(self, message: str, *, notebook_path: str | None = None, cell: str | None = None,
                 ename: str | None = None, evalue: str | None = None):
        super().__init__(message)
        self.notebook_path = notebook_path
        self.cell = cell
        self.ename = ename
        self.evalue = evalue


@dataclass(frozen=True)
class ReportResult:
    notebook_path: str
    html_path: str
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def enabled() -> bool:
    """Whether a cycle renders its gate report (on unless ``CONVEYOR_REPORT`` is 0, false, no or off)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


@lru_cache(maxsize=1)
def kernel_manager_class() -> type:
    """An nbclient kernel manager whose ``python3`` kernel is this interpreter's ipykernel."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class ThisInterpreterSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str):
            if kernel_name == KERNEL_NAME:
                from ipykernel.kernelspec import RESOURCES, get_kernel_dict

                spec = get_kernel_dict()
                spec["argv"][0] = sys.executable
                return self.kernel_spec_class(resource_dir=RESOURCES, name=KERNEL_NAME, **spec)
            return super().get_kernel_spec(kernel_name)

    class ThisInterpreterKernelManager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _this_interpreter_specs(self) -> KernelSpecManager:
            return ThisInterpreterSpecs(data_dir=self.data_dir)

    return ThisInterpreterKernelManager


def _failed_cell(nb_path: Path, exec_count: int | None, index: int | None) -> str:
    """The failing cell as a reader finds it: its id (the notebook names its cells) and In [n]."""
    try:
        import nbformat

        nb = nbformat.read(str(nb_path), as_version=4)
        for cell in nb.cells:
            if cell.get("cell_type") == "code" and any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
                return f"cell {cell.get('id')!r} (In [{cell.get('execution_count')}])"
    except Exception:  # the partial notebook is unreadable: fall back to what papermill said
        pass
    return f"cell In [{exec_count}]" if exec_count is not None else f"cell #{index}"


def _html(nb_path: Path, title: str) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(nb_path), as_version=4)
    exporter = HTMLExporter(template_name=TEMPLATE_NAME, extra_template_basedirs=[str(TEMPLATES)])
    exporter.exclude_input = True
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    return body


def _title(run_dir: Path) -> str:
    from conveyor.core.summary import RunSummary

    try:
        s = RunSummary.load(run_dir / "summary.json")
        return f"Gate report: {s.spec}, run {s.run_id[:8]}"
    except (OSError, ValueError):  # no summary, or not one (pydantic's ValidationError is a ValueError)
        return f"Gate report: {run_dir.name}"


def render_report(run_dir: str | Path, out_dir: str | Path | None = None, notebook: str | Path | None = None,
                  timeout: int = DEFAULT_TIMEOUT, *, workspace: str | Path | None = None,
                  title: str | None = None) -> ReportResult:
    """Execute the gate report notebook for ``run_dir`` and render it to HTML.

    ``out_dir`` defaults to ``<run_dir>/report``; ``notebook`` to the bundled
    ``notebooks/gate_report.ipynb`` (any notebook with a ``parameters`` cell taking ``run_dir``,
    ``workspace`` and ``title``); ``timeout`` is the limit for each cell, in seconds;
    ``workspace`` defaults to the one the run's summary names. Raises :class:`ReportError` when
    the notebook fails, keeping the partial executed notebook in ``out_dir``."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    t0 = time.perf_counter()
    run = Path(run_dir).expanduser().resolve()
    if not run.is_dir():
        raise ReportError(f"run folder {run} does not exist")
    out = Path(out_dir).expanduser().resolve() if out_dir else run / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    source = Path(notebook).expanduser().resolve() if notebook else NOTEBOOK
    if not source.is_file():
        raise ReportError(f"report notebook {source} does not exist")
    nb_path, html_path = out / NOTEBOOK_NAME, out / HTML_NAME
    html_path.unlink(missing_ok=True)  # a failed render must not leave an older page looking current
    title = title or _title(run)
    params = {"run_dir": str(run), "workspace": str(workspace or ""), "title": title}
    try:
        pm.execute_notebook(
            str(source), str(nb_path), parameters=params, kernel_name=KERNEL_NAME, language="python",
            kernel_manager_class=kernel_manager_class(), progress_bar=False, log_output=False,
            request_save_on_cell_execute=False, execution_timeout=timeout, start_timeout=120,
            # the kernel listens on localhost with signed messages; its warning that TCP is not encrypted is noise here
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except PapermillExecutionError as err:
        cell = _failed_cell(nb_path, err.exec_count, err.cell_index)
        raise ReportError(f"the gate report notebook failed in {cell}: {err.ename}: {err.evalue} "
                          f"(partial notebook: {nb_path})", notebook_path=str(nb_path), cell=cell, ename=err.ename,
                          evalue=err.evalue) from None
    except Exception as err:  # kernel did not start, died, or a cell ran past the timeout
        kept = str(nb_path) if nb_path.is_file() else None
        raise ReportError(f"the gate report notebook could not run: {type(err).__name__}: {err}"
                          + (f" (partial notebook: {kept})" if kept else ""), notebook_path=kept,
                          ename=type(err).__name__, evalue=str(err)) from err
    atomic_write_text(html_path, _html(nb_path, title))
    return ReportResult(str(nb_path), str(html_path), round(time.perf_counter() - t0, 3))


def find_run(run: str, workspace: str | Path | None = None) -> Path:
    """A run folder from a path, or from a run id (or a prefix of one, e.g. the 8 characters in the
    folder name) looked up under ``<workspace>/runs``."""
    p = Path(run).expanduser()
    if p.is_dir():
        return p.resolve()
    if workspace is None:
        raise ReportError(f"{run!r} is not a run folder; give the spec (--spec) to look run ids up in its workspace")
    runs = Path(workspace).expanduser() / "runs"
    key = run.strip().lower()
    found = []
    for d in sorted(runs.glob("*-*")) if runs.is_dir() else []:
        if not d.is_dir():
            continue
        run_id = ""
        try:
            run_id = str(json.loads((d / "run.json").read_text()).get("run_id", "")).lower()
        except (OSError, ValueError):
            pass
        suffix = d.name.rsplit("-", 1)[-1].lower()  # the folder ends with the run id's first 8 characters
        if key and (run_id.startswith(key) if run_id else suffix.startswith(key[:8])):
            found.append(d)
    if not found:
        raise ReportError(f"no run {run!r} under {runs}")
    if len(found) > 1:
        raise ReportError(f"run id {run!r} is ambiguous under {runs}: " + ", ".join(d.name for d in found))
    return found[0].resolve()
