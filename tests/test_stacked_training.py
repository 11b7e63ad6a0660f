"""The stacked ensemble is exactly K independent trainings, and margins follow DESIGN."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from dmflow.core import kernels as dispatch
from dmflow.core.codes import STATUS_DIVERGED, STATUS_OK
from dmflow.core.schema import defaults
from dmflow.core.seeds import chunk_seeds
from dmflow.data.augment import AugmentSettings
from dmflow.data.batches import epoch_orders
from dmflow.data.cifar10 import synthetic_images
from dmflow.store.masks import chunk_masks
from dmflow.training import trainer
from dmflow.training.convnets import build_seeded
from dmflow.training.fused import FusedConvStack
from dmflow.training.mlp import StackedMLP
from dmflow.training.models import build_stacked_model
from dmflow.training.module import margins_from_logits
from dmflow.training.settings import TrainSettings
from dmflow.training.stacking import GroupedStack, LoopStack, stack_models
from dmflow.training.train import train_chunk, train_stack


def _train_alone(x, y, subset, seed, init_layers, settings):
    """Plain PyTorch: one nn.Sequential, the same init and batch order, a textbook loop."""
    torch.manual_seed(0)
    layers = []
    for i, (w, b) in enumerate(init_layers):
        lin = nn.Linear(w.shape[0], w.shape[1]).double()
        with torch.no_grad():
            lin.weight.copy_(w.T)
            lin.bias.copy_(b)
        layers.append(lin)
        if i < len(init_layers) - 1:
            layers.append(nn.ReLU())
    net = nn.Sequential(nn.Flatten(), *layers)
    if settings.optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    else:
        opt = torch.optim.SGD(
            net.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
    orders = epoch_orders(subset[None], [seed], settings.epochs)[:, 0]
    xt, yt = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y)
    for order in orders:
        for start in range(0, len(order), settings.batch_size):
            idx = torch.as_tensor(order[start : start + settings.batch_size])
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_stack_equals_independent_trainings(tiny_data, optimizer):
    torch.set_default_dtype(torch.float64)
    try:
        settings = TrainSettings(
            arch="mlp",
            hidden=(12,),
            epochs=3,
            batch_size=16,
            optimizer=optimizer,
            lr=0.05,
            weight_decay=1e-3,
            momentum=0.9,
            stack_size=4,
            device="cpu",
        )
        masks = chunk_masks(len(tiny_data["y_train"]), 0.5, "fit", chunk=0, chunk_size=4, seed=0)
        subsets = np.stack([np.flatnonzero(m) for m in masks])
        seeds = np.array([11, 22, 33, 44])
        x = tiny_data["X_train"].astype(np.float64)
        data = {**tiny_data, "X_train": x, "X_target": tiny_data["X_target"].astype(np.float64)}
        stacked = train_stack(data, subsets, seeds, settings=settings, keep_state=True)
        # initial weights of model i come from seed i alone: rebuild them for the reference
        for i, seed in enumerate(seeds):
            init = build_stacked_model("mlp", [seed], (8, 8), num_classes=10, hidden=(12,))
            init_layers = [(layer.weight[0].detach(), layer.bias[0].detach()) for layer in init.layers]
            ref = _train_alone(x, tiny_data["y_train"], subsets[i], seed, init_layers, settings)
            linears = [m for m in ref if isinstance(m, nn.Linear)]
            for j, lin in enumerate(linears):
                assert torch.allclose(stacked.state[f"layers.{j}.weight"][i], lin.weight.T, atol=1e-10), (
                    i,
                    j,
                    (stacked.state[f"layers.{j}.weight"][i] - lin.weight.T).abs().max(),
                )
                assert torch.allclose(stacked.state[f"layers.{j}.bias"][i], lin.bias, atol=1e-10), (i, j)
            with torch.no_grad():
                logits = ref(torch.as_tensor(tiny_data["X_target"], dtype=torch.float64))
            ref_margins = margins_from_logits(logits, torch.as_tensor(tiny_data["y_target"])).numpy()
            np.testing.assert_allclose(stacked.margins[i], ref_margins, atol=1e-8)
    finally:
        torch.set_default_dtype(torch.float32)


def test_a_model_does_not_depend_on_its_stack_mates(tiny_data):
    settings = TrainSettings(arch="mlp", hidden=(8,), epochs=2, batch_size=20, stack_size=3, device="cpu")
    masks = chunk_masks(len(tiny_data["y_train"]), 0.5, "fit", chunk=0, chunk_size=3, seed=0)
    subsets = np.stack([np.flatnonzero(m) for m in masks])
    three = train_stack(tiny_data, subsets, np.array([5, 6, 7]), settings=settings)
    alone = train_stack(tiny_data, subsets[1:2], np.array([6]), settings=settings)
    np.testing.assert_allclose(three.margins[1], alone.margins[0], rtol=1e-5, atol=1e-5)


def test_margin_is_correct_logit_minus_best_other():
    logits = torch.tensor([[2.0, 5.0, 1.0], [3.0, 3.0, -1.0], [0.0, -2.0, 4.0]])
    labels = torch.tensor([1, 0, 0])
    assert margins_from_logits(logits, labels).tolist() == [3.0, 0.0, -4.0]


def test_chunk_records_every_model_and_replicate(tiny_data):
    settings = TrainSettings(arch="logreg", epochs=2, batch_size=30, stack_size=4, device="cpu")
    masks = chunk_masks(len(tiny_data["y_train"]), 0.5, "eval", chunk=0, chunk_size=3, seed=0)
    seeds = chunk_seeds(0, 0.5, "eval", chunk=0, rows=3, replicates=2)
    out = train_chunk(tiny_data, masks, seeds, settings=settings)
    assert out["margins"].shape == (3, 2, 40) and out["margins"].dtype == np.float32
    assert (out["status"] == STATUS_OK).all()
    assert out["acc_subset"].mean() > out["acc_target"].mean() - 0.2
    assert not np.allclose(out["margins"][:, 0], out["margins"][:, 1])  # replicates use other seeds
    assert len(np.unique(seeds)) == 6


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_diverging_models_are_marked_not_fatal(tiny_data, precision):
    settings = TrainSettings(
        arch="mlp",
        hidden=(8,),
        epochs=3,
        batch_size=20,
        optimizer="sgd",
        lr=1e12,
        momentum=0.0,
        stack_size=2,
        device="cpu",
        precision=precision,
    )
    masks = chunk_masks(len(tiny_data["y_train"]), 0.5, "fit", chunk=0, chunk_size=2, seed=0)
    out = train_chunk(tiny_data, masks, chunk_seeds(0, 0.5, "fit", chunk=0, rows=2, replicates=1), settings=settings)
    assert (out["status"] == STATUS_DIVERGED).all()


def test_precision_auto_is_bf16_only_where_the_hardware_multiplies_bf16_faster(monkeypatch):
    assert trainer.lightning_precision("auto", "cuda") == "bf16-mixed"
    monkeypatch.delenv(dispatch.ENV, raising=False)
    try:
        dispatch.force("train=bf16")  # as where it measured faster (a CPU with AMX)
        assert trainer.lightning_precision("auto", "cpu") == "bf16-mixed"
        dispatch.force("train=float32")
        assert trainer.lightning_precision("auto", "cpu") == "32-true"
        dispatch.force(None)  # measured here: bf16 only where the CPU has bf16 units and they win
        want = "bf16-mixed" if dispatch.capable("bf16") and trainer.bf16_training_pays() else "32-true"
        assert trainer.lightning_precision("auto", "cpu") == want
        assert dispatch.chosen()["train"] in ("float32", "bf16")
    finally:
        dispatch.force(None)
    assert trainer.lightning_precision("32", "cuda") == "32-true"
    assert trainer.lightning_precision("bf16", "cpu") == "bf16-mixed"
    torch.set_default_dtype(torch.float64)
    try:  # the float64 equivalence tests always train in full precision
        assert trainer.lightning_precision("auto", "cuda") == "32-true"
    finally:
        torch.set_default_dtype(torch.float32)


def test_bf16_training_stacks_like_alone_and_records_float32_margins(tiny_data):
    settings = TrainSettings(
        arch="mlp", hidden=(16,), epochs=3, batch_size=20, precision="bf16", stack_size=3, device="cpu"
    )
    masks = chunk_masks(len(tiny_data["y_train"]), 0.5, "fit", chunk=0, chunk_size=3, seed=0)
    subsets = np.stack([np.flatnonzero(m) for m in masks])
    three = train_stack(tiny_data, subsets, np.array([5, 6, 7]), settings=settings, keep_state=True)
    alone = train_stack(tiny_data, subsets[1:2], np.array([6]), settings=settings)
    np.testing.assert_allclose(three.margins[1], alone.margins[0], atol=1e-4)
    # the recorded margins are the float32 forward of the float32 weights, not bf16 logits
    net = build_stacked_model("mlp", [5, 6, 7], (8, 8), num_classes=10, hidden=(16,))
    net.load_state_dict(three.state)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    with torch.no_grad():
        xt = torch.as_tensor(tiny_data["X_target"], dtype=torch.float32)
        logits = net(xt.unsqueeze(0).expand(3, *xt.shape))
    expected = margins_from_logits(logits, torch.as_tensor(tiny_data["y_target"])).numpy()
    np.testing.assert_allclose(three.margins, expected, rtol=1e-6, atol=1e-6)
    rounded = margins_from_logits(logits.bfloat16().float(), torch.as_tensor(tiny_data["y_target"])).numpy()
    assert np.abs(three.margins - rounded).max() > 1e-3  # bf16 logits would have been this far off


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mlp_relu_in_place_gives_torch_relu_gradients(dtype):
    net = StackedMLP(3, 8, 4, hidden=(16, 16))
    net.reset_parameters([1, 2, 3])
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 5, 8, generator=gen), torch.randint(0, 4, (3, 5), generator=gen)

    def grads(forward) -> list[torch.Tensor]:
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            logits = forward(x)
        nn.functional.cross_entropy(logits.float().transpose(1, 2), y).backward()
        return [p.grad.clone() for p in net.parameters()]

    def torch_relu(h):
        for i, layer in enumerate(net.layers):
            h = layer(h)
            h = nn.functional.relu(h) if i < len(net.layers) - 1 else h
        return h

    for mine, ref in zip(grads(net), grads(torch_relu), strict=True):
        assert torch.equal(mine, ref)


def test_train_settings_default_to_the_schema():
    """One source of defaults: TrainSettings() is the config's model and train sections with nothing given."""
    settings, model, training = TrainSettings(), defaults("model"), defaults("train")
    assert settings == TrainSettings.from_config(model, training) == TrainSettings.from_config({}, {})
    assert settings.hidden == tuple(model["hidden"]) and settings.epochs == training["epochs"]
    assert settings.lr == training["lr"] and settings.weight_decay == training["weight_decay"]
    assert settings.augment == AugmentSettings(**training["augment"])


