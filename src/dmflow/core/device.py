"""The compute device of a config's ``device: auto | cpu | cuda`` keys (train and fit)."""

from __future__ import annotations


class DeviceError(ValueError):
    """A device the config asks for that this machine lacks; the message is one line."""


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
    DeviceError
        ``cuda`` asked for where torch finds no CUDA device.
    """
    import torch  # heavy: loaded by the jobs that resolve a device, not by everything that imports core

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{key}='cuda' but torch finds no CUDA device on this machine; use 'auto' or 'cpu'")
    return setting
