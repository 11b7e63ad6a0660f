"""Baseline attribution methods to put beside the datamodels (arrays in, arrays out).

- ``trak``: TRAK (Park et al. 2023) through MadryLab's ``traker`` package (the optional
  ``[baselines]`` extra), on K models of the run's own architecture and training
  settings, each trained on the whole training set; ``trak_curve`` scores it from the
  first k of them for each count k, a curve over its model count.
- ``input_similarity``: a floor that trains nothing: the cosine similarity of each
  training example to each target in the (standardised) feature space, counted positive
  when their labels agree and negative when they differ.

Each returns scores float32 [n, T] (``scores[i, t]``: training example i's attribution
to target t), which the evaluate stage's ``score_attribution`` scores like the datamodels.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from dmflow.attribution import MISSING_TRAKER, trak_counts, traker_installed
from dmflow.core.progress import Progress
from dmflow.core.seeds import baseline_seeds
from dmflow.training.models import VECTOR_ARCHITECTURES, build_stacked_model
from dmflow.training.settings import TrainSettings
from dmflow.training.train import train_stack

log = logging.getLogger(__name__)

TRAK_MAX_PROJ_DIM = 2048
"""traker's default projection dimension, the most ``auto`` chooses."""


def resolve_proj_dim(setting: int | str, *, n: int, num_params: int) -> int:
    """TRAK's projection dimension: ``setting`` itself, or for ``"auto"`` the largest power of two
    at most n / 4, within [8, 2048] and at most the model's parameter count.

    TRAK's kernel is the k x k matrix Phi^T Phi of the projected gradients of n training
    examples: with k >= n it has rank at most n and is singular (the scores turn to noise).
    k well below n keeps it well conditioned; on the default (n = 1000) ``auto`` gives 128
    (docs/configuration.md, ``baselines.trak_proj_dim``, says what was measured).
    """
    if setting != "auto":
        return int(setting)
    k = 2 ** int(np.floor(np.log2(max(n / 4, 8))))
    return int(max(8, min(k, TRAK_MAX_PROJ_DIM, num_params)))


def input_similarity(
    x_train: np.ndarray, y_train: np.ndarray, *, x_target: np.ndarray, y_target: np.ndarray
) -> np.ndarray:
    """float32 [n, T]: cosine similarity of each training example to each target in feature space,
    signed by label agreement (+ same label, - different label).

    Parameters
    ----------
    x_train : float [n, ...]
        Training features (any shape past the first axis; flattened).
    y_train : int [n]
    x_target : float [T, ...]
    y_target : int [T]
    """
    a = np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
    b = np.asarray(x_target, dtype=np.float64).reshape(len(x_target), -1)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    sign = np.where(np.asarray(y_train)[:, None] == np.asarray(y_target)[None, :], 1.0, -1.0)
    return (a @ b.T * sign).astype(np.float32)


