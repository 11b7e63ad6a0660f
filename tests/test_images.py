"""Image workloads: CIFAR-10 and image-folder loaders, conv nets, grouped stacking, augmentation."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from dmflow.core.errors import DataError
from dmflow.data.augment import AugmentSettings, apply, draw_params
from dmflow.data.cifar10 import synthetic_images
from dmflow.data.prepare import prepare_data
from dmflow.data.sizing import dataset_sizes
from dmflow.stages.data import write_cifar10_folder
from dmflow.training.convnets import build_single
from dmflow.training.settings import TrainSettings
from dmflow.training.stacking import GroupedStack, LoopStack, stack_models
from dmflow.training.train import train_stack

from helpers import tiny_config


def tiny_factory(input_shape, num_classes):
    """A user's model as a test file defines it: conv, tanh, pool, linear."""
    return nn.Sequential(
        nn.Conv2d(input_shape[0], 4, 3, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )


class Unfusable(nn.Module):
    """A user module that grouped stacking cannot see into (so it loops)."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.head = nn.Linear(int(np.prod(input_shape)), num_classes)

    def forward(self, x):
        return self.head(x.flatten(1))


def unfusable_factory(input_shape, num_classes):
    return Unfusable(input_shape, num_classes)


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    x, y = synthetic_images(300, 10, seed=1)
    return write_cifar10_folder(
        tmp_path_factory.mktemp("c") / "cifar-10-batches-py",
        x_train=x[:200],
        y_train=y[:200],
        x_test=x[200:],
        y_test=y[200:],
    )


def test_cifar10_loader_reads_the_python_format(cifar_folder):
    cfg = {"name": "cifar10", "path": str(cifar_folder.parent), "standardize": True}
    out = prepare_data(cfg, seed=0)
    assert out["X_train"].shape == (200, 3, 32, 32) and out["X_target"].shape == (100, 3, 32, 32)
    assert out["X_train"].dtype == np.float32 and int(out["num_classes"]) <= 10
    np.testing.assert_allclose(out["X_train"].mean(axis=(0, 2, 3)), 0, atol=1e-4)  # per channel
    np.testing.assert_allclose(out["X_train"].std(axis=(0, 2, 3)), 1, atol=1e-3)
    with open(cifar_folder / "data_batch_1", "rb") as fh:
        first = pickle.load(fh)
    assert out["y_train"][0] == first["labels"][0] and dataset_sizes(cfg) == (200, 100)


def test_cifar10_class_subset_and_sample(cifar_folder):
    cfg = {"name": "cifar10", "path": str(cifar_folder), "classes": [5, 3], "num_train": 20, "num_targets": 7}
    out = prepare_data(cfg, seed=0)
    raw = prepare_data({"name": "cifar10", "path": str(cifar_folder), "standardize": False}, seed=0)
    full_labels = raw["y_train"]
    assert set(out["y_train"]) <= {0, 1} and len(out["y_train"]) == 20 and len(out["y_target"]) == 7
    # relabelled in the given order: class 5 -> 0, class 3 -> 1; ids point into the original training set
    assert np.all(np.where(full_labels[out["train_ids"]] == 5, 0, 1) == out["y_train"])
    assert np.all(np.isin(full_labels[out["train_ids"]], [3, 5]))
    assert dataset_sizes(cfg) == (20, 7)


def test_cifar10_loader_refuses_a_pickle_that_calls_code(tmp_path, cifar_folder):
    evil = tmp_path / "evil"
    evil.mkdir()
    for name in ("data_batch_1", "test_batch"):
        (evil / name).write_bytes((cifar_folder / name).read_bytes())

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    (evil / "data_batch_1").write_bytes(pickle.dumps({"data": Payload(), "labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle io.open"):
        prepare_data({"name": "cifar10", "path": str(evil)}, seed=0)
    assert not (tmp_path / "pwned").exists()


def _write_images(root, sizes):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, (part, cls, shape) in enumerate(sizes):
        folder = root / part / cls if part else root / cls
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def test_image_folder_with_train_and_test(tmp_path):
    spec = [
        (part, cls, (6, 5))
        for part, n in (("train", 4), ("test", 2))
        for cls in ("cat", "dog", "emu")
        for _ in range(n)
    ]
    _write_images(tmp_path, spec)
    out = prepare_data({"name": "images", "path": str(tmp_path)}, seed=0)
    assert out["X_train"].shape == (12, 3, 6, 5) and out["X_target"].shape == (6, 3, 6, 5)
    assert list(out["y_train"]) == [0] * 4 + [1] * 4 + [2] * 4  # classes in sorted folder order


def test_image_folder_split_resize_and_size_mismatch(tmp_path):
    _write_images(tmp_path, [(None, cls, (8, 8) if i % 2 else (10, 12)) for cls in ("a", "b") for i in range(10)])
    with pytest.raises(DataError, match="images differ in size.*dataset.image_size"):
        prepare_data({"name": "images", "path": str(tmp_path)}, seed=0)
    cfg = {"name": "images", "path": str(tmp_path), "image_size": [8, 8], "test_fraction": 0.3}
    out = prepare_data(cfg, seed=4)
    assert out["X_train"].shape[1:] == (3, 8, 8)
    assert len(out["y_train"]) + len(out["y_target"]) == 20 and dataset_sizes(cfg, 4) == (
        len(out["y_train"]),
        len(out["y_target"]),
    )
    assert np.array_equal(prepare_data(cfg, seed=4)["train_ids"], out["train_ids"])


@pytest.mark.parametrize("arch,width", [("cnn", 1.0), ("resnet9", 0.125), ("resnet9", 1.0)])
def test_conv_nets_forward_and_backward_on_cpu(arch, width):
    net = build_single(arch, (3, 32, 32), 10, width=width)
    x = torch.randn(2, 3, 32, 32)
    out = net(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_grouped_stack_computes_each_models_own_function():
    torch.manual_seed(0)
    models = [build_single("resnet9", (3, 16, 16), 4, width=0.125) for _ in range(3)]
    for m in models:  # non-trivial batch-norm statistics
        m.train()
        m(torch.randn(8, 3, 16, 16))
        m.eval()
    grouped, loop = stack_models(models, "grouped"), stack_models(models, "loop")
    assert isinstance(grouped, GroupedStack) and isinstance(loop, LoopStack)
    grouped.eval(), loop.eval()
    x = torch.randn(3, 5, 3, 16, 16)
    expected = torch.stack([m(x[i]) for i, m in enumerate(models)])
    torch.testing.assert_close(grouped(x), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loop(x), expected)


def test_auto_stacking_loops_what_it_cannot_fuse_and_grouped_says_why():
    models = [unfusable_factory((3, 4, 4), 2) for _ in range(2)]
    assert isinstance(stack_models(models, "auto", device="cuda"), LoopStack)
    fusable = [tiny_factory((3, 4, 4), 2) for _ in range(2)]
    assert isinstance(stack_models(fusable, "auto", device="cuda"), GroupedStack)
    assert isinstance(stack_models(fusable, "auto", device="cpu"), LoopStack)  # measured faster on CPUs
    with pytest.raises(ValueError, match="cannot fuse this network: Unfusable"):
        stack_models(models, "grouped")


def test_augmentations_do_what_they_say():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4) + 1
    # flip image 0 only; no translation (offset = pad); no cutout
    params = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 0, 0]])
    out = apply(x, params, AugmentSettings(flip=True, translate=1))
    torch.testing.assert_close(out[0], x[0].flip(-1))
    torch.testing.assert_close(out[1], x[1])
    # shift down-right by one: offsets 0 -> row 0 comes from the zero padding
    out = apply(x, torch.tensor([[0, 0, 0, 0, 0]] * 2), AugmentSettings(translate=1))
    assert out[0, 0, 0].abs().sum() == 0 and torch.equal(out[0, 0, 1:, 1:], x[0, 0, :3, :3])
    # a 2x2 cutout centred at (2, 2) zeroes rows/cols 1..2
    out = apply(x, torch.tensor([[0, 0, 0, 2, 2]] * 2), AugmentSettings(cutout=2))
    assert (out[:, 0, 1:3, 1:3] == 0).all() and (out != 0).sum() == 2 * 12
    a = draw_params(7, 3, 50, height=32, width=32, aug=AugmentSettings(True, 2, 8))
    assert np.array_equal(a, draw_params(7, 3, 50, height=32, width=32, aug=AugmentSettings(True, 2, 8)))
    assert not np.array_equal(a, draw_params(7, 4, 50, height=32, width=32, aug=AugmentSettings(True, 2, 8)))
    assert a[:, 1:3].min() >= 0 and a[:, 1:3].max() <= 4


@pytest.mark.parametrize("arch,stacking", [("cnn", "grouped"), ("cnn", "loop"), ("test_images:tiny_factory", "auto")])
def test_conv_stack_equals_independent_trainings(arch, stacking):
    """K models trained stacked (augmented, SGD, triangular lr, smoothing) = each trained alone."""
    torch.set_default_dtype(torch.float64)
    try:
        x, y = synthetic_images(60, 3, seed=2, size=8)
        xt, yt = synthetic_images(10, 3, seed=3, size=8)
        x, xt = (x / 255.0 - 0.5).astype(np.float32), (xt / 255.0 - 0.5).astype(np.float32)
        settings = TrainSettings(
            arch=arch,
            width=0.25,
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
        data = {"X_train": x, "y_train": y, "X_target": xt, "y_target": yt, "num_classes": 3}
        stacked = train_stack(data, subsets, seeds, settings=settings)
        for i in range(3):
            alone = train_stack(data, subsets[i : i + 1], seeds[i : i + 1], settings=settings)
            np.testing.assert_allclose(stacked.margins[i], alone.margins[0], atol=1e-9)
            assert stacked.acc_subset[i] == alone.acc_subset[0]
        assert np.isfinite(stacked.margins).all() and stacked.finite_loss.all()
        assert not np.allclose(stacked.margins[0], stacked.margins[1])
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.workflow
def test_tiny_workflow_with_a_user_model_on_a_generated_image_folder(workflow):
    """snakemake end to end on an image folder, with a conv model defined in the user's own module."""
    from PIL import Image

    x, y = synthetic_images(120, 3, seed=4, size=12, noise=15)
    for i, (img, label) in enumerate(zip(x, y)):
        folder = workflow.root / "imgs" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i:03d}.png")
    (workflow.root / "my_models.py").write_text(
        "from torch import nn\n\n"
        "def small_cnn(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(input_shape[0], 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),\n"
        "                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 36, num_classes))\n"
    )
    cfg = tiny_config(workflow.results)
    cfg["dataset"] = {"name": "images", "path": "imgs", "test_fraction": 0.25, "num_targets": 20}
    cfg["model"] = {"arch": "my_models:small_cnn"}
    cfg["train"].update({"augment": {"flip": True, "translate": 1}, "test_time_flip": True, "stack_size": 20})
    cfg["counterfactual"]["enabled"] = False
    cfg["evaluate"]["learning_curve"] = []
    workflow.write_config(cfg)
    workflow.run()
    data = np.load(workflow.results / "data.npz")
    n = len(data["y_train"])
    assert data["X_train"].shape[1:] == (3, 12, 12) and data["X_target"].shape == (20, 3, 12, 12)
    dm = np.load(workflow.results / "datamodels" / "0.5.npz")
    assert dm["weight"].shape == (n, 20) and np.isfinite(dm["weight"]).all()
    summary = json.loads((workflow.results / "evaluation" / "0.5" / "summary.json").read_text())
    assert summary["counts"]["eval_masks"] == 10 and summary["counts"]["diverged_models_excluded"] == 0
    train = np.load(workflow.results / "train" / "0.5" / "fit" / "00000.npz")
    assert train["acc_subset"].mean() > 0.6  # the user's model learned its subsets
