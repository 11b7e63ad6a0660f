"""dmflow as a yardstick and a neighbour: any attribution scored like the datamodels
(``score-attribution``, ``DatamodelRun.lds``), stores imported from arrays trained elsewhere
(``import-store``), datamodels exported for the official repository (``export``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import dmflow
from dmflow.core.layout import Layout
from dmflow.evaluation.metrics import score_attribution as score_scores
from dmflow.lasso.settings import FitSettings
from dmflow.stages.collect import import_store
from dmflow.stages.evaluate import evaluate, score_attribution, score_run_attribution
from dmflow.stages.fit import export_datamodels, fit_moments_block, merge_fit
from dmflow.stages.moments import moments
from dmflow.store.formats import DATAMODELS_ARRAYS, DATAMODELS_FORMAT, open_store
from dmflow.store.schema import StoreError

from helpers import dmflow_cli, planted_eval_store, planted_fit, read_npz, write_store_folder

F64 = FitSettings(dtype="float64", tol=1e-10, max_iter=100_000, num_lambdas=10, lambda_min_ratio=1e-3, device="cpu")


def _planted_attributions(w: np.ndarray, seed: int = 1) -> dict[str, np.ndarray]:
    """The true weights, a noisy copy (noise as large as the weights) and random scores, [n, T] each."""
    rng = np.random.default_rng(seed)
    return {
        "truth": w,
        "noisy": w + rng.normal(scale=w.std(), size=w.shape),
        "random": rng.normal(size=w.shape),
    }


def _import_eval_store(folder, store) -> None:
    """The in-memory planted eval store, saved as arrays from elsewhere and imported."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "masks.npy", np.asarray(store.masks))
    np.save(folder / "margins.npy", store.margins)
    import_store(folder / "masks.npy", folder / "margins.npy", folder / "store", alpha=0.5, split="eval")


def test_planted_attributions_score_in_their_known_order():
    """The true weights beat a noisy copy of them, which beats random scores, whose LDS is near 0."""
    store, w, _ = planted_eval_store(noise=1.0, m=800, n=400, t=8, reps=4)
    lds = {}
    for name, scores in _planted_attributions(w).items():
        table, summary = score_scores(scores, store, target_ids=np.arange(8))
        lds[name] = summary["lds_mean"]["mean"]
        assert list(table.columns) == [
            "target",
            "target_id",
            "pearson_single",
            "lds_single",
            "pearson_mean",
            "lds_mean",
            "replicate_corr",
            "ceiling_single",
            "ceiling_mean",
        ]
        assert "mse_mean" not in summary and set(summary["fraction_of_ceiling"]) == {"pearson_single", "pearson_mean"}
    assert lds["truth"] > lds["noisy"] + 0.1 > lds["random"] + 0.2
    assert lds["truth"] > 0.9 and abs(lds["random"]) < 0.1
    # [T, n] is detected when n != T, and gives the same table
    table_t, _ = score_scores(w.T, store, target_ids=np.arange(8))
    pd.testing.assert_frame_equal(table_t, score_scores(w, store, target_ids=np.arange(8))[0])


def test_an_imported_eval_store_scores_files_of_scores_and_writes_only_that_methods_files(tmp_path):
    store, w, _ = planted_eval_store(noise=1.0)
    _import_eval_store(tmp_path, store)
    attributions = _planted_attributions(w)
    for name, scores in attributions.items():
        np.save(tmp_path / f"{name}.npy", scores.astype(np.float32))
        score_attribution(
            tmp_path / f"{name}.npy",
            tmp_path / "store",
            name=name,
            table=tmp_path / "methods" / f"{name}.csv",
            summary=tmp_path / "methods" / f"{name}.json",
        )
    summaries = {n: json.loads((tmp_path / "methods" / f"{n}.json").read_text()) for n in attributions}
    assert summaries["truth"]["lds_mean"]["mean"] > summaries["noisy"]["lds_mean"]["mean"]
    assert summaries["noisy"]["lds_mean"]["mean"] > summaries["random"]["lds_mean"]["mean"]
    assert summaries["truth"]["method"]["name"] == "truth" and summaries["truth"]["counts"]["replicates"] == 4
    table = pd.read_csv(tmp_path / "methods" / "truth.csv")
    assert len(table) == 6 and np.isfinite(table.ceiling_mean).all()


