"""``TrainSettings``: the config's ``model`` and ``train`` sections, defaults from the schema."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from dmflow.core.schema import defaults
from dmflow.data.augment import AugmentSettings

_MODEL, _TRAIN = defaults("model"), defaults("train")


@dataclass(frozen=True)
class TrainSettings:
    """What a training job needs of the config (keys as in docs/configuration.md).

    Keys that never change a result (``threads``, ``mem_mb``,
    ``max_diverged_fraction``) are not here.
    """

    arch: str = _MODEL["arch"]
    hidden: tuple[int, ...] = tuple(_MODEL["hidden"])
    width: float = _MODEL["width"]
    stacking: str = _MODEL["stacking"]
    lightning: str | None = _MODEL["lightning"]
    lightning_args: dict = field(default_factory=lambda: dict(_MODEL["lightning_args"]))
    epochs: int = _TRAIN["epochs"]
    batch_size: int = _TRAIN["batch_size"]
    optimizer: str = _TRAIN["optimizer"]
    lr: float = _TRAIN["lr"]
    weight_decay: float = _TRAIN["weight_decay"]
    momentum: float = _TRAIN["momentum"]
    label_smoothing: float = _TRAIN["label_smoothing"]
    lr_schedule: str = _TRAIN["lr_schedule"]
    lr_peak_epoch: float = _TRAIN["lr_peak_epoch"]
    augment: AugmentSettings = AugmentSettings()
    test_time_flip: bool = _TRAIN["test_time_flip"]
    precision: str = _TRAIN["precision"]
    stack_size: int = _TRAIN["stack_size"]
    device: str = _TRAIN["device"]

    @classmethod
    def from_config(cls, model: dict, train: dict) -> TrainSettings:
        """From the two config sections (validated or partial: missing keys take the schema's defaults)."""
        names = {f.name for f in fields(cls)}
        given = {k: v for section in (model, train) for k, v in section.items() if k in names}
        if "hidden" in given:
            given["hidden"] = tuple(given["hidden"])
        if "augment" in given:
            given["augment"] = AugmentSettings(**given["augment"])
        return cls(**given)