class SingleModel(nn.Module):
    """One model of a stack of one as a plain classifier: x [B, ...] -> logits [B, classes] (what traker takes)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.unsqueeze(0)).squeeze(0)


def _inputs(data: dict[str, np.ndarray], arch: str) -> tuple[np.ndarray, np.ndarray]:
    x_train, x_target = data["X_train"], data["X_target"]
    if arch not in VECTOR_ARCHITECTURES and x_train.ndim == 3:
        x_train, x_target = x_train[:, None], x_target[:, None]
    return x_train, x_target


def full_data_models(
    data: dict[str, np.ndarray], seeds: Sequence[int], *, settings: TrainSettings, progress: Progress | None = None
) -> list[dict[str, torch.Tensor]]:
    """Train K = len(seeds) models on every training example; one state dict of a ``SingleModel`` each
    (``progress``: advanced by the models trained, 0 to K).

    MLPs and logistic regressions train as one stack of K (their stacked weights are
    sliced per model); other architectures as K stacks of one.
    """
    n = data["X_train"].shape[0]
    everything = np.arange(n)[None]
    seeds = np.asarray(seeds, dtype=np.int64)
    if settings.arch in VECTOR_ARCHITECTURES:
        stacked = train_stack(
            data, np.repeat(everything, len(seeds), 0), seeds, settings=settings, keep_state=True, progress=progress
        )
        states = [{k: v[i : i + 1] for k, v in stacked.state.items()} for i in range(len(seeds))]
    else:
        states = [
            train_stack(
                data, everything, seeds[i : i + 1], settings=settings, keep_state=True, progress=progress, done_before=i
            ).state
            for i in range(len(seeds))
        ]
    return [{f"net.{k}": v for k, v in state.items()} for state in states]


def _single_model(data: dict[str, np.ndarray], settings: TrainSettings, seed: int) -> SingleModel:
    x_train, _ = _inputs(data, settings.arch)
    net = build_stacked_model(
        settings.arch,
        [int(seed)],
        x_train.shape[1:],
        num_classes=int(data["num_classes"]),
        hidden=settings.hidden,
        width=settings.width,
        stacking=settings.stacking,
    )
    return SingleModel(net)


def trak_curve(
    data: dict[str, np.ndarray],
    *,
    settings: TrainSettings,
    counts: int | Sequence[int],
    proj_dim: int | str = "auto",
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 200,
    progress: Progress | None = None,
) -> tuple[list[np.ndarray], dict]:
    """TRAK as a curve over its model count: scores float32 [n, T] for each count k of ``counts``,
    from the first k of K = max(counts) full-data models of the run's architecture.

    The K models train once, with dmflow's own code and ``settings`` (on ``settings.device``);
    traker featurises the training examples and the targets with each of them on ``device``
    (its margin output function for classification, float32), and each point is traker's
    ``finalize_scores`` over model ids 0..k-1: exactly the scores of a TRAKer given only those k
    checkpoints (each checkpoint's features and projection are its own; the seeds are nested,
    ``baseline_seeds``), so the points form one curve. traker picks its projector:
    ``BasicProjector`` (normal) on the CPU, ``CudaProjector`` (Rademacher) on CUDA when
    ``fast_jl`` is installed (``traker[fast]``), else ``BasicProjector``.

    Parameters
    ----------
    data : dict
        The arrays of ``data.npz`` (``X_train`` [n, ...], ``y_train`` [n], ``X_target`` [T, ...],
        ``y_target`` [T], ``num_classes``).
    settings : TrainSettings
        The run's model and training settings.
    counts : int or list of int
        The model counts (``dmflow.attribution.trak_counts``: an integer K, or a strictly increasing list).
    proj_dim : int or "auto"
        The projection dimension (``resolve_proj_dim``).
    seed : int
        The run's seed; the models' seeds derive from it (``dmflow.core.seeds.baseline_seeds``).
    device : str
        ``cpu`` or ``cuda``, where traker computes.
    batch_size : int
        Examples per per-sample-gradient batch.
    progress : Progress, optional
        Counted in model passes, 3 K in all: training, featurising and scoring each model is one.

    Returns
    -------
    scores : list of float32 [n, T]
        One per count, in the order of ``counts``.
    info : dict
        ``models`` (K), ``counts``, ``point_seconds`` (float [P]: each point's share of the training,
        k / K of it as for the datamodels' learning curve, plus traker's set-up, its work on the first
        k models and that point's ``finalize_scores``), ``proj_dim``, ``projector``, ``num_params`` and
        the wall-seconds ``train_seconds`` and ``trak_seconds`` (featurising and scoring, every point).
    """
    if not traker_installed():
        raise RuntimeError(MISSING_TRAKER)
    from trak import TRAKer  # the optional [baselines] extra: imported only when TRAK runs

    counts = trak_counts(counts)
    models = counts[-1]
    start = time.perf_counter()
    seeds = baseline_seeds(seed, models)
    states = full_data_models(data, seeds, settings=replace(settings, stack_size=max(models, 1)), progress=progress)
    trained = time.perf_counter()
    x_train, x_target = _inputs(data, settings.arch)
    n, num_targets = len(x_train), len(x_target)
    model = _single_model(data, settings, seeds[0]).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    k = resolve_proj_dim(proj_dim, n=n, num_params=num_params)
    xs = torch.as_tensor(x_train, dtype=torch.float32)
    ys = torch.as_tensor(data["y_train"], dtype=torch.long)
    xt = torch.as_tensor(x_target, dtype=torch.float32)
    yt = torch.as_tensor(data["y_target"], dtype=torch.long)
    for name in ("TRAK", "STORE"):
        logging.getLogger(name).setLevel(logging.WARNING)
    per_model = np.zeros(models)  # traker's wall-seconds on each checkpoint: featurise, finalise (a 1/K share), score
    curve, finalize = [], []
    with tempfile.TemporaryDirectory(prefix="dmflow-trak-") as save_dir:
        traker = TRAKer(
            model=model,
            task="image_classification",
            train_set_size=n,
            save_dir=save_dir,
            device=device,
            proj_dim=k,
            use_half_precision=False,
            logging_level=logging.WARNING,
        )
        projector = type(traker.projector).__name__
        set_up = time.perf_counter() - trained
        for model_id, state in enumerate(states):
            tick = time.perf_counter()
            traker.load_checkpoint(state, model_id=model_id)
            for s in range(0, n, batch_size):
                batch = (xs[s : s + batch_size].to(device), ys[s : s + batch_size].to(device))
                traker.featurize(batch=batch, num_samples=len(batch[1]))
            per_model[model_id] += time.perf_counter() - tick
            if progress is not None:
                progress.update(models + model_id + 1)
        tick = time.perf_counter()
        traker.finalize_features()  # one call: each call frees the projector's matrix, a second one fails
        per_model += (time.perf_counter() - tick) / models  # the same work per checkpoint
        projector_ = traker.projector
        if getattr(projector_, "proj_matrix_available", True) is False and getattr(projector_, "num_blocks", 0) == 1:
            # traker 0.3.2 frees a one-block BasicProjector's matrix here and remakes it only when
            # the model id changes, which it never does with one model: remake it for scoring
            projector_.generate_sketch_matrix(projector_.generator_states[0])
        for model_id, state in enumerate(states):
            tick = time.perf_counter()
            traker.start_scoring_checkpoint(
                exp_name="targets", checkpoint=state, model_id=model_id, num_targets=num_targets
            )
            for s in range(0, num_targets, batch_size):
                batch = (xt[s : s + batch_size].to(device), yt[s : s + batch_size].to(device))
                traker.score(batch=batch, num_samples=len(batch[1]))
            per_model[model_id] += time.perf_counter() - tick
            if progress is not None:
                progress.update(2 * models + model_id + 1)
        for count in counts:
            tick = time.perf_counter()
            curve.append(np.array(traker.finalize_scores(exp_name="targets", model_ids=range(count)), dtype=np.float32))
            finalize.append(time.perf_counter() - tick)
    done = time.perf_counter()
    train_seconds = trained - start
    info = {
        "models": int(models),
        "counts": counts,
        "point_seconds": [
            float(train_seconds * c / models + set_up + per_model[:c].sum() + f) for c, f in zip(counts, finalize)
        ],
        "proj_dim": k,
        "projector": projector,
        "num_params": int(num_params),
        "train_seconds": train_seconds,
        "trak_seconds": done - trained,
    }
    return curve, info


def trak_scores(
    data: dict[str, np.ndarray],
    *,
    settings: TrainSettings,
    models: int,
    proj_dim: int | str = "auto",
    seed: int = 0,
    device: str = "cpu",
    batch_size: int = 200,
) -> tuple[np.ndarray, dict]:
    """TRAK scores float32 [n, T] from ``models`` full-data models of the run's architecture: the one
    point of ``trak_curve`` with ``counts=[models]`` (its parameters and ``info``)."""
    curve, info = trak_curve(
        data, settings=settings, counts=int(models), proj_dim=proj_dim, seed=seed, device=device, batch_size=batch_size
    )
    return curve[0], info