def _run(tmp_path) -> Layout:
    """A finished run's files, as the workflow lays them out, without training: data.npz, an eval store
    (imported), datamodels (planted weights plus noise) and the evaluate stage's outputs."""
    layout = Layout(tmp_path / "results")
    store, w, _ = planted_eval_store(noise=1.0, n=50, t=6)
    src = tmp_path / "arrays"
    src.mkdir()
    np.save(src / "masks.npy", np.asarray(store.masks))
    np.save(src / "margins.npy", store.margins)
    import_store(src / "masks.npy", src / "margins.npy", layout.store("0.5", "eval"), alpha=0.5, split="eval")
    rng = np.random.default_rng(5)
    data = {"target_ids": np.arange(100, 106), "train_ids": np.arange(50), "y_train": np.zeros(50, np.int64)}
    np.savez(layout.data(), **data)
    dm = {spec.name: np.zeros(spec.shape(n=50, targets=6, lambdas=3), spec.dtype) for spec in DATAMODELS_ARRAYS}
    dm.update(
        weight=(w + 0.3 * rng.normal(size=w.shape)).astype(np.float32),
        bias=np.full(6, 3.0, np.float32),
        lam=np.full(6, 0.01),
        nnz=np.full(6, 50),
        target_ids=data["target_ids"],
        train_ids=data["train_ids"],
        format=np.int64(DATAMODELS_FORMAT),
    )
    (tmp_path / "results" / "datamodels").mkdir()
    np.savez(layout.datamodels("0.5"), **dm)
    evaluate(
        layout.datamodels("0.5"),
        layout.store("0.5", "eval"),
        table=layout.eval_table("0.5"),
        summary=layout.eval_summary("0.5"),
        figure=layout.eval_figure("0.5"),
    )
    return layout


def test_the_datamodels_scored_as_an_attribution_give_the_evaluate_stages_numbers_exactly(tmp_path):
    layout = _run(tmp_path)
    run = dmflow.load_run(layout.results)
    table, summary = run.lds(run.weight, name="datamodels")
    own = run.evaluation
    for key in ("target_id", "pearson_single", "lds_single", "pearson_mean", "lds_mean", "ceiling_mean"):
        np.testing.assert_array_equal(table[key].to_numpy(), own[key].to_numpy(), err_msg=key)
    for key in ("lds_single", "lds_mean", "pearson_mean", "replicate_corr", "fraction_of_ceiling", "counts"):
        assert summary[key] == run.summary[key], key
    written = pd.read_csv(layout.method_table("0.5", "datamodels"))
    np.testing.assert_allclose(written.lds_mean, own.lds_mean, rtol=1e-15)
    assert json.loads(open(layout.method_summary("0.5", "datamodels")).read())["lds_mean"] == run.summary["lds_mean"]


def test_bad_scores_or_names_are_refused_in_one_line_before_anything_is_written(tmp_path):
    layout = _run(tmp_path)
    n, t = 50, 6
    good = np.zeros((n, t), np.float32)
    nan, inf = good.copy(), good.copy()
    nan[3, 2], inf[0, 1] = np.nan, np.inf
    cases = {
        "shape.npy": (np.zeros((n, t + 1)), "shape [50, 7] does not fit this run: scores must be [n, T] = [50, 6]"),
        "nan.npy": (nan, "1 scores are NaN, infinite or beyond float32's range (the first: training example 3"),
        "inf.npy": (inf, "training example 0, target 1: inf"),
        "huge.npy": (np.full((n, t), 1e300), "300 scores are NaN, infinite or beyond float32's range"),
        "text.npy": (np.full((n, t), "a"), "dtype <U1 is not a real number type"),
        "complex.npy": (np.zeros((n, t), complex), "dtype complex128 is not a real number type"),
        "objects.npy": (np.full((n, t), None, dtype=object), "not a readable .npy array"),
        "3d.npy": (np.zeros((n, t, 1)), "shape [50, 6, 1] does not fit"),
    }
    for file, (array, message) in cases.items():
        np.save(tmp_path / file, array, allow_pickle=True)
        with pytest.raises(StoreError) as err:
            score_run_attribution(layout.results, tmp_path / file, alpha=0.5, name="m")
        assert message in str(err.value) and "\n" not in str(err.value), (file, str(err.value))
        assert str(tmp_path / file) in str(err.value)
    np.save(tmp_path / "good.npy", good)
    with pytest.raises(StoreError, match=r"shape \[50, 6\] is not \[T, n\] = \[6, 50\]"):
        score_run_attribution(layout.results, tmp_path / "good.npy", alpha=0.5, name="m", transpose=True)
    for name in ("../up", "a/b", ".hidden", "", "x" * 65, "sp ace", "a..b"):
        with pytest.raises(StoreError, match="is not a safe file name"):
            score_run_attribution(layout.results, tmp_path / "good.npy", alpha=0.5, name=name)
    assert not (tmp_path / "results" / "evaluation" / "0.5" / "methods").exists()


