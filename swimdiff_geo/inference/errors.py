"""Errors the engine raises; front ends turn them into exit codes or QgsProcessingException."""

from __future__ import annotations


class SwimdiffError(Exception):
    """Base class of every error the engine raises on purpose (a clear message, no traceback)."""


class InputError(SwimdiffError):
    """A user-supplied file is missing, unreadable or unfit for the job.

    The message always names the file, so that a batch log or a QGIS dialog tells the user which
    of their inputs to fix.
    """

    def __init__(self, path: str | None, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class ModelError(InputError):
    """An ONNX model is missing, corrupt, or breaks the contract in docs/model-format.md."""


class OutputError(SwimdiffError):
    """An output cannot be written (exists without overwrite, no permission, disk full)."""


class CancelledError(SwimdiffError):
    """The caller asked the engine to stop (QGIS cancel button); partial outputs were removed."""
