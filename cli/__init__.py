"""The ``swimdiff-geo`` command line: a Click group with one module per command (like rio)."""