def test_a_method_replaces_only_its_own_files(tmp_path):
    layout = _run(tmp_path)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.normal(size=(50, 6)))
    np.save(tmp_path / "b.npy", rng.normal(size=(6, 50)))  # [T, n], detected
    score_run_attribution(layout.results, tmp_path / "a.npy", alpha=0.5, name="a")
    before = open(layout.method_summary("0.5", "a")).read()
    _, summary = score_run_attribution(layout.results, tmp_path / "b.npy", alpha=0.5, name="b")
    assert summary["method"]["transposed"] is True
    assert open(layout.method_summary("0.5", "a")).read() == before
    np.save(tmp_path / "a.npy", rng.normal(size=(50, 6)))
    score_run_attribution(layout.results, tmp_path / "a.npy", alpha=0.5, name="a")
    assert open(layout.method_summary("0.5", "a")).read() != before  # the same name is replaced


def test_import_store_of_a_stores_own_arrays_gives_an_identical_store_and_identical_fit(tmp_path):
    x, y, _ = planted_fit(n=40, m=600, t=5)
    status = np.zeros((len(x), 1), np.uint8)
    y = y.copy()
    y[[7, 30], 1] = np.nan  # two models diverged: NaN margins, status 1
    status[[7, 30]] = 1
    (tmp_path / "original").mkdir()
    original = open_store(write_store_folder(tmp_path / "original", x, y, status))
    src = tmp_path / "arrays"
    src.mkdir()
    np.save(src / "masks.npy", np.asarray(original.masks).astype(np.int8))  # 0/1 integers are accepted
    np.save(src / "margins.npy", np.asarray(original.margins)[:, 0, :])  # [m, T]: one replicate
    manifest = import_store(src / "masks.npy", src / "margins.npy", tmp_path / "imported", alpha=0.5, split="fit")
    assert manifest["diverged"] == 2 and manifest["imported"]["masks"]["path"] == str(src / "masks.npy")
    imported = open_store(tmp_path / "imported")
    for name in ("masks", "margins", "status"):
        np.testing.assert_array_equal(
            np.load(tmp_path / "imported" / f"{name}.npy"), np.load(tmp_path / "original" / f"{name}.npy")
        )
    assert (imported.seeds == -1).all() and np.isnan(imported.acc_target).all()
    fits = {}
    for name in ("original", "imported"):
        moments(tmp_path / name, tmp_path / f"moments_{name}", val_fraction=F64.val_fraction, seed=0)
        blocks = []
        for b in range(2):
            block = fit_moments_block(tmp_path / f"moments_{name}", b, targets_per_job=3, settings=F64)
            np.savez(tmp_path / f"{name}_block{b}.npz", **block)
            blocks.append(tmp_path / f"{name}_block{b}.npz")
        fits[name] = merge_fit(blocks, None, tmp_path / f"{name}_dm.npz")
    for key, value in fits["original"].items():
        np.testing.assert_array_equal(fits["imported"][key], value, err_msg=key)
    assert list(fits["imported"]["target_ids"]) == list(range(5)) and len(fits["imported"]["train_ids"]) == 40


