"""The errors dmflow raises for files and data it cannot use, and its one warning: one definition each.

Every message is one line naming the file or value and what is allowed or what rebuilds it; the CLI
prints it without a traceback. ``dmflow.config.ConfigError`` (a config value) is the other one.
"""

from __future__ import annotations


class FileError(ValueError):
    """A file dmflow wrote that cannot be read back or trusted (missing, truncated, corrupt, edited, from an
    older dmflow); the message is one line naming the file and what rebuilds it."""


class StoreError(ValueError):
    """A chunk, store, moments or datamodels file that fails validation; the message names the file and the problem."""


class DataError(ValueError):
    """A dataset file or setting that cannot be used; the message is one line."""


class DataWarning(UserWarning):
    """Data that can be used but deserves a look (e.g. target classes the training set lacks)."""
