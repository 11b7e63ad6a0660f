"""A user's own LightningModule: ``model.lightning: "package.module:Class"``.

The contract (docs/images.md): the class is a ``pytorch_lightning.LightningModule``,
built as ``Class(input_shape=..., num_classes=..., **model.lightning_args)``, whose
``forward(x [B, *input_shape])`` returns logits [B, num_classes], whose
``training_step((x, y), batch_idx)`` returns the loss (or a dict holding it under
``"loss"``), and whose ``configure_optimizers`` returns what Lightning accepts.

dmflow owns the rest, as for its own models: each model's subset, batches, augmentations
and seed (model i is built, and trained, with the global torch seed set to ``seeds[i]``
alone, so its result does not depend on its stack-mates), the Trainer, and the margins
(``dmflow.training.module.margins_from_logits`` of the module's ``forward`` logits in
eval mode, through ``dmflow.training.predict.predict_stack``); ``train_user_stack`` trains a stack of them.

K models train one after another (one ``Trainer.fit`` each), or stacked: their parameters
stacked [K, ...] and the module's own ``training_step`` mapped over them with
``torch.func.vmap``, in one ``Trainer.fit``. ``user_stacking`` is the one place that
chooses; it stacks only what trains exactly as the models alone would.
"""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from dmflow.core.device import resolve_device
from dmflow.data.augment import AugmentSettings
from dmflow.data.batches import StackedSubsetDataModule, gather_rows
from dmflow.training.factory import LIGHTNING_KEY as KEY
from dmflow.training.factory import build_user_module, load_lightning_class
from dmflow.training.predict import StackResult, predict_stack
from dmflow.training.settings import TrainSettings
from dmflow.training.stacking import LoopStack
from dmflow.training.trainer import make_trainer

log = logging.getLogger(__name__)

ELEMENTWISE_OPTIMIZERS = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
)
"""Optimisers whose update of a parameter element depends on that element alone: one over K
stacked models updates each exactly as one over that model alone."""
PROBE_RTOL = 1e-5
"""How close the stacked probe's losses must be to the models' own (float rounding only)."""


def build_seeded_modules(
    cls: type, seeds: Sequence[int], input_shape: Sequence[int], *, num_classes: int, args: dict
) -> list[pl.LightningModule]:
    """K modules, module i built with the global torch seed ``seeds[i]`` (the global RNG forked, not disturbed).

    Parameters
    ----------
    cls : type
        From ``load_lightning_class``.
    seeds : sequence of int, length K
    input_shape : sequence of int
        One example's shape: ``(d,)`` or ``(C, H, W)``.
    num_classes : int
    args : dict
        ``model.lightning_args``.

    Returns
    -------
    list of LightningModule
        K modules, in the default dtype's parameters as the class builds them.
    """
    modules = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            modules.append(build_user_module(cls, input_shape, num_classes=num_classes, args=args))
    return modules


def step_loss(output: Any) -> torch.Tensor:
    """The loss a ``training_step`` returned: a tensor, or a dict's ``"loss"``."""
    if isinstance(output, dict):
        output = output.get("loss")
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"{KEY}: training_step must return the loss tensor (or a dict with 'loss'), not {output!r}")
    return output


