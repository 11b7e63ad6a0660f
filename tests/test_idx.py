"""IDX datasets (fashion-mnist, mnist, kmnist): the reader on files the tests write (gzip and
plain, torchvision's layout), every malformed file refused in one line by the config check, and
a real Snakemake run on Debian's Fashion-MNIST files."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from dmflow.config import ConfigError, validate_config
from dmflow.core.errors import DataError
from dmflow.data.idx import IDX_DEFAULT_PATHS, IDX_FILES, idx_files, read_idx
from dmflow.data.prepare import prepare_data
from dmflow.data.sizing import dataset_sizes

from helpers import REPO, dmflow_cli, tiny_config

DEBIAN = Path(IDX_DEFAULT_PATHS["fashion-mnist"])
NO_DEBIAN_FILES = "Fashion-MNIST IDX files absent: apt-get install dataset-fashion-mnist (Debian/Ubuntu) to run this"


def idx_bytes(array: np.ndarray, *, type_code: int = 0x08) -> bytes:
    """An IDX file of ``array``: magic (0, 0, type, ndim), big-endian uint32 dims, the elements."""
    head = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + np.ascontiguousarray(array).tobytes()


def write_idx(path: Path, array: np.ndarray, **kwargs) -> Path:
    data = idx_bytes(array, **kwargs)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_arrays(train: int = 60, test: int = 20, shape: tuple[int, int] = (7, 5), seed: int = 0):
    """uint8 images and labels whose class shifts the pixels (learnable), each class present."""
    rng = np.random.default_rng(seed)
    out = {}
    for part, n in (("train", train), ("test", test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images = np.clip(rng.normal(20 * labels[:, None, None], 30, (n, *shape)), 0, 255).astype(np.uint8)
        out[f"{part}_images"], out[f"{part}_labels"] = images, labels
    return out


def write_folder(folder: Path, arrays: dict[str, np.ndarray] | None = None, *, gz: bool = True) -> Path:
    """The four IDX files of ``arrays`` in ``folder``, gzipped or plain."""
    arrays = make_arrays() if arrays is None else arrays
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        write_idx(folder / (f"{stem}.gz" if gz else stem), arrays[key])
    return folder


def test_the_idx_reader_reads_gzip_and_plain_files_as_scaled_standardised_images(tmp_path):
    arrays = make_arrays()
    for gz in (True, False):
        folder = write_folder(tmp_path / ("gz" if gz else "plain"), arrays, gz=gz)
        images = read_idx(folder / ("train-images-idx3-ubyte.gz" if gz else "train-images-idx3-ubyte"), ndim=3)
        assert images.dtype == np.uint8 and images.shape == (60, 7, 5)
        out = prepare_data({"name": "fashion-mnist", "path": str(folder)}, seed=0)
        assert out["X_train"].shape == (60, 1, 7, 5) and out["X_target"].shape == (20, 1, 7, 5)
        assert out["X_train"].dtype == np.float32 and out["X_train_raw"].dtype == np.uint8
        np.testing.assert_array_equal(out["X_train_raw"][:, 0], arrays["train_images"])
        np.testing.assert_array_equal(out["y_target"], arrays["test_labels"])
        np.testing.assert_allclose(out["X_train"].mean(axis=(0, 2, 3)), 0, atol=1e-5)  # per channel, as cifar10
        np.testing.assert_allclose(out["X_train"].std(axis=(0, 2, 3)), 1, atol=1e-4)
        raw = prepare_data({"name": "mnist", "path": str(folder), "standardize": False}, seed=0)
        np.testing.assert_allclose(raw["X_train"], arrays["train_images"][:, None] / np.float32(255), atol=1e-7)
        assert int(out["num_classes"]) == 10 and dataset_sizes({"name": "kmnist", "path": str(folder)}) == (60, 20)


def test_the_idx_sample_and_class_subset_keep_the_original_indices(tmp_path):
    arrays = make_arrays(train=200, test=50)
    folder = write_folder(tmp_path / "d", arrays)
    cfg = {"name": "fashion-mnist", "path": str(folder), "classes": [6, 0], "num_train": 15, "num_targets": 7}
    out = prepare_data(cfg, seed=2)
    assert len(out["y_train"]) == 15 and len(out["y_target"]) == 7 and dataset_sizes(cfg, 2) == (15, 7)
    # relabelled in the given order (6 -> 0, 0 -> 1); ids index the files' own arrays
    np.testing.assert_array_equal(out["X_train_raw"][:, 0], arrays["train_images"][out["train_ids"]])
    np.testing.assert_array_equal(out["X_target_raw"][:, 0], arrays["test_images"][out["target_ids"]])
    np.testing.assert_array_equal(np.where(arrays["train_labels"][out["train_ids"]] == 6, 0, 1), out["y_train"])
    assert set(arrays["test_labels"][out["target_ids"]]) <= {0, 6}
    # the same sample as the cifar10 source draws: num_train from the kept classes, by seed
    again = prepare_data(dict(cfg, path=str(write_folder(tmp_path / "plain", arrays, gz=False))), seed=2)
    np.testing.assert_array_equal(again["train_ids"], out["train_ids"])


def test_torchvisions_layout_and_plain_files_beside_their_gzips(tmp_path):
    arrays = make_arrays()
    for name, sub in (("fashion-mnist", "FashionMNIST"), ("mnist", "MNIST"), ("kmnist", "KMNIST")):
        root = tmp_path / name
        raw = write_folder(root / sub / "raw", arrays)
        write_folder(raw, arrays, gz=False)  # torchvision keeps both: the plain files are read
        for path in (root, raw, root / sub):
            files = idx_files(name, str(path))
            assert files["train_images"] == raw / "train-images-idx3-ubyte", path
            assert dataset_sizes({"name": name, "path": str(path)}) == (60, 20)


def _cfg(folder: Path, **dataset) -> dict:
    cfg = tiny_config(folder.parent / "results")
    cfg["dataset"] = {"name": "fashion-mnist", "path": str(folder), "num_targets": 10, **dataset}
    return cfg


def _replace(key: str, content):
    """Replace one of the four files with ``content`` (bytes, or a function of its IDX bytes)."""

    def make(folder: Path) -> str:
        path = folder / f"{IDX_FILES[key]}.gz"
        data = gzip.decompress(path.read_bytes())
        data = content(data) if callable(content) else content
        path.write_bytes(gzip.compress(data))
        return path.name

    return make


def _raw_gz(key: str, edit):
    """Edit the gzip bytes themselves (cut, corrupt) of one file."""

    def make(folder: Path) -> str:
        path = folder / f"{IDX_FILES[key]}.gz"
        path.write_bytes(edit(path.read_bytes()))
        return path.name

    return make


def _as_plain(key: str, content):
    """The file as a plain (not gzipped) file with ``content``, its .gz removed."""

    def make(folder: Path) -> str:
        gz = folder / f"{IDX_FILES[key]}.gz"
        data = gzip.decompress(gz.read_bytes())
        gz.unlink()
        (folder / IDX_FILES[key]).write_bytes(content(data))
        return IDX_FILES[key]

    return make


def _missing(folder: Path) -> str:
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    return "t10k-labels-idx1-ubyte[.gz]"


ARRAYS = make_arrays()
HOSTILE = {
    "a text file": (_replace("train_images", b"hello, world\n"), "is not an IDX file: its magic number is 68 65 6c 6c"),
    "an empty file": (_replace("train_labels", b""), "is truncated: 0 byte(s), not even the 4-byte IDX magic"),
    "float32 images": (
        _replace("train_images", idx_bytes(ARRAYS["train_images"].astype(">f4"), type_code=0x0D)),
        "holds IDX float32 values (type 0x0d); dmflow reads images [N, H, W] as unsigned bytes",
    ),
    "2-d images": (
        _replace("test_images", idx_bytes(ARRAYS["test_images"].reshape(20, -1))),
        "has 2 dimension(s) (magic 00 00 08 02); IDX images [N, H, W] have 3 (magic 00 00 08 03)",
    ),
    "images as labels": (
        _replace("train_labels", idx_bytes(ARRAYS["train_images"])),
        "has 3 dimension(s) (magic 00 00 08 03); IDX labels [N] have 1 (magic 00 00 08 01)",
    ),
    "a header cut short": (
        _replace("train_images", idx_bytes(ARRAYS["train_images"])[:9]),
        "truncated inside its header",
    ),
    "a truncated file": (
        _replace("train_images", lambda data: data[:-100]),
        "is truncated: 2000 of the 2100 data bytes its header claims (shape [60, 7, 5])",
    ),
    "a truncated plain file": (
        _as_plain("train_images", lambda data: data[:-100]),
        "holds 2000 data bytes but its header claims shape [60, 7, 5] (2100 bytes): truncated",
    ),
    "extra bytes": (
        _as_plain("test_labels", lambda data: data + b"\x01"),
        "holds 21 data bytes but its header claims shape [20] (20 bytes): followed by extra bytes",
    ),
    "extra bytes in a gzip": (_replace("test_labels", lambda data: data + b"\x01"), "holds more data than its header"),
    "a truncated gzip": (
        _raw_gz("train_images", lambda gz: gz[: len(gz) // 2]),
        "is not a complete gzip file (EOFError",
    ),
    "a gzip failing its CRC": (
        _raw_gz("train_labels", lambda gz: gz[:-8] + bytes([gz[-8] ^ 0xFF]) + gz[-7:]),
        "is not a complete gzip file (BadGzipFile: CRC check failed",
    ),
    "not a gzip": (_raw_gz("test_images", lambda gz: b"plain text, not gzip"), "is not a complete gzip file"),
    "a gzip named plain": (
        _as_plain("test_labels", lambda data: gzip.compress(data)),
        "is gzip-compressed but not named .gz; rename it t10k-labels-idx1-ubyte.gz",
    ),
    "a header claiming 10^12 bytes": (
        _replace("train_images", lambda data: data[:4] + struct.pack(">3I", 10**6, 10**3, 10**3) + data[16:]),
        "claims shape [1000000, 1000, 1000] (1000000000000 bytes), more than a gzip file of",
    ),
    "no images": (
        _replace("test_images", idx_bytes(np.zeros((0, 7, 5), np.uint8))),
        "has shape [0, 7, 5]; IDX images need at least one image of at least 1x1 pixels",
    ),
    "fewer labels than images": (
        _replace("train_labels", idx_bytes(ARRAYS["train_labels"][:59])),
        "train-labels-idx1-ubyte.gz holds 59 labels but",
    ),
    "a label out of range": (
        _replace("train_labels", idx_bytes(np.where(np.arange(60) == 7, 10, ARRAYS["train_labels"]).astype(np.uint8))),
        "has label 10 (first at index 7); labels must be 0..9",
    ),
    "test images of another size": (
        _replace("test_images", idx_bytes(np.zeros((20, 5, 7), np.uint8))),
        "holds 5x7 images but",
    ),
    "a missing file": (_missing, "lacks t10k-labels-idx1-ubyte[.gz]; an IDX dataset needs all of"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_malformed_idx_file_is_refused_in_one_line_by_the_config_check(tmp_path, case):
    make, expected = HOSTILE[case]
    folder = write_folder(tmp_path / "d", ARRAYS)
    culprit = make(folder)
    with pytest.raises(ConfigError) as err:
        validate_config(_cfg(folder))
    message = str(err.value)
    assert expected in message and culprit in message and "\n" not in message, message
    assert not (tmp_path / "results").exists()


def test_idx_settings_that_cannot_work_are_refused_in_one_line(tmp_path):
    folder = write_folder(tmp_path / "d")
    for dataset, expected in (
        ({"download": True}, "dataset.download=true: fashion-mnist is never downloaded"),
        ({"path": str(tmp_path / "nowhere")}, "no fashion-mnist IDX files (train-images-idx3-ubyte[.gz]"),
        ({"path": str(tmp_path / "nowhere")}, "apt-get install dataset-fashion-mnist"),
        ({"name": "kmnist", "path": None}, "dataset.path is required when dataset.name='kmnist'"),
        ({"classes": [3, 11]}, "dataset.classes=[3, 11]: class(es) [11] have no examples"),
    ):
        with pytest.raises(ConfigError) as err:
            validate_config(_cfg(folder, **dataset))
        assert expected in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="labels.gz is not a complete gzip file"):  # read_idx alone, too
        read_idx(write_idx(tmp_path / "labels", ARRAYS["train_labels"]).rename(tmp_path / "labels.gz"), ndim=1)


def test_check_config_prints_the_one_line_of_a_truncated_gzip(tmp_path):
    import yaml

    folder = write_folder(tmp_path / "d")
    _raw_gz("train_images", lambda gz: gz[:-20])(folder)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(_cfg(folder)))
    proc = dmflow_cli("check-config", config, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("dmflow: config error: dataset.path: ") and "train-images-idx3-ubyte.gz" in lines[0]


def _debian_files_present() -> bool:
    return all((DEBIAN / f"{stem}.gz").is_file() for stem in IDX_FILES.values())


@pytest.mark.parametrize("name", ["fashion-mnist.yaml", "fashion-mnist-gpu.yaml"])
def test_the_fashion_mnist_configs_pass_the_config_check(name):
    """The ready configs read Debian's files by default: n and T as their comments say."""
    if not _debian_files_present():
        pytest.skip(NO_DEBIAN_FILES)
    import yaml

    cfg = validate_config(yaml.safe_load((REPO / "configs" / name).read_text()))
    sizes = dataset_sizes(cfg["dataset"], cfg["seed"])
    assert sizes == ((2000, 1000) if name == "fashion-mnist.yaml" else (60000, 10000))


