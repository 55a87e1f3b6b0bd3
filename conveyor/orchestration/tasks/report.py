"""The gate report task: render the run's report notebook to HTML at the end of a cycle."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact

from conveyor.reporting import report
from conveyor.release.registry import Registry
from conveyor.core.summary import RunSummary
from conveyor.orchestration.tasks.common import artifact_key, run_logger


def _add_to_summary(run_dir: str, html_path: str | None) -> None:
    path = Path(run_dir) / "summary.json"
    if path.is_file():
        RunSummary.load(path).model_copy(update={"report": html_path}).write(path)


@task(name="gate-report")
def report_task(spec_name: str, run_dir: str, registry_root: str, version: int | None,
                run_id: str | None = None) -> str | None:
    """Render ``<run_dir>/report/gate_report.html`` from the finished run folder (summary.json
    written), link it as a Prefect artifact, index it under the model version in the registry and
    add its path to summary.json as ``report``. Returns the path; None when ``CONVEYOR_REPORT=0``.

    A failing notebook raises :class:`conveyor.reporting.report.ReportError` naming the cell and exception;
    what the cycle registered and promoted before stays as it is."""
    log = run_logger()
    if not report.enabled():
        log.info("gate report skipped (%s=0)", report.ENV_SWITCH)
        _add_to_summary(run_dir, None)
        return None
    res = report.render_report(run_dir)
    if version is not None:
        Registry(registry_root).add_report(spec_name, version, res.html_path, run_id)
    create_link_artifact(link=Path(res.html_path).as_uri(), link_text=f"gate report, run {Path(run_dir).name}",
                         key=artifact_key(spec_name, "report"),
                         description=f"Gate report (HTML, figures embedded): {res.html_path}")
    _add_to_summary(run_dir, res.html_path)
    log.info("gate report rendered in %.1f s: %s", res.seconds, res.html_path)
    return res.html_path
