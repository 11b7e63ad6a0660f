"""The compute device of a config's ``device: auto | cpu | cuda`` keys (train and fit)."""

from __future__ import annotations

import torch


def resolve_device(setting: str, key: str) -> str:
    """``auto`` means CUDA when torch sees a GPU, else the CPU.

    Parameters
    ----------
    setting : {"auto", "cpu", "cuda"}
        The config value.
    key : str
        The config key it came from (``train.device``), named in the error.

    Raises
    ------
    RuntimeError
        ``cuda`` asked for where torch finds no CUDA device.
    """
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key}='cuda' but torch finds no CUDA device; use 'auto' or 'cpu'")
    return setting