def test_each_model_draws_its_init_and_its_orders_from_its_own_seed_alone():
    """Model i's initial weights and batch orders are those of numpy/torch generators seeded
    by seeds[i]: nn.Linear's init layer by layer, and the e-th permutation of its subset."""
    import math

    seeds, subsets = [5, 7], np.array([[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]])
    net = build_stacked_model("mlp", seeds, (6,), num_classes=3, hidden=(4,))
    orders = epoch_orders(subsets, seeds, 3)
    for i, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(seed)
        for layer in net.layers:
            bound = 1 / math.sqrt(layer.weight.shape[1])
            assert torch.equal(
                layer.weight[i], torch.empty(layer.weight.shape[1:]).uniform_(-bound, bound, generator=gen)
            )
            assert torch.equal(layer.bias[i], torch.empty(layer.bias.shape[1:]).uniform_(-bound, bound, generator=gen))
        rng = np.random.default_rng(seed)
        for e in range(3):
            np.testing.assert_array_equal(orders[e, i], subsets[i][rng.permutation(5)])


def _cnn_stack_inputs(shape, width, k=3, batch=5):
    """K float64 ``cnn`` models with varied batch-norm scales (some negative) and a batch with flat regions."""
    models = build_seeded("cnn", shape, 10, seeds=range(k), width=width)
    gen = torch.Generator().manual_seed(0)
    for m in models:
        m.double()
        for layer in m:
            if isinstance(layer, nn.BatchNorm2d):
                with torch.no_grad():
                    layer.weight.uniform_(-1.0, 1.5, generator=gen)
                    layer.bias.uniform_(-0.5, 0.5, generator=gen)
    x = torch.randn(k, batch, *shape, generator=gen, dtype=torch.float64)
    x[..., : shape[-2] // 3, :] = 0.25  # equal values: pooling windows with ties
    y = torch.randint(0, 10, (k, batch), generator=gen)
    return models, x, y


@pytest.mark.parametrize("shape,width", [((1, 28, 28), 0.5), ((3, 16, 16), 1.5)])
def test_fused_stack_computes_each_models_function_gradients_and_statistics(shape, width):
    """The fused kernels (one numba kernel per block and pass for all K models) give each model's own
    outputs, gradients and batch-norm running statistics, in training and in eval mode."""
    models, x, y = _cnn_stack_inputs(shape, width)
    fused = stack_models([copy.deepcopy(m) for m in models], "fused", input_shape=shape)
    assert isinstance(fused, FusedConvStack)

    def loss(logits):
        return nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1).sum()

    expected = torch.stack([m(x[i]) for i, m in enumerate(models)])
    got = fused(x)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)
    loss(expected).backward()
    loss(got).backward()
    convs = [[layer for layer in m if isinstance(layer, nn.Conv2d)] for m in models]
    norms = [[layer for layer in m if isinstance(layer, nn.BatchNorm2d)] for m in models]
    for b in range(2):
        for mine, theirs in [
            (getattr(fused, f"conv{b}").grad, [c[b].weight.grad.flatten(1) for c in convs]),
            (getattr(fused, f"bn_weight{b}").grad, [n[b].weight.grad for n in norms]),
            (getattr(fused, f"bn_bias{b}").grad, [n[b].bias.grad for n in norms]),
            (getattr(fused, f"running_mean{b}"), [n[b].running_mean for n in norms]),
            (getattr(fused, f"running_var{b}"), [n[b].running_var for n in norms]),
        ]:
            torch.testing.assert_close(mine, torch.stack(theirs), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(fused.weight.grad, torch.stack([m[-1].weight.grad.T for m in models]))
    fused.eval()
    with torch.no_grad():
        expected = torch.stack([m.eval()(x[i]) for i, m in enumerate(models)])
        torch.testing.assert_close(fused(x), expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("stacking", ["fused", "loop"])
def test_fused_and_loop_stacks_train_like_each_model_alone(stacking):
    """K cnn models trained stacked (augmented, SGD, triangular lr, smoothing) = each trained alone,
    with the fused kernels and the loop alike, and the two give the same margins."""
    torch.set_default_dtype(torch.float64)
    try:
        x, y = synthetic_images(60, 3, seed=2, size=8)
        xt, yt = synthetic_images(10, 3, seed=3, size=8)
        data = {
            "X_train": (x / 255.0 - 0.5).astype(np.float32),
            "y_train": y,
            "X_target": (xt / 255.0 - 0.5).astype(np.float32),
            "y_target": yt,
            "num_classes": 3,
        }
        settings = TrainSettings(
            arch="cnn",
            width=0.5,
            stacking=stacking,
            epochs=3,
            batch_size=10,
            optimizer="sgd",
            lr=0.1,
            weight_decay=5e-4,
            label_smoothing=0.1,
            lr_schedule="triangular",
            lr_peak_epoch=1,
            augment=AugmentSettings(True, 1, 2),
            test_time_flip=True,
            stack_size=3,
            device="cpu",
        )
        rng = np.random.default_rng(0)
        subsets = np.stack([np.sort(rng.choice(60, 30, replace=False)) for _ in range(3)])
        seeds = np.array([5, 6, 7])
        stacked = train_stack(data, subsets, seeds, settings=settings)
        for i in range(3):
            alone = train_stack(data, subsets[i : i + 1], seeds[i : i + 1], settings=settings)
            np.testing.assert_allclose(stacked.margins[i], alone.margins[0], atol=1e-9)
        assert np.isfinite(stacked.margins).all() and not np.allclose(stacked.margins[0], stacked.margins[1])
        other = train_stack(
            data, subsets, seeds, settings=replace(settings, stacking="loop" if stacking == "fused" else "fused")
        )
        np.testing.assert_allclose(stacked.margins, other.margins, atol=1e-9)
    finally:
        torch.set_default_dtype(torch.float32)


def test_auto_conv_stacking_is_measured_once_and_each_path_can_be_forced(monkeypatch):
    """``auto`` asks the dispatch point (fused unless loop probes faster, once per process and shape class);
    ``model.stacking`` forces each path; networks or shapes the kernels cannot compute are never probed."""
    monkeypatch.delenv(dispatch.ENV, raising=False)
    dispatch.force(None)
    measured = []
    monkeypatch.setattr(dispatch, "_best", lambda run, give_up=float("inf"): measured.append(run) or 1.0)
    models = build_seeded("cnn", (1, 8, 8), 3, seeds=[1, 2], width=0.5)
    try:
        assert isinstance(stack_models(models, "auto", input_shape=(1, 8, 8), batch_size=4), FusedConvStack)
        assert len(measured) == 2 and dispatch.chosen()["conv"] == "fused"  # equal times: the default stays
        stack_models(models, "auto", input_shape=(1, 8, 8), batch_size=4)
        assert len(measured) == 2  # measured once per process and shape class
        monkeypatch.setattr(dispatch, "choose", lambda kind, probes, **kw: "loop")  # as where loop measures faster
        assert isinstance(stack_models(models, "auto", input_shape=(1, 8, 8)), LoopStack)
        for how, kind in [("fused", FusedConvStack), ("loop", LoopStack), ("grouped", GroupedStack)]:
            assert isinstance(stack_models(models, how, input_shape=(1, 8, 8)), kind)
        # no probe where the kernels cannot compute the network: odd sizes, an unknown shape, resnet9, CUDA
        assert isinstance(stack_models(models, "auto", input_shape=(1, 6, 6)), LoopStack)
        assert isinstance(stack_models(models, "auto"), LoopStack)
        with pytest.raises(ValueError, match=r"'fused' cannot compute this network: a 3x3 input to a block"):
            stack_models(models, "fused", input_shape=(1, 6, 6))
        with pytest.raises(ValueError, match="'fused' runs on the CPU"):
            stack_models(models, "fused", "cuda", input_shape=(1, 8, 8))
        resnet = build_seeded("resnet9", (3, 8, 8), 3, seeds=[1], width=0.125)
        assert isinstance(stack_models(resnet, "auto", input_shape=(3, 8, 8)), LoopStack)
        with pytest.raises(ValueError, match="'fused' cannot compute this network"):
            stack_models(resnet, "fused", input_shape=(3, 8, 8))
    finally:
        dispatch.force(None)
