"""What a lasso fit is asked to do: its settings (the config's ``fit`` section) and the split of a store's rows
into fit and validation rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dmflow.core.device import resolve_device
from dmflow.core.schema import defaults
from dmflow.core.seeds import PURPOSE_VALIDATION_ROWS, alpha_key

_FIT = defaults("fit")


@dataclass(frozen=True)
class FitSettings:
    """What a fit needs of the config's ``fit`` section (keys as in docs/configuration.md).

    ``targets_per_job`` and ``threads`` decide how the work is cut, not the result, and are not here.
    """

    solver: str = _FIT["solver"]
    val_fraction: float = _FIT["val_fraction"]
    num_lambdas: int = _FIT["num_lambdas"]
    lambda_min_ratio: float = _FIT["lambda_min_ratio"]
    tol: float = _FIT["tol"]
    max_iter: int = _FIT["max_iter"]
    dtype: str = _FIT["dtype"]
    nonneg: bool = _FIT["nonneg"]
    l2: float = _FIT["l2"]
    cvxpy_solver: str = _FIT["cvxpy_solver"]
    device: str = _FIT["device"]
    patience: int = _FIT["patience"]

    @classmethod
    def from_config(cls, fit: dict) -> FitSettings:
        """From the config section (validated or partial: missing keys take the schema's defaults)."""
        return cls(**{k: fit[k] for k in cls.__dataclass_fields__ if k in fit})

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32

    @property
    def torch_device(self) -> str:
        return resolve_device(self.device, "fit.device")


def split_validation_rows(
    rows: np.ndarray, val_fraction: float, *, seed: int, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministically divide ``rows`` into (fit rows, validation rows), both sorted int64.

    ``round(val_fraction * len(rows))`` rows (at least one) are drawn for validation
    from the seed key (seed, alpha, ``PURPOSE_VALIDATION_ROWS``).
    """
    rng = np.random.default_rng(np.random.SeedSequence((seed, alpha_key(alpha), PURPOSE_VALIDATION_ROWS)))
    order = rng.permutation(len(rows))
    n_val = max(1, int(round(val_fraction * len(rows))))
    return np.sort(rows[order[n_val:]]), np.sort(rows[order[:n_val]])
