"""Prefect flow entrypoints (``flows/<name>.py:<function>``) for deployments from a source checkout.

The flows compose the tasks of ``conveyor.orchestration.tasks``; both ship inside the ``conveyor``
package, so an installed wheel has no top-level ``flows`` or ``tasks`` package.
"""