def _arrays(tmp_path, **changes):
    """A valid import (masks [12, 10], margins [12, 2, 3]), with some arrays replaced."""
    rng = np.random.default_rng(0)
    masks = np.zeros((12, 10), bool)
    for row in masks:
        row[rng.choice(10, 5, replace=False)] = True
    arrays = {"masks": masks, "margins": rng.normal(size=(12, 2, 3)).astype(np.float32)}
    arrays.update(changes)
    paths = {}
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array, allow_pickle=True)
        paths[name] = tmp_path / f"{name}.npy"
    return paths


def _int_masks_with_a_two():
    masks = np.zeros((12, 10), np.int64)
    masks[:, :5] = 1
    masks[4, 0] = 2
    return masks


def _margins_with_nan():
    margins = np.zeros((12, 2, 3), np.float32)
    margins[5, 1, 2] = np.nan
    return margins


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"masks": np.zeros((12, 10), np.float32)}, "masks must be bool or 0/1 integers [m, n], got float32"),
        ({"masks": _int_masks_with_a_two()}, "row 4 holds 2 at column 0; masks must be 0/1"),
        ({"masks": np.eye(12, 10, dtype=bool)}, "row 0 has 1 ones, expected round(alpha * n) = 5"),
        ({"masks": np.ones((2, 10), bool)}, "2 models; a store needs at least 3"),
        ({"margins": np.zeros((11, 3), np.float32)}, "margins [11, 3] do not fit masks [12, 10]"),
        ({"margins": np.zeros((12, 2, 3), complex)}, "margins must be integers or floats"),
        ({"margins": _margins_with_nan(), "status": np.zeros((12, 2), np.uint8)}, "row 5, replicate 1: NaN"),
        ({"status": np.full((12, 2), 3, np.uint8)}, "status holds values other than 0 ok, 1 diverged"),
        ({"status": np.zeros((12, 1), np.uint8)}, "status must be integers [m, R] = [12, 2]"),
        ({"seeds": np.zeros((12, 2))}, "seeds must be integers [m, R]"),
        ({"masks": np.full((12, 10), None, dtype=object)}, "not a readable .npy array"),
        ({"margins": np.tile(np.nan, (12, 2, 3))}, "24 of 24 models diverged"),
    ],
)
def test_import_store_refuses_each_problem_in_one_line_and_leaves_an_earlier_store(tmp_path, changes, message):
    out = tmp_path / "store"
    good = _arrays(tmp_path)
    import_store(good["masks"], good["margins"], out, alpha=0.5, split="eval")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    paths = _arrays(bad_dir, **changes)
    with pytest.raises(StoreError) as err:
        import_store(
            paths["masks"],
            paths["margins"],
            out,
            alpha=0.5,
            split="eval",
            status=paths.get("status"),
            seeds=paths.get("seeds"),
        )
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_nan_margins_without_a_status_mark_their_models_diverged(tmp_path):
    paths = _arrays(tmp_path, margins=_margins_with_nan())
    manifest = import_store(
        paths["masks"], paths["margins"], tmp_path / "store", alpha=0.5, split="eval", max_diverged_fraction=0.1
    )
    store = open_store(tmp_path / "store")
    assert manifest["diverged"] == 1 and store.status[5, 1] == 1 and (~store.ok).sum() == 1


def test_export_madrylab_loads_with_weights_only(tmp_path):
    layout = _run(tmp_path)
    out = tmp_path / "dm.pt"
    export_datamodels(layout.datamodels("0.5"), out, format="madrylab")
    loaded = torch.load(out, weights_only=True)
    dm = read_npz(layout.datamodels("0.5"))
    assert set(loaded) == {"weight", "bias", "lam"}
    for key in ("weight", "bias", "lam"):
        assert type(loaded[key]) is torch.Tensor and loaded[key].dtype == torch.float32
        np.testing.assert_array_equal(loaded[key].numpy(), dm[key].astype(np.float32))
    assert tuple(loaded["weight"].shape) == (50, 6) and tuple(loaded["bias"].shape) == (6,)


