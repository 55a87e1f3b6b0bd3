"""The ``conveyor`` command line.

``parser`` builds the argument parser, ``commands/`` holds what each verb does, ``render`` prints
what a person reads, ``common`` holds what the commands share, and ``main`` ties them together.
"""
