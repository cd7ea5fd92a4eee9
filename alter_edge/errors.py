"""Typed errors. Each carries one line that says what is wrong and what is allowed."""

from __future__ import annotations


class AlterEdgeError(Exception):
    """Base class: the CLI turns these into one clear line, not a traceback."""


class DataError(AlterEdgeError, ValueError):
    """A data file or row is malformed."""


class TaskError(AlterEdgeError, ValueError):
    """An unknown task name or id, or a task registry that does not hold together."""


class ConfigError(AlterEdgeError, ValueError):
    """A configuration value outside what is allowed."""


class ModelNotFoundError(AlterEdgeError, FileNotFoundError):
    """A base model that cannot be resolved."""


class CheckpointError(AlterEdgeError, ValueError):
    """A checkpoint directory that is missing, incomplete or mismatched."""


class BundleError(AlterEdgeError, ValueError):
    """A bundle directory that is missing, corrupt, tampered with or mismatched."""


class OutputError(AlterEdgeError, OSError):
    """An output location that cannot be written (read-only, full, or the input itself)."""
