"""Reliability guarantees (docs/guarantees.md), each proven here with real runs and real files."""

import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmflow.config import ConfigError, validate_config
from dmflow.core.schema import load_schema

from helpers import Workflow, dmflow_cli, planted_fit, read_npz, tiny_config, write_store_folder


@pytest.fixture()
def chunks_for_collect(tmp_path, tiny_data):
    """data.npz, one chunk of 20 masks and its trained file (logistic regressions, one epoch)."""
    from dmflow.stages.masks import make_masks
    from dmflow.stages.train import train_chunk
    from dmflow.training.settings import TrainSettings

    np.savez(tmp_path / "data.npz", **tiny_data)
    make_masks(tmp_path / "data.npz", tmp_path / "00000.npy", alpha=0.5, split="fit", chunk=0, chunk_size=20, seed=0)
    train_chunk(
        tmp_path / "data.npz",
        tmp_path / "00000.npy",
        tmp_path / "t0.npz",
        seed=0,
        alpha=0.5,
        split="fit",
        chunk=0,
        replicates=1,
        settings=TrainSettings(arch="logreg", epochs=1, batch_size=30, device="cpu"),
    )
    return tmp_path / "data.npz", tmp_path / "00000.npy", tmp_path / "t0.npz"


def _arrays(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _same_arrays(a, b):
    """Equal results: the same arrays bit for bit, but the provenance member (where and with what it ran)."""
    a, b = ({k: v for k, v in x.items() if k != "provenance"} for x in (a, b))
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind in "fc") for k in a)


def _result_json(path: Path) -> dict:
    """A JSON result without its provenance block and the seal over it (``dmflow.core.io.SEAL``)."""
    from dmflow.core.io import SEAL

    return {k: v for k, v in json.loads(path.read_text()).items() if k not in ("provenance", SEAL)}


