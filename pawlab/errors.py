"""User-facing errors.

Every error a user can cause by what they pass (a path, a field, a layer list) is a
`PawlabError`: the CLI prints its message as one line, with no traceback, and exits with the
error's ``exit_code``: 2 for usage and configuration errors (a flag, a config field, a network
description), 1 for what was found while working (data, model files, workers, a diverging
run). Anything else escaping is a bug in pawlab.

What is usable but doubtful is a warning: `SmallImageWarning`.
"""

from __future__ import annotations


class PawlabError(Exception):
    """Base of all user-facing errors; the message is one line that names the file or field."""

    exit_code = 1


class ConfigError(PawlabError):
    """A configuration value (CLI flag, config field) is invalid."""

    exit_code = 2


class ArchitectureError(PawlabError):
    """A network description is invalid: unknown layer, bad parameter, shapes that do not fit."""

    exit_code = 2


class DataError(PawlabError):
    """A data source is missing, empty, or unusable (e.g. one class only)."""


class ModelFileError(PawlabError):
    """A model file is missing, unreadable, or not a pawlab model."""


class WorkerError(PawlabError):
    """A worker process died: killed, out of memory, or a script without ``if __name__ ==
    "__main__":`` (workers run the script again as they start)."""


class OutputError(PawlabError):
    """An output path cannot be written: a folder where a file is wanted, a read-only place."""


class AgreementError(PawlabError):
    """A faster or exported form of a model does not agree with its fp32 answers within the
    stated tolerances (`pawlab.export.check.TOLERANCES`); the message gives the figures."""


class TrainingDiverged(PawlabError):
    """The training loss became NaN or infinite."""


class SmallImageWarning(UserWarning):
    """An image is far smaller than the model's input (upscaled more than 4x along a side to
    reach it), so its prediction may mean little; the `Prediction`'s ``notes`` say so too."""