def test_the_three_commands_from_the_shell(tmp_path):
    """import-store from a folder, score-attribution (and its one-line error), export."""
    layout = _run(tmp_path)
    src = tmp_path / "arrays"  # written by _run: masks.npy and margins.npy of the eval store
    out = tmp_path / "again"
    dmflow_cli("import-store", "--source", src, "--alpha", 0.5, "--split", "eval", "--out-dir", out)
    assert json.loads((out / "manifest.json").read_text())["num_models"] == 600
    np.save(tmp_path / "s.npy", np.random.default_rng(0).normal(size=(50, 6)))  # constant scores are refused
    dmflow_cli(
        "score-attribution", "--run", layout.results, "--alpha", 0.5, "--scores", tmp_path / "s.npy", "--name", "ones"
    )
    assert (tmp_path / "results" / "evaluation" / "0.5" / "methods" / "ones.csv").is_file()
    np.save(tmp_path / "bad.npy", np.ones((50, 5)))
    proc = dmflow_cli(
        "score-attribution", "--run", layout.results, "--alpha", 0.5, "--scores", tmp_path / "bad.npy", "--name", "x",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("dmflow score-attribution: ") and "shape [50, 5] does not fit" in proc.stderr
    dmflow_cli("export", "--format", "madrylab", "--run", layout.results, "--alpha", 0.5, "--out", tmp_path / "x.pt")
    assert set(torch.load(tmp_path / "x.pt", weights_only=True)) == {"weight", "bias", "lam"}


def test_export_writes_only_a_new_file_outside_the_run_or_a_regular_file_with_force(tmp_path):
    """The write policy of outputs a user names: never a device, folder or link; an existing file only with
    --force; never inside the run's results folder; each refusal one line, and nothing touched."""
    layout = _run(tmp_path)
    args = ("export", "--format", "madrylab", "--run", layout.results, "--alpha", 0.5, "--out")
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    link = tmp_path / "link.pt"
    link.symlink_to(mine)
    datamodels = Path(layout.datamodels("0.5"))
    before = datamodels.read_bytes()
    for out, message in [
        (mine, "exists; give --force to replace it, or name a new file"),
        (link, "is a symbolic link; name a new file (dmflow replaces only regular files)"),
        (tmp_path, "is a folder; name a new file (dmflow replaces only regular files)"),
        (Path("/dev/null"), "is not a regular file; name a new file (dmflow replaces only regular files)"),
        (datamodels, "inside the run's results folder"),
        (Path(layout.results) / "mine.pt", "inside the run's results folder"),
    ]:
        proc = dmflow_cli(*args, out, check=False)
        assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, (out, proc.stderr)
        assert proc.stderr.startswith(f"dmflow export: {out}: ") and message in proc.stderr, (out, proc.stderr)
    assert mine.read_text() == "mine" and link.is_symlink() and datamodels.read_bytes() == before
    assert Path("/dev/null").is_char_device()
    dmflow_cli(*args, mine, "--force")  # a regular file, replaced on request
    assert set(torch.load(mine, weights_only=True)) == {"weight", "bias", "lam"}
    np.savez(tmp_path / "other.npz", x=np.ones(3))
    proc = dmflow_cli("export", "--format", "madrylab", "--datamodels", tmp_path / "other.npz", "--out", tmp_path / "o.pt", check=False)  # fmt: skip
    assert (
        proc.stderr.strip()
        == f"dmflow export: {tmp_path / 'other.npz'}: not a datamodels file (no weight, bias, lam); give datamodels/ALPHA.npz"
    )


def test_workflow_writers_replace_only_regular_files(tmp_path):
    """atomic_path, under every stage's writer: a folder, link or device at the output path is refused."""
    from dmflow.core.io import FileError, atomic_save_json

    (tmp_path / "dir.json").mkdir()
    (tmp_path / "link.json").symlink_to(tmp_path / "target.json")
    for name, kind in (("dir.json", "a folder"), ("link.json", "a symbolic link")):
        with pytest.raises(FileError, match=f"is {kind}; dmflow replaces only regular files it wrote"):
            atomic_save_json(tmp_path / name, {"a": 1})
    assert not (tmp_path / "target.json").exists()
    atomic_save_json(tmp_path / "plain.json", {"a": 1})
    atomic_save_json(tmp_path / "plain.json", {"a": 2})  # a regular file it wrote: replaced


# --- faults and bad input, round three (issue 34 items 7, 8) -----------------------------------------


def _npy_with_shape(path, shape_text: str):
    """A float32 [50, 6] .npy whose header is rewritten to claim ``shape_text`` (e.g. a negative dimension)."""
    np.save(path, np.zeros((50, 6), np.float32))
    data = path.read_bytes()
    end = data.index(b"\n") + 1
    header = data[10:end].decode("latin1").replace("(50, 6)", shape_text).rstrip()
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    path.write_bytes(data[:8] + len(header).to_bytes(2, "little") + header.encode("latin1") + data[end:])
    return path


def _pickle(path):
    import pickle

    path.write_bytes(pickle.dumps(np.zeros((50, 6))))
    return path


def _text(path):
    path.write_text("0.1,0.2\n0.3,0.4\n")
    return path


def _npz_file(path):
    with open(path, "wb") as fh:
        np.savez(fh, scores=np.zeros((50, 6)))
    return path


MALFORMED_NPY = {
    "negative dimension": (lambda p: _npy_with_shape(p, "(-50, 6)"), "its header claims shape [-50, 6] (negative)"),
    "negative second dimension": (lambda p: _npy_with_shape(p, "(50, -6)"), "claims shape [50, -6] (negative)"),
    "header past the data": (
        lambda p: _npy_with_shape(p, "(99999999999999999999, 6)"),
        "claims shape [99999999999999999999, 6] of float32 (2399999999999999999976 bytes) but the file holds 1200",
    ),
    "a text file": (_text, "is not an .npy file (it starts with b'0.1,0.2\\n', not numpy's b'\\x93NUMPY')"),
    "a pickle": (_pickle, "is a Python pickle, not an .npy array (dmflow never unpickles a file)"),
    "an npz": (_npz_file, "is an .npz archive; give"),
    "empty": (lambda p: p.write_bytes(b"") or p, "is empty, not an .npy array"),
}


def test_a_malformed_npy_is_named_for_what_it_is_in_one_line_by_score_attribution_and_import_store(tmp_path):
    layout = _run(tmp_path)
    good = _arrays(tmp_path)
    for name, (make, message) in MALFORMED_NPY.items():
        bad = make(tmp_path / f"{name}.npy")
        with pytest.raises(StoreError) as err:
            score_run_attribution(layout.results, bad, alpha=0.5, name="m")
        assert message in str(err.value) and str(bad) in str(err.value) and "\n" not in str(err.value), str(err.value)
        with pytest.raises(StoreError) as err:
            import_store(bad, good["margins"], tmp_path / "store", alpha=0.5, split="eval")
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    proc = dmflow_cli(
        "score-attribution", "--run", layout.results, "--alpha", 0.5, "--scores", bad, "--name", "m", check=False
    )
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and message in proc.stderr
    assert not (tmp_path / "store").exists() and not (tmp_path / "results" / "evaluation" / "0.5" / "methods").exists()


def test_imported_margins_beyond_float32_are_named_not_called_diverged(tmp_path):
    margins = np.zeros((12, 2, 3))
    margins[4, 1, 2] = 1e300
    paths = _arrays(tmp_path, margins=margins)
    with pytest.raises(StoreError) as err:
        import_store(paths["masks"], paths["margins"], tmp_path / "store", alpha=0.5, split="eval")
    assert str(err.value) == (
        f"{paths['margins']}: row 4, replicate 1, target 2: margin 1e+300 is finite but beyond float32's range "
        "(+-3.4e+38), in which dmflow stores margins; rescale the margins (or mark such models diverged with a "
        "status file)"
    )


def test_imported_seeds_beyond_int64_are_refused_not_wrapped(tmp_path):
    seeds = np.zeros((12, 2), np.uint64)
    seeds[7, 0] = 2**64 - 1
    paths = _arrays(tmp_path, seeds=seeds)
    with pytest.raises(StoreError, match=r"row 7, replicate 0: seed 18446744073709551615 is beyond int64"):
        import_store(
            paths["masks"], paths["margins"], tmp_path / "store", alpha=0.5, split="eval", seeds=paths["seeds"]
        )
    seeds[7, 0] = 2**63 - 1  # the largest seed int64 holds is kept as it is
    paths = _arrays(tmp_path, seeds=seeds)
    import_store(paths["masks"], paths["margins"], tmp_path / "store", alpha=0.5, split="eval", seeds=paths["seeds"])
    assert open_store(tmp_path / "store").seeds[7, 0] == 2**63 - 1


def test_a_failed_import_leaves_no_folder_it_created(tmp_path):
    paths = _arrays(tmp_path, masks=_int_masks_with_a_two())
    out = tmp_path / "new" / "deeper" / "store"
    with pytest.raises(StoreError, match="row 4 holds 2 at column 0"):
        import_store(paths["masks"], paths["margins"], out, alpha=0.5, split="eval")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there stays
    with pytest.raises(StoreError):
        import_store(paths["masks"], paths["margins"], tmp_path / "kept" / "store", alpha=0.5, split="eval")
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "store").exists()


