"""The errors and warnings of the dataset sources (``dmflow.data.sources`` re-exports them)."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset file or setting that cannot be used; the message is one line."""


class DataWarning(UserWarning):
    """Data that can be used but deserves a look (e.g. target classes the training set lacks)."""
