"""Factories shared by the tests: toy datasets, spec builders, tiny models and odd image files.

``tests`` is on pytest's ``pythonpath``, so tests import these as ``helpers.<module>``.
"""