@pytest.mark.workflow
def test_kill_9_then_rerun_incomplete_retrains_nothing_finished_and_matches_an_uninterrupted_run(tmp_path, request):
    cfg_overrides = {"masks.fit_models": 160}  # 4 fit chunks: time to kill between them
    ref = Workflow(tmp_path / "ref")
    targets = ("results/datamodels/0.5.npz", "results/evaluation/0.5/summary.json")  # what is compared
    ref.write_config(tiny_config("results", **cfg_overrides))
    # The uninterrupted run, in its own folder, side by side with the killed one (threads are fixed by the
    # config, so load cannot change a result); it is waited for before anything is compared.
    ref_proc = ref.start(*targets)
    request.addfinalizer(lambda: Workflow.stop(ref_proc))

    run = Workflow(tmp_path / "killed")
    run.write_config(tiny_config("results", **cfg_overrides))
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "1", *targets],
        cwd=run.root,
        env=Workflow.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(list((run.results / "train").glob("*/fit/*.npz"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    left = run.mtimes("results/train/**/*.npz")
    assert 2 <= len(left) < 5, "the kill should land while chunks are still training"
    for path in left:  # whatever was left is complete: only whole files have the final name
        assert _arrays(run.root / path)["margins"].shape[2] == 30
    # jobs run one at a time: every chunk but the newest was recorded as finished by Snakemake
    # (the newest may have been renamed into place an instant before the kill, and is redone)
    newest = max(left, key=left.get)
    finished = {k: v for k, v in left.items() if k != newest}

    run.run("--unlock")  # a killed snakemake leaves its lock behind
    run.run("--rerun-incomplete", *targets)
    ref.finish(ref_proc)
    after = run.mtimes("results/train/**/*.npz")
    assert {k: after[k] for k in finished} == finished  # finished chunks were not retrained
    for rel in after:
        assert (run.root / rel).read_bytes() == (ref.root / rel).read_bytes(), rel  # byte-identical chunks
    assert not [p for p in run.results.rglob(".*") if ".tmp" in p.name]  # no temporary outlives the run
    assert _same_arrays(
        _arrays(run.results / "datamodels" / "0.5.npz"), _arrays(ref.results / "datamodels" / "0.5.npz")
    )
    ref_summary = _result_json(ref.results / "evaluation" / "0.5" / "summary.json")
    assert _result_json(run.results / "evaluation" / "0.5" / "summary.json") == ref_summary

    # adding an alpha trains only that alpha's chunks
    cfg = tiny_config("results", **cfg_overrides)
    cfg["masks"]["alphas"] = [0.5, 0.25]
    ref.write_config(cfg)
    planned = ref.planned_jobs(*targets, "results/datamodels/0.25.npz", "results/evaluation/0.25/summary.json")
    assert planned["train_chunk"] == 4 + 1  # the new alpha's fit and eval chunks
    assert planned["make_masks"] == 5 and "prepare_data" not in planned


def test_fit_refuses_a_store_whose_checksum_does_not_match(tmp_path):
    """The moments (the only stage of the fit that reads the store) refuse a modified store and write nothing."""
    x, y, _ = planted_fit(t=3)
    store = write_store_folder(tmp_path, x, y)
    margins = np.load(store / "margins.npy")
    margins[5, 0, 1] += 1.0
    np.save(store / "margins.npy", margins)
    out = tmp_path / "moments"
    proc = dmflow_cli("moments", "--store", store, "--val-fraction", "0.1", "--out-dir", out, check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        last
        == f"dmflow moments: {store / 'margins.npy'}: sha256 differs from manifest.json (the store was modified or corrupted)"
    )
    assert not out.exists()


def test_a_chunk_that_cannot_be_written_leaves_no_file(tmp_path, tiny_data):
    """The disk fills up (a file-size limit) while a chunk is written: the job fails, no file remains."""
    from dmflow.stages.masks import make_masks

    np.savez(tmp_path / "data.npz", **tiny_data)
    make_masks(tmp_path / "data.npz", tmp_path / "m.npy", alpha=0.5, split="fit", chunk=0, chunk_size=200, seed=0)

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "out" / "00000.npz"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dmflow",
            "train-chunk",
            "--data",
            str(tmp_path / "data.npz"),
            "--masks",
            str(tmp_path / "m.npy"),
            "--alpha",
            "0.5",
            "--split",
            "fit",
            "--chunk",
            "0",
            "--model",
            '{"arch": "logreg"}',
            "--train",
            '{"epochs": 1, "batch_size": 60, "optimizer": "adam", "lr": 0.01, "weight_decay": 0, "momentum": 0.9, "stack_size": 200, "device": "cpu"}',
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
    )
    assert proc.returncode != 0 and "File too large" in proc.stderr
    assert list(out.parent.iterdir()) == []  # neither the chunk nor a temporary file


@pytest.mark.parametrize("damage", ["one flipped bit", "another chunk's masks", "ints", "designed"])
def test_a_masks_file_that_is_not_the_seeds_draw_is_refused_before_training(tmp_path, tiny_data, damage):
    """Masks files carry no checksum; train-chunk draws a fit or eval chunk's again from the seed and refuses any
    other. Counterfactual masks are designed, not drawn: any bool [rows, n] trains."""
    from dmflow.stages.masks import make_masks

    np.savez(tmp_path / "data.npz", **tiny_data)
    masks = tmp_path / "m.npy"
    kw = dict(alpha=0.5, split="fit", chunk_size=20, seed=0)
    make_masks(tmp_path / "data.npz", masks, chunk=0, **kw)
    if damage == "one flipped bit":
        rows = np.load(masks)
        rows[7, 3] = ~rows[7, 3]
        np.save(masks, rows)
        expected = f"dmflow train-chunk: {masks}: row 7 is not what seed 0 draws for chunk 0 of split 'fit'"
    elif damage == "another chunk's masks":
        make_masks(tmp_path / "data.npz", masks, chunk=1, **kw)
        expected = f"dmflow train-chunk: {masks}: row 0 is not what seed 0 draws for chunk 0 of split 'fit'"
    elif damage == "ints":
        np.save(masks, np.load(masks).astype(np.int64))
        expected = f"dmflow train-chunk: {masks}: masks int64[20, {tiny_data['y_train'].shape[0]}] are not bool"
    else:
        make_masks(tmp_path / "data.npz", masks, chunk=1, **kw)  # not chunk 0's draw, as designed masks are not
    split = "counterfactual" if damage == "designed" else "fit"
    out = tmp_path / "out.npz"
    proc = dmflow_cli(
        "train-chunk",
        "--data",
        tmp_path / "data.npz",
        "--masks",
        masks,
        "--alpha",
        "0.5",
        "--split",
        split,
        "--chunk",
        "0",
        "--model",
        '{"arch": "logreg"}',
        "--train",
        '{"epochs": 1, "batch_size": 10, "optimizer": "adam", "lr": 0.01, "weight_decay": 0, "momentum": 0.9, "stack_size": 20, "device": "cpu"}',
        "--out",
        out,
        check=False,
    )
    if damage == "designed":
        assert proc.returncode == 0, proc.stderr
        assert read_npz(out)["margins"].shape[0] == 20
        return
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(expected)
    assert not out.exists()


_KEYS = {section: list(spec.get("properties", {})) for section, spec in load_schema()["properties"].items()}
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.one_of(st.integers(-5, 5), st.floats(-2, 2), st.text(max_size=3)), max_size=3),
)
_section = st.dictionaries(st.sampled_from(sum(_KEYS.values(), []) + ["bogus"]), _values, max_size=4)
_config = st.dictionaries(st.sampled_from(list(_KEYS) + ["unknown"]), st.one_of(_section, _values), max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_config)
def test_fuzzed_configs_give_a_one_line_config_error_or_a_valid_config(raw):
    try:
        cfg = validate_config(raw)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert cfg["masks"]["fit_models"] % cfg["masks"]["chunk_size"] == 0
        assert all(0 < a < 1 for a in cfg["masks"]["alphas"])


