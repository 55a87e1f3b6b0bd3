"""Core: the typed spec, the workspace layout, events, file I/O and hashing, the cycle guard."""