@pytest.mark.workflow
def test_fashion_mnist_end_to_end_on_debians_files(workflow):
    """snakemake on the real Fashion-MNIST files (Debian's dataset-fashion-mnist): 300 images, an MLP."""
    if not _debian_files_present():
        pytest.skip(NO_DEBIAN_FILES)
    cfg = tiny_config(workflow.results)
    cfg["dataset"] = {"name": "fashion-mnist", "num_train": 300, "num_targets": 24}
    cfg["model"] = {"arch": "mlp", "hidden": [32]}
    cfg["train"].update({"epochs": 4, "batch_size": 50})
    cfg["counterfactual"]["enabled"] = False
    cfg["evaluate"]["learning_curve"] = []
    workflow.write_config(cfg)
    workflow.run()
    data = np.load(workflow.results / "data.npz")
    assert data["X_train"].shape == (300, 1, 28, 28) and data["X_target"].shape == (24, 1, 28, 28)
    images = read_idx(DEBIAN / "train-images-idx3-ubyte.gz", ndim=3)
    labels = read_idx(DEBIAN / "train-labels-idx1-ubyte.gz", ndim=1)
    np.testing.assert_array_equal(data["X_train_raw"][:, 0], images[data["train_ids"]])  # original indices
    np.testing.assert_array_equal(data["y_train"], labels[data["train_ids"]])
    dm = np.load(workflow.results / "datamodels" / "0.5.npz")
    assert dm["weight"].shape == (300, 24) and np.isfinite(dm["weight"]).all()
    summary = json.loads((workflow.results / "evaluation" / "0.5" / "summary.json").read_text())
    assert summary["counts"]["diverged_models_excluded"] == 0
    train = np.load(workflow.results / "train" / "0.5" / "fit" / "00000.npz")
    assert train["acc_target"].mean() > 0.5  # 150 Fashion-MNIST images teach an MLP most of the 10 classes
    assert (workflow.results / "analysis" / "0.5" / "influencers.png").is_file()
