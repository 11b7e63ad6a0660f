"""make_masks promises: fixed subset size, determinism per (seed, alpha, split, chunk)."""

import numpy as np
import pytest

from dmflow.stages.masks import make_masks
from dmflow.store.masks import chunk_masks, draw_masks, subset_size


@pytest.mark.parametrize("n,alpha", [(100, 0.5), (101, 0.5), (1000, 0.1), (37, 0.9)])
def test_every_row_has_exactly_round_alpha_n_ones(n, alpha):
    masks = chunk_masks(n, alpha, "fit", chunk=0, chunk_size=64, seed=1)
    assert masks.dtype == np.bool_ and masks.shape == (64, n)
    assert (masks.sum(axis=1) == round(alpha * n)).all()


def test_same_key_same_masks_and_chunks_differ():
    a = chunk_masks(200, 0.5, "fit", chunk=3, chunk_size=50, seed=7)
    assert np.array_equal(a, chunk_masks(200, 0.5, "fit", chunk=3, chunk_size=50, seed=7))
    for other in (
        chunk_masks(200, 0.5, "fit", chunk=4, chunk_size=50, seed=7),
        chunk_masks(200, 0.5, "eval", chunk=3, chunk_size=50, seed=7),
        chunk_masks(200, 0.5, "fit", chunk=3, chunk_size=50, seed=8),
        chunk_masks(200, 0.25, "fit", chunk=3, chunk_size=50, seed=7),
    ):
        assert not np.array_equal(a, other)


def test_masks_are_uniform_over_examples():
    masks = chunk_masks(50, 0.5, "fit", chunk=0, chunk_size=4000, seed=0)
    freq = masks.mean(axis=0)
    assert np.abs(freq - 0.5).max() < 0.05  # ~6 standard errors
    # two examples are in the same subset about as often as independence would give
    both = (masks[:, 0] & masks[:, 1]).mean()
    assert abs(both - 0.5 * 24 / 49) < 0.04


def test_extension_keeps_existing_chunks(tmp_path):
    """A chunk's masks never depend on how many chunks there are."""
    np.savez(tmp_path / "data.npz", y_train=np.zeros(80, np.int64))
    first = [
        make_masks(tmp_path / "data.npz", tmp_path / f"{c}.npy", alpha=0.5, split="fit", chunk=c, chunk_size=10, seed=0)
        for c in range(2)
    ]
    more = [chunk_masks(80, 0.5, "fit", chunk=c, chunk_size=10, seed=0) for c in range(4)]
    assert all(np.array_equal(first[c], more[c]) for c in range(2))
    assert np.array_equal(np.load(tmp_path / "1.npy"), first[1])


def test_alpha_too_small_for_n_is_refused():
    with pytest.raises(ValueError, match="subset size 0"):
        draw_masks(10, 0.01, 2, rng=np.random.default_rng(0))
    assert subset_size(0.5, 9) == 4