def test_constant_scores_say_the_lds_is_undefined(tmp_path):
    import warnings

    layout = _run(tmp_path)
    np.save(tmp_path / "ones.npy", np.ones((50, 6)))  # every mask holds 25 ones: mask @ ones is 25 everywhere
    with pytest.raises(StoreError) as err:
        score_run_attribution(layout.results, tmp_path / "ones.npy", alpha=0.5, name="ones")
    assert "LDS undefined: constant predictions" in str(err.value) and "every one of the 6 targets" in str(err.value)
    proc = dmflow_cli(
        "score-attribution", "--run", layout.results, "--alpha", 0.5, "--scores", tmp_path / "ones.npy",
        "--name", "ones", check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "LDS undefined" in proc.stderr
    scores = np.random.default_rng(0).normal(size=(50, 6))
    scores[:, 2] = 7.0  # one target's predictions constant
    np.save(tmp_path / "some.npy", scores)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table, summary = score_run_attribution(layout.results, tmp_path / "some.npy", alpha=0.5, name="some")
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert np.isnan(table.lds_mean[2]) and np.isfinite(table.lds_mean.drop(2)).all()
    assert summary["counts"]["targets_constant_predictions"] == 1 and np.isfinite(summary["lds_mean"]["mean"])
    proc = dmflow_cli(
        "score-attribution", "--run", layout.results, "--alpha", 0.5, "--scores", tmp_path / "some.npy",
        "--name", "some", check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and "1 of 6 targets: LDS undefined: constant predictions" in proc.stderr
    assert "RuntimeWarning" not in proc.stderr


def test_output_names_at_the_file_name_limit_are_written_and_longer_ones_are_one_line(tmp_path):
    """The temporary name beside an output adds 16+ characters; a name the filesystem takes is still written."""
    from dmflow.core.io import atomic_save_npz, load_npz

    layout = _run(tmp_path)
    out = tmp_path / ("x" * 252 + ".pt")  # 255 bytes
    dmflow_cli("export", "--format", "madrylab", "--run", layout.results, "--alpha", 0.5, "--out", out)
    assert set(torch.load(out, weights_only=True)) == {"weight", "bias", "lam"}
    atomic_save_npz(tmp_path / ("y" * 251 + ".npz"), {"a": np.arange(3)})
    assert list(load_npz(tmp_path / ("y" * 251 + ".npz"))["a"]) == [0, 1, 2]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    proc = dmflow_cli(
        "export", "--format", "madrylab", "--run", layout.results, "--alpha", 0.5, "--out", tmp_path / ("z" * 256),
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "File name too long (a file name may have at most 255 bytes, a path 4096)" in proc.stderr


def test_import_store_into_a_path_that_is_a_file_is_one_line(tmp_path):
    _arrays(tmp_path)
    (tmp_path / "taken").write_text("not a folder")
    proc = dmflow_cli(
        "import-store", "--source", tmp_path, "--alpha", 0.5, "--split", "eval", "--out-dir", tmp_path / "taken",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert f"dmflow import-store: {tmp_path / 'taken'}: File exists (a file is where a folder is needed)" in proc.stderr
    assert (tmp_path / "taken").read_text() == "not a folder"


class _OwnFilesystem:
    """A folder on a tmpfs of its own where this process may mount one (as root), else a plain folder."""

    def __init__(self, path, size: str) -> None:
        import subprocess

        self.path = path
        path.mkdir()
        self.mounted = (
            os.geteuid() == 0
            and subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True
            ).returncode
            == 0
        )

    def read_only(self, folder) -> None:
        """Make ``folder`` (the whole tmpfs, when mounted) read-only to this process."""
        import subprocess

        if self.mounted:
            subprocess.run(["mount", "-o", "remount,ro", self.path], check=True)
        elif os.geteuid() != 0:
            folder.chmod(0o555)
        else:
            pytest.skip("root, and no tmpfs can be mounted here: no folder is read-only to this process")

    def close(self) -> None:
        import subprocess

        if self.mounted:
            subprocess.run(["umount", "-l", self.path], check=False)


@pytest.fixture
def own_filesystem(tmp_path):
    made = []

    def make(size="4m"):
        made.append(_OwnFilesystem(tmp_path / f"fs{len(made)}", size))
        return made[-1]

    yield make
    for fs in made:
        fs.close()


def test_a_read_only_output_folder_is_one_line_for_import_export_and_score(own_filesystem, tmp_path):
    fs = own_filesystem()
    layout = _run(fs.path)
    np.save(tmp_path / "s.npy", np.random.default_rng(0).normal(size=(50, 6)))
    fs.read_only(fs.path / "results" / "evaluation" / "0.5")
    fs.read_only(fs.path)
    runs = {
        "import-store": ("--source", fs.path / "arrays", "--alpha", 0.5, "--split", "eval", "--out-dir", fs.path / "x"),
        "export": ("--format", "madrylab", "--run", layout.results, "--alpha", 0.5, "--out", fs.path / "dm.pt"),
        "score-attribution": (
            "--run", layout.results, "--alpha", 0.5, "--scores", tmp_path / "s.npy", "--name", "s",
        ),
    }  # fmt: skip
    for command, args in runs.items():
        proc = dmflow_cli(command, *args, check=False)
        assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, (command, proc.stderr)
        assert proc.stderr.startswith(f"dmflow {command}: {fs.path}") and (
            "Read-only file system" in proc.stderr or "Permission denied" in proc.stderr
        ), (command, proc.stderr)


def test_a_full_disk_is_one_line_naming_the_path_and_the_space_needed(own_filesystem, tmp_path):
    from dmflow.core.io import atomic_path, atomic_save_npz

    fs = own_filesystem("1m")
    if not fs.mounted:
        pytest.skip("no tmpfs can be mounted here (needs root): no disk to fill")
    with pytest.raises(OSError) as err:
        atomic_save_npz(fs.path / "big.npz", {"a": np.zeros(2**18)})  # 2 MB
    assert err.value.filename == str(fs.path / "big.npz")
    assert "no space left on its device (it needs ~2.0 MB, " in err.value.strerror and "MB free)" in err.value.strerror
    with pytest.raises(OSError) as err:  # a writer that does not say its size: found out as it writes
        with atomic_path(fs.path / "stream.bin") as tmp:
            with open(tmp, "wb") as fh:
                for _ in range(4):
                    fh.write(b"x" * 2**19)
    assert err.value.filename == str(fs.path / "stream.bin") and "no space left on its device (" in str(err.value)
    assert not list(fs.path.iterdir())  # no file, no temporary
    masks = np.zeros((4000, 1000), bool)
    masks[:, :500] = True
    np.save(tmp_path / "masks.npy", masks)
    np.save(tmp_path / "margins.npy", np.zeros((4000, 2, 100), np.float32))  # a 3.3 MB store
    proc = dmflow_cli(
        "import-store", "--source", tmp_path, "--alpha", 0.5, "--split", "eval", "--out-dir", fs.path / "store",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert (
        f"dmflow import-store: {fs.path / 'store' / 'masks.npy'}: no space left on its device (it needs ~"
        in proc.stderr
    )
    assert not list(fs.path.iterdir())