def test_results_path_cannot_climb_out_with_dot_dot():
    with pytest.raises(ConfigError, match="must not contain '..'"):
        validate_config({"results": "results/../../etc"})


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_get_the_mode_a_plain_open_would_give(tmp_path, umask):
    """Collaborators on a shared folder can read every output: 0666 minus the umask, as open() gives."""
    import pandas as pd

    from dmflow.core.io import atomic_save_json, atomic_save_npy, atomic_save_npz, write_table

    old = os.umask(umask)
    try:
        atomic_save_npz(tmp_path / "a.npz", {"x": np.arange(3)})
        atomic_save_npy(tmp_path / "b.npy", np.arange(3))
        atomic_save_json(tmp_path / "c.json", {"x": 1})
        write_table(pd.DataFrame({"x": [1]}), tmp_path / "d.parquet")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["a.npz", "b.npy", "c.json", "d.parquet", "plain"], 0o666 & ~umask)


def test_a_writer_removes_the_temporaries_a_killed_writer_left_of_its_output(chunks_for_collect, tmp_path):
    """kill -9 during collect leaves full-size temporaries; the next collect removes them, and only them."""
    from dmflow.stages.collect import collect

    data, masks, trained = chunks_for_collect
    store = tmp_path / "store"
    store.mkdir()
    stale = [
        store / ".margins.npy.k2j4x9ab.tmp.npy",
        store / ".masks.npy.qqq_1234.tmp.npy",
        store / ".manifest.json.zz9.tmp",
    ]
    for path in stale:
        path.write_bytes(b"\0" * 1000)  # what a killed collect leaves behind
    (store / "notes.txt").write_text("mine")
    collect(
        [masks],
        [trained],
        store,
        data=data,
        alpha=0.5,
        split="fit",
        seed=0,
        replicates=1,
        chunk_size=20,
        max_diverged_fraction=0.05,
    )
    assert not any(p.exists() for p in stale)
    assert not list(store.glob(".*"))
    assert (store / "notes.txt").read_text() == "mine"


def _flipped(path, at: int):
    """``path`` with bit 0 of byte ``at`` flipped (in place); the original bytes are returned."""
    raw = path.read_bytes()
    path.write_bytes(raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1 :])
    return raw


