"""Minibatches for a stacked ensemble: each model its own subset and its own order.

Data handling lives here, apart from the network: the dataloader yields only the
index batch [K, B] (tiny, cheap to move), and the features are gathered on the
device after transfer, so the training set is copied to a GPU once, not per step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from dmflow.data.augment import AugmentSettings, apply, draw_params


def epoch_orders(subsets: np.ndarray, seeds: Sequence[int], epochs: int) -> np.ndarray:
    """Training-example indices in visiting order, [epochs, K, k].

    Model i shuffles its own subset ``subsets[i]`` every epoch with a generator
    seeded by ``seeds[i]`` alone, so its batches do not depend on its stack-mates.
    (Epoch e's order is the e-th ``permutation`` of that generator, drawn for all
    epochs in one ``permuted`` call.)
    """
    k_models, size = subsets.shape
    orders = np.empty((epochs, k_models, size), dtype=np.int64)
    positions = np.broadcast_to(np.arange(size), (epochs, size))
    for i, seed in enumerate(seeds):
        orders[:, i] = subsets[i][np.random.default_rng(int(seed)).permuted(positions, axis=1)]
    return orders


class _EpochBatches(IterableDataset):
    """Yields the index batches of one epoch per iteration, epoch after epoch.

    With augmentation on, a batch is (indices [K, B], augmentation draws [K, B, 5]),
    the draws made from each model's seed and the epoch.
    """

    def __init__(
        self,
        orders: np.ndarray,
        batch_size: int,
        seeds: Sequence[int] = (),
        augment: AugmentSettings = AugmentSettings(),
        image_hw: tuple[int, int] = (0, 0),
    ) -> None:
        super().__init__()
        self.orders = torch.from_numpy(orders)
        self.batch_size = batch_size
        self.seeds = list(seeds)
        self.augment = augment
        self.image_hw = image_hw
        self.epoch = 0

    def __len__(self) -> int:
        return -(-self.orders.shape[2] // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch = min(self.epoch, self.orders.shape[0] - 1)
        order = self.orders[epoch]
        self.epoch += 1
        params = None
        if self.augment.enabled:
            size = order.shape[1]
            params = torch.from_numpy(
                np.stack(
                    [
                        draw_params(
                            seed, epoch, size, height=self.image_hw[0], width=self.image_hw[1], aug=self.augment
                        )
                        for seed in self.seeds
                    ]
                )
            )
        for start in range(0, order.shape[1], self.batch_size):
            batch = order[:, start : start + self.batch_size]
            yield batch if params is None else (batch, params[:, start : start + self.batch_size])


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[idx] for an index tensor of any shape, as one index_select on the flat index
    (on the CPU much faster than advanced indexing)."""
    return x.index_select(0, idx.reshape(-1)).view(*idx.shape, *x.shape[1:])


class StackedSubsetDataModule(pl.LightningDataModule):
    """Serves (x [K, B, ...], y [K, B]) batches for K models trained on K subsets."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        subsets: np.ndarray,
        *,
        seeds: Sequence[int],
        batch_size: int,
        epochs: int,
        augment: AugmentSettings = AugmentSettings(),
    ) -> None:
        super().__init__()
        self.x = x
        self.y = y
        self.batch_size = batch_size
        self.seeds = list(seeds)
        self.augment = augment
        self.orders = epoch_orders(subsets, seeds, epochs)

    def train_dataloader(self) -> DataLoader:
        hw = tuple(self.x.shape[-2:]) if self.x.dim() == 4 else (0, 0)
        return DataLoader(_EpochBatches(self.orders, self.batch_size, self.seeds, self.augment, hw), batch_size=None)

    def on_after_batch_transfer(self, batch, dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather the features on the batch's device (the data moves there once), then augment."""
        idx, params = batch if isinstance(batch, (tuple, list)) else (batch, None)
        if self.x.device != idx.device:
            self.x, self.y = self.x.to(idx.device), self.y.to(idx.device)
        x = gather_rows(self.x, idx)
        if params is not None:
            k, b = idx.shape
            x = apply(x.reshape(k * b, *x.shape[2:]), params.reshape(k * b, -1), self.augment).reshape(x.shape)
        return x, self.y[idx]
