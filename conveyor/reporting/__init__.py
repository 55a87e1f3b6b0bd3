"""Reporting: the papermill gate report rendered to HTML."""