def test_an_edited_moments_manifest_is_refused_not_fitted(tmp_path):
    """The issue's case: the manifest's row counts divide the moments; changing "fit": 90 to 80 must not give
    another fit with exit 0. Every JSON file dmflow writes is sealed with its own sha256."""
    from dmflow.stages.moments import moments

    x, y, _ = planted_fit(t=3)
    store = write_store_folder(tmp_path, x, y)
    folder = tmp_path / "moments"
    moments(store, folder, val_fraction=0.1, seed=0)
    manifest_path = folder / "manifest.json"
    text = manifest_path.read_text()
    count = json.loads(text)["counts"]["fit"]
    manifest_path.write_text(text.replace(f'"fit": {count}', f'"fit": {count - 10}'))
    out = tmp_path / "block0.npz"
    proc = dmflow_cli(
        "fit-block",
        "--moments",
        folder,
        "--block",
        "0",
        "--targets-per-job",
        "3",
        "--fit",
        "{}",
        "--out",
        out,
        check=False,
    )
    assert proc.returncode != 0 and not out.exists()
    assert proc.stderr.strip().splitlines()[-1] == (
        f"dmflow fit-block: {manifest_path}: its content differs from its checksum (edited or corrupted); "
        "remove it and rerun the workflow (the moments rule rebuilds it)"
    )


def test_one_flipped_bit_in_any_json_or_npz_the_workflow_writes_is_noticed_by_its_reader(tmp_path):
    """Store and moments manifests, a fit block, the datamodels: a bit flipped anywhere either changes
    nothing the reader returns or is refused in one line naming the file (FileError)."""
    from dmflow.core.io import FileError, atomic_save_npz, load_npz
    from dmflow.lasso.settings import FitSettings
    from dmflow.stages.fit import fit_moments_block, merge_fit
    from dmflow.stages.moments import moments
    from dmflow.store.formats import open_moments, open_store

    x, y, _ = planted_fit(t=3)
    (tmp_path / "store").mkdir()
    store = write_store_folder(tmp_path / "store", x, y)
    moments(store, tmp_path / "moments", val_fraction=0.1, seed=0)
    block = tmp_path / "block0.npz"
    atomic_save_npz(block, fit_moments_block(tmp_path / "moments", 0, targets_per_job=3, settings=FitSettings()))
    merge_fit([block], None, tmp_path / "datamodels.npz")
    readers = {
        store / "manifest.json": lambda: open_store(store).manifest,
        tmp_path / "moments" / "manifest.json": lambda: open_moments(tmp_path / "moments")[1],
        block: lambda: load_npz(block),
        tmp_path / "datamodels.npz": lambda: load_npz(tmp_path / "datamodels.npz"),
    }
    for path, read in readers.items():
        reference = read()
        size = path.stat().st_size
        for at in sorted({*range(0, size, max(1, size // 40)), size - 2}):
            raw = _flipped(path, at)
            try:
                again = read()
            except FileError as exc:
                assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
            else:  # the flip hit bytes that carry nothing (zip padding, JSON whitespace turned into whitespace)
                assert _same(again, reference), (path, at)
            finally:
                path.write_bytes(raw)


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")  # text (a provenance member) has no NaN
    if dataclasses.is_dataclass(a):
        return _same(vars(a), vars(b))
    return a == b


def test_a_json_file_with_integer_keys_reads_back_under_its_seal(tmp_path):
    """Keys become strings in JSON, and sort differently then (10 before 5): the seal is of what is read back.
    The Fashion-MNIST run's counterfactual summary ({k: flip rate} for k = 5..80) was refused before this."""
    from dmflow.core.io import atomic_save_json, load_json

    atomic_save_json(
        tmp_path / "s.json", {"flip_rate_top": {5: 0.1, 10: 0.2, 80: 0.5}, "ks": (5, 10, 80), "r": float("nan")}
    )
    back = load_json(tmp_path / "s.json")
    assert back["flip_rate_top"] == {"5": 0.1, "10": 0.2, "80": 0.5} and back["ks"] == [5, 10, 80]
