"""Errors that reach a user as one clear sentence (the CLI prints them without a stack trace).

Every error that bad input can cause (a wrong name, path, file, option or data) derives from
:class:`ResnetTuneError`; errors that mean a bug in the calling code (a wrong argument type, say) stay
ordinary Python exceptions and keep their traceback.
"""

from __future__ import annotations


class ResnetTuneError(Exception):
    """Base class: ``str(err)`` is a complete sentence saying what is wrong and what to do."""


class DataError(ResnetTuneError, ValueError):
    """The data cannot be used as given (missing folder, empty dataset, unusable files)."""


class ConfigError(ResnetTuneError, ValueError):
    """An option or configuration file is invalid."""


class CheckpointError(ResnetTuneError, ValueError):
    """A checkpoint or weights file cannot be read, or does not match the model or data."""


class PathNotFoundError(ConfigError, FileNotFoundError):
    """A file or folder the user named does not exist (also a :class:`FileNotFoundError`)."""


class TrainingError(ResnetTuneError, RuntimeError):
    """Training cannot go on (for example a non-finite loss)."""


class MissingExtraError(ResnetTuneError, ImportError):
    """An optional dependency (a pip extra) is not installed; the message names the install command."""