class OneModelData(StackedSubsetDataModule):
    """``StackedSubsetDataModule`` for one model: batches (x [B, ...], y [B]), as a user's ``training_step`` takes."""

    def on_after_batch_transfer(self, batch, dataloader_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().on_after_batch_transfer(batch, dataloader_idx)
        return x[0], y[0]


class FiniteLoss(pl.Callback):
    """Records whether every training step's loss stayed finite (``finite``), for one module trained alone."""

    def __init__(self) -> None:
        self.finite = True

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            self.finite = False


class _TrainingStep(nn.Module):
    """``module.training_step`` as a forward, so that ``torch.func.functional_call`` can swap its parameters."""

    def __init__(self, module: pl.LightningModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, y: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return step_loss(self.module.training_step((x, y), batch_idx))


def _single_optimizer(module: pl.LightningModule) -> torch.optim.Optimizer | None:
    """The module's optimiser when ``configure_optimizers`` gives one elementwise optimiser with one group
    holding all its parameters, and no scheduler; else None."""
    try:
        out = module.configure_optimizers()
    except Exception:  # e.g. it reads self.trainer: it needs the Trainer, so it trains alone
        return None
    if isinstance(out, (list, tuple)) and len(out) == 1:
        out = out[0]
    if not isinstance(out, ELEMENTWISE_OPTIMIZERS) or len(out.param_groups) != 1:
        return None
    if {id(p) for p in out.param_groups[0]["params"]} != {id(p) for p in module.parameters()}:
        return None
    return out


class VmappedModules(pl.LightningModule):
    """K copies of a user module as one: parameters stacked [K, ...], its ``training_step`` vmapped over them.

    A batch is (x [K, B, ...], y [K, B]); the loss is the sum of the K models' losses, so
    each model's gradient is its own, and the module's optimiser (elementwise, same
    hyperparameters) rebuilt over the stacked parameters updates each model exactly as
    alone. ``finite`` [K] records whether each model's loss stayed finite.
    """

    def __init__(self, modules: Sequence[pl.LightningModule]) -> None:
        super().__init__()
        optimizer = _single_optimizer(modules[0])
        if optimizer is None:
            raise ValueError(f"{KEY}: its configure_optimizers does not give one elementwise optimiser; train it alone")
        self.names = [name for name, _ in modules[0].named_parameters()]
        self.stacked = nn.ParameterList(
            [nn.Parameter(torch.stack([m.get_parameter(n).detach() for m in modules]).clone()) for n in self.names]
        )
        self.optimizer_class = type(optimizer)
        # the group's options that the constructor takes (AdamW's group also holds decoupled_weight_decay,
        # which its constructor sets itself)
        accepted = inspect.signature(self.optimizer_class.__init__).parameters
        self.optimizer_options = {k: v for k, v in optimizer.param_groups[0].items() if k in accepted and k != "params"}
        # the template is not a submodule: its own parameters are never trained or moved
        self._template = [_TrainingStep(copy.deepcopy(modules[0]))]
        self.register_buffer("finite", torch.ones(len(modules), dtype=torch.bool))

    def losses(self, x: torch.Tensor, y: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Each model's loss on its own batch, [K]."""
        step = self._template[0]

        def one(params: tuple[torch.Tensor, ...], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            named = {f"module.{n}": p for n, p in zip(self.names, params)}
            return torch.func.functional_call(step, named, (xi, yi, batch_idx))

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*`self.trainer` reference is not registered.*")
            return torch.func.vmap(one, randomness="error")(tuple(self.stacked), x, y)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        per_model = self.losses(x, y, batch_idx)
        self.finite &= torch.isfinite(per_model.detach())
        return per_model.sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_class(self.parameters(), **self.optimizer_options)

    def unstack(self, modules: Sequence[pl.LightningModule]) -> None:
        """Copy model i's trained parameters into ``modules[i]``."""
        with torch.no_grad():
            for name, stacked in zip(self.names, self.stacked):
                for i, module in enumerate(modules):
                    module.get_parameter(name).copy_(stacked[i])


def user_stacking(
    modules: Sequence[pl.LightningModule], stacking: str, *, probe: tuple[torch.Tensor, torch.Tensor]
) -> tuple[str, str]:
    """``("vmap", why)`` where the K modules can train stacked exactly as alone, else ``("loop", why)``.

    Stacked needs: ``stacking`` ``auto`` and K > 1; no buffers (a batch norm's running
    statistics would be written inside the vmapped step); ``configure_optimizers`` giving
    one elementwise optimiser (``ELEMENTWISE_OPTIMIZERS``) over all parameters, no
    scheduler; and a probe: the vmapped ``training_step`` on ``probe`` (x [K, B, ...],
    y [K, B]), without random draws (vmap refuses them: a module that draws, e.g. dropout,
    trains alone, its draws from its own seed) and without reading a tensor's value
    (``.item()``), giving each model's own loss.

    Parameters
    ----------
    modules : sequence of LightningModule, length K
        From ``build_seeded_modules``.
    stacking : str
        ``model.stacking``: ``auto`` or ``loop``.
    probe : (x [K, B, ...], y int64 [K, B])
        One batch per model.

    Returns
    -------
    (str, str)
        ``"vmap"`` or ``"loop"``, and why, for the job's log line.
    """
    if stacking == "loop":
        return "loop", "model.stacking is 'loop'"
    if len(modules) < 2:
        return "loop", "one model"
    if any(True for _ in modules[0].buffers()):
        return "loop", "the module has buffers (e.g. batch norm statistics)"
    if _single_optimizer(modules[0]) is None:
        names = ", ".join(cls.__name__ for cls in ELEMENTWISE_OPTIMIZERS)
        return "loop", f"configure_optimizers does not give one optimiser of {names} (one group, no scheduler)"
    x, y = probe
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*`self.trainer` reference is not registered.*")
            stacked = VmappedModules(modules).losses(x, y, 0).detach()
            alone = torch.stack([_TrainingStep(m)(x[i], y[i], 0).detach() for i, m in enumerate(modules)])
    except Exception as exc:  # the module's step is not vmappable
        return "loop", f"its training_step does not run under torch.func.vmap ({type(exc).__name__}: {exc})"
    if stacked.shape != alone.shape or not torch.allclose(stacked, alone, rtol=PROBE_RTOL, atol=0):
        return "loop", "its vmapped training_step gives other losses than the models alone"
    return "vmap", "its training_step runs under torch.func.vmap"


def train_user_stack(
    data: dict[str, np.ndarray],
    subsets: np.ndarray,
    seeds: np.ndarray,
    *,
    settings: TrainSettings,
) -> StackResult:
    """``train_stack`` for a user's LightningModule (``settings.lightning``, ``dmflow.training.user_module``).

    Model i is built and trained with the global torch seed ``seeds[i]`` on ``subsets[i]``,
    in its own batch order and augmentations: all K in one ``Trainer.fit`` where
    ``user_stacking`` finds them stackable, else one ``Trainer.fit`` each (one log line
    says which and why). Margins and accuracies come from each module's ``forward`` in eval
    mode through ``predict_stack``, as for dmflow's own models.

    Parameters
    ----------
    data : dict
        The arrays of ``data.npz``.
    subsets : int [K, k]
        Training-example indices of each model.
    seeds : int64 [K]
        Each model's seed.
    settings : TrainSettings
    """
    device = resolve_device(settings.device, "train.device")
    x_train, y_train, x_target, y_target = data["X_train"], data["y_train"], data["X_target"], data["y_target"]
    if x_train.ndim == 3:  # greyscale images [N, H, W] get their channel axis, as for the conv nets
        x_train, x_target = x_train[:, None], x_target[:, None]
    cls = load_lightning_class(settings.lightning)
    modules = build_seeded_modules(
        cls, seeds, x_train.shape[1:], num_classes=int(data["num_classes"]), args=dict(settings.lightning_args)
    )
    modules = [m.to(torch.get_default_dtype()) for m in modules]
    x = torch.as_tensor(x_train, dtype=torch.get_default_dtype())
    y = torch.as_tensor(y_train, dtype=torch.long)
    augment = settings.augment if x_train.ndim == 4 else AugmentSettings()
    batching = {"batch_size": settings.batch_size, "epochs": settings.epochs, "augment": augment}
    first = torch.as_tensor(subsets[:, : settings.batch_size])
    how, why = user_stacking(modules, settings.stacking, probe=(gather_rows(x, first), y[first]))
    log.info(
        "%s: %d models %s: %s", settings.lightning, len(modules), "stacked" if how == "vmap" else "one by one", why
    )
    torch.utils.deterministic.fill_uninitialized_memory = False
    if how == "vmap":
        stack = VmappedModules(modules)
        make_trainer(settings, device).fit(
            stack, datamodule=StackedSubsetDataModule(x, y, subsets, seeds=seeds, **batching)
        )
        stack.unstack(modules)
        finite = stack.finite.cpu().numpy()
    else:
        finite = np.ones(len(modules), dtype=bool)
        for i, module in enumerate(modules):
            batches = OneModelData(x, y, subsets[i : i + 1], seeds=seeds[i : i + 1], **batching)
            check = FiniteLoss()
            trainer = make_trainer(settings, device, callbacks=[check])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seeds[i]))
                trainer.fit(module, datamodule=batches)
            finite[i] = check.finite
    net = LoopStack([m.eval() for m in modules]).to(device)
    margins, acc_target, acc_subset = predict_stack(
        net,
        x,
        y,
        x_target=x_target,
        y_target=y_target,
        subsets=subsets,
        batch_size=settings.batch_size,
        flip=settings.test_time_flip and x_train.ndim == 4,
    )
    return StackResult(margins, acc_target, acc_subset, finite)
