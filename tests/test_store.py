"""collect promises: every chunk is checked, and a bad one fails with its path and the problem."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmflow.core.io import atomic_save_json, atomic_save_npz
from dmflow.stages.collect import ChunkSpec, write_store
from dmflow.stages.masks import make_masks
from dmflow.stages.train import train_chunk
from dmflow.store import formats
from dmflow.store.formats import open_store
from dmflow.store.schema import StoreError
from dmflow.training.settings import TrainSettings

N, T, CHUNK, REPS = 120, 40, 6, 2


@pytest.fixture(scope="module")
def chunks(tmp_path_factory, tiny_data):
    """Two real trained eval chunks (2 replicates) on the tiny digits data."""
    root = tmp_path_factory.mktemp("chunks")
    np.savez(root / "data.npz", **tiny_data)
    settings = TrainSettings(arch="logreg", epochs=2, batch_size=20, stack_size=12, device="cpu")
    specs = []
    for c in range(2):
        make_masks(
            root / "data.npz", root / f"masks{c}.npy", alpha=0.5, split="eval", chunk=c, chunk_size=CHUNK, seed=0
        )
        train_chunk(
            root / "data.npz",
            root / f"masks{c}.npy",
            root / f"train{c}.npz",
            seed=0,
            alpha=0.5,
            split="eval",
            chunk=c,
            replicates=REPS,
            settings=settings,
        )
        specs.append(ChunkSpec(c, root / f"masks{c}.npy", root / f"train{c}.npz"))
    return specs


def _collect(specs, out, max_diverged_fraction=0.05):
    return write_store(
        specs,
        out,
        n=N,
        num_targets=T,
        alpha=0.5,
        split="eval",
        seed=0,
        replicates=REPS,
        chunk_size=CHUNK,
        max_diverged_fraction=max_diverged_fraction,
    )


def _copy(specs, tmp_path):
    out = []
    for s in specs:
        m, t = tmp_path / s.masks_path.name, tmp_path / s.train_path.name
        shutil.copy(s.masks_path, m)
        shutil.copy(s.train_path, t)
        out.append(ChunkSpec(s.index, m, t))
    return out


def test_store_holds_every_chunk_in_order_and_a_manifest(chunks, tmp_path):
    manifest = _collect(list(reversed(chunks)), tmp_path / "store")
    store = open_store(tmp_path / "store")
    assert store.masks.shape == (2 * CHUNK, N) and store.margins.shape == (2 * CHUNK, REPS, T)
    assert isinstance(store.margins, np.memmap)
    first = np.load(chunks[0].train_path)
    np.testing.assert_array_equal(store.margins[:CHUNK], first["margins"])
    np.testing.assert_array_equal(store.masks[CHUNK:], np.load(chunks[1].masks_path))
    assert [c["index"] for c in manifest["chunks"]] == [0, 1]
    assert manifest["diverged"] == 0 and manifest["num_models"] == 2 * CHUNK
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())["arrays"]["margins"]["shape"] == [12, 2, 40]


def _rewrite(path, **changes):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changes)
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "damage,message",
    [
        ("truncate", "unreadable chunk file"),
        ("shape", "margins must be float32 [6, 2, 40]"),
        ("dtype", "margins must be float32"),
        ("nan", "non-finite margins in models marked ok"),
        ("seeds", "seeds differ"),
        ("mask_row", "row 2 has"),
        ("missing", "missing array(s) status"),
    ],
)
def test_bad_chunk_fails_naming_file_and_problem(chunks, tmp_path, damage, message):
    specs = _copy(chunks, tmp_path)
    bad = specs[1]
    with np.load(bad.train_path) as f:
        margins, seeds = f["margins"].copy(), f["seeds"].copy()
    if damage == "truncate":
        bad.train_path.write_bytes(bad.train_path.read_bytes()[:500])
    elif damage == "shape":
        _rewrite(bad.train_path, margins=margins[:, :, :-1])
    elif damage == "dtype":
        _rewrite(bad.train_path, margins=margins.astype(np.float64))
    elif damage == "nan":
        margins[3, 1, 7] = np.nan
        _rewrite(bad.train_path, margins=margins)
    elif damage == "seeds":
        _rewrite(bad.train_path, seeds=seeds + 1)
    elif damage == "mask_row":
        masks = np.load(bad.masks_path)
        masks[2, np.flatnonzero(~masks[2])[0]] = True
        np.save(bad.masks_path, masks)
    elif damage == "missing":
        with np.load(bad.train_path) as f:
            arrays = {k: f[k] for k in f.files if k != "status"}
        np.savez(bad.train_path, **arrays)
    with pytest.raises(StoreError) as err:
        _collect(specs, tmp_path / "store")
    text = str(err.value)
    assert message in text and "\n" not in text
    assert str(bad.masks_path if damage == "mask_row" else bad.train_path) in text
    assert not (tmp_path / "store" / "manifest.json").exists()
    assert not list((tmp_path / "store").glob("*.npy"))  # nothing half-written is left


def test_bad_chunk_leaves_an_earlier_store_untouched(chunks, tmp_path):
    _collect(chunks, tmp_path / "store")
    before = {p.name: p.read_bytes() for p in (tmp_path / "store").iterdir()}
    specs = _copy(chunks, tmp_path)
    specs[0].train_path.write_bytes(b"not a zip")
    with pytest.raises(StoreError):
        _collect(specs, tmp_path / "store")
    assert {p.name: p.read_bytes() for p in (tmp_path / "store").iterdir()} == before


def test_modified_store_array_is_caught_by_the_manifest_checksum(chunks, tmp_path):
    _collect(chunks, tmp_path / "store")
    margins = np.load(tmp_path / "store" / "margins.npy")
    margins[0, 0, 0] += 1
    np.save(tmp_path / "store" / "margins.npy", margins)
    with pytest.raises(StoreError, match="margins.npy: sha256 differs from manifest.json"):
        open_store(tmp_path / "store")


def test_store_without_manifest_is_incomplete(tmp_path):
    with pytest.raises(StoreError, match="no manifest.json"):
        open_store(tmp_path)


def _diverge(specs, rows):
    """Mark the first ``rows`` rows of the second chunk diverged (every replicate; margins NaN)."""
    with np.load(specs[1].train_path) as f:
        status, margins = f["status"].copy(), f["margins"].copy()
    status[:rows] = 1
    margins[:rows] = np.nan  # diverged models may hold NaN margins
    _rewrite(specs[1].train_path, status=status, margins=margins)


def test_diverged_models_below_the_limit_are_kept_counted_and_left_out(chunks, tmp_path, caplog):
    specs = _copy(chunks, tmp_path)
    _diverge(specs, 3)
    with caplog.at_level("INFO"):
        manifest = _collect(specs, tmp_path / "store", max_diverged_fraction=0.25)
    assert manifest["diverged"] == 6 and manifest["diverged_fraction"] == 0.25
    assert "6 of 24 models diverged" in caplog.text
    store = open_store(tmp_path / "store")
    assert (~store.ok).sum() == 6


def test_more_diverged_models_than_allowed_fail_collect_and_write_no_store(chunks, tmp_path):
    """Garbage must not finish with exit 0: a run where too many models diverged stops at collect."""
    specs = _copy(chunks, tmp_path)
    _diverge(specs, 3)
    with pytest.raises(StoreError) as err:
        _collect(specs, tmp_path / "store", max_diverged_fraction=0.2)
    assert "6 of 24 models diverged (25.0%, more than train.max_diverged_fraction=0.2)" in str(err.value)
    assert "\n" not in str(err.value)
    assert list((tmp_path / "store").iterdir()) == []  # no store, no temporaries
    assert all(s.train_path.exists() for s in specs)  # the chunks are kept


def test_the_store_keeps_masks_at_one_bit_per_entry_and_hands_out_bool_rows(chunks, tmp_path):
    _collect(chunks, tmp_path / "store")
    packed = np.load(tmp_path / "store" / "masks.npy", mmap_mode="r")
    assert packed.dtype == np.uint8 and packed.shape == (2 * CHUNK, -(-N // 8))  # 8x smaller than bool
    store = open_store(tmp_path / "store")
    every = np.concatenate([np.load(c.masks_path) for c in chunks])
    assert store.masks.shape == (2 * CHUNK, N) and store.masks.dtype == bool
    np.testing.assert_array_equal(np.asarray(store.masks), every)
    np.testing.assert_array_equal(store.masks[[7, 2]], every[[7, 2]])
    np.testing.assert_array_equal(store.masks[3], every[3])
    np.testing.assert_array_equal(store.masks[1:4, 5:9], every[1:4, 5:9])


def test_the_store_records_its_provenance_and_the_seconds_per_model(chunks, tmp_path, caplog):
    """Each chunk's record (beside it) carries the training's provenance; the store's manifest the collect
    job's, with the training's device and kernels, and the seconds per model for runtime estimates."""
    from dmflow.core import provenance
    from dmflow.core.io import atomic_save_json, load_json
    from dmflow.core.layout import seconds_path

    specs = _copy(chunks, tmp_path)
    records = []
    for s in chunks:
        records.append(load_json(Path(seconds_path(s.train_path)), sealed=False))
        atomic_save_json(Path(seconds_path(tmp_path / s.train_path.name)), records[-1])
    assert records[0]["provenance"]["device"] == "cpu" and records[0]["models"] == CHUNK * REPS
    manifest = _collect(specs, tmp_path / "store")
    block = manifest["provenance"]
    assert set(block) == {*provenance.COMPARED, "device", "kernels"}
    assert block["torch"] == records[0]["provenance"]["torch"]
    total = sum(r["train_seconds"] for r in records)
    assert manifest["train_seconds"] == pytest.approx(total)
    assert manifest["train_seconds_per_model"] == pytest.approx(total / (2 * CHUNK * REPS))
    assert open_store(tmp_path / "store").manifest["provenance"] == block  # sealed with the rest

    # a chunk trained with another torch: collect says so in one line, and writes the store
    older = {**records[1], "provenance": {**records[1]["provenance"], "torch": "1.0.0"}}
    atomic_save_json(Path(seconds_path(specs[1].train_path)), older)
    caplog.set_level("WARNING", logger="dmflow.core.provenance")
    _collect(specs, tmp_path / "store2")
    assert len(caplog.messages) == 1
    assert caplog.messages[0].startswith("provenance: collect ran with other versions than the training of ")
    assert f"torch 1.0.0 -> {block['torch']}" in caplog.messages[0]


# --- the formats: one declaration each, a version, light readers -------------------------------------


def _datamodels_arrays(n=5, t=3, lambdas=4, **changes):
    """The arrays of a datamodels file as ``DATAMODELS_ARRAYS`` declares them (zeros), with ``changes``."""
    arrays = {
        spec.name: np.zeros(spec.shape(n=n, targets=t, lambdas=lambdas), dtype=spec.dtype)
        for spec in formats.DATAMODELS_ARRAYS
    }
    arrays["format"] = np.int64(formats.DATAMODELS_FORMAT)
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def test_each_format_declares_each_array_once_and_the_datamodels_reader_hands_out_exactly_them(tmp_path):
    for specs in (formats.STORE_ARRAYS, formats.MOMENT_ARRAYS, formats.FIT_BLOCK_ARRAYS, formats.DATAMODELS_ARRAYS):
        names = [spec.name for spec in specs]
        assert len(names) == len(set(names)) and all(spec.meaning for spec in specs)
    assert [f.name for f in dataclasses.fields(formats.Datamodels)] == [s.name for s in formats.DATAMODELS_ARRAYS]
    atomic_save_npz(tmp_path / "0.5.npz", _datamodels_arrays(weight=np.arange(15, dtype=np.float32).reshape(5, 3)))
    dm = formats.open_datamodels(tmp_path / "0.5.npz")
    assert dm.weight.dtype == np.float32 and dm.weight[4, 2] == 14 and dm.lams.shape == (4, 3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weight": np.zeros((5, 3))}, r"weight is float64 \[5, 3\], the format has float32 \[5, 3\]"),
        ({"bias": np.zeros(4, np.float32)}, r"bias is float32 \[4\], the format has float32 \[3\]"),
        ({"lam": None}, "no lam"),
        ({"extra": np.zeros(3)}, "unexpected extra"),
        ({"format": None}, "datamodels format None, this dmflow reads 1; remove it and rerun"),
        ({"format": np.int64(0)}, "datamodels format 0, this dmflow reads 1"),
    ],
)
def test_a_datamodels_file_off_its_declaration_or_of_another_version_is_one_line(tmp_path, change, message):
    atomic_save_npz(tmp_path / "0.5.npz", _datamodels_arrays(**change))
    with pytest.raises(StoreError, match=message) as caught:
        formats.open_datamodels(tmp_path / "0.5.npz")
    assert str(tmp_path / "0.5.npz") in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("reader", "found", "reads"),
    [
        (formats.open_store, 1, formats.STORE_FORMAT),
        (formats.open_moments, 2, formats.MOMENTS_FORMAT),
    ],
)
def test_a_store_or_moments_manifest_of_another_version_is_one_line(tmp_path, reader, found, reads):
    atomic_save_json(tmp_path / "manifest.json", {"format": found})
    with pytest.raises(StoreError, match=f"format {found}, this dmflow reads {reads}; remove it and rerun") as caught:
        reader(tmp_path)
    assert "\n" not in str(caught.value)


def test_the_readers_and_the_budgets_import_no_torch():
    """The rules import the formats and the budgets at parse time; a notebook reads results without torch."""
    code = (
        "import sys, dmflow.store.formats, dmflow.core.budgets; print(sorted(m for m in sys.modules if m == 'torch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_chunk_reads_as_its_declared_arrays_and_one_off_them_is_one_line(chunks, tmp_path):
    chunk = formats.open_chunk(chunks[0].train_path)
    assert set(chunk) == {spec.name for spec in formats.CHUNK_ARRAYS} and chunk["margins"].shape == (CHUNK, REPS, T)
    atomic_save_npz(tmp_path / "bad.npz", {**chunk, "margins": chunk["margins"].astype(np.float64)})
    with pytest.raises(
        StoreError, match=rf"bad.npz: margins is float64 \[{CHUNK}, {REPS}, {T}\], the format has float32"
    ):
        formats.open_chunk(tmp_path / "bad.npz")
