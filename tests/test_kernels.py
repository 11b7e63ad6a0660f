"""The dispatch point of CPU-specific kernels: a trick runs only where it is forced or measured faster here."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dmflow.core import kernels
from dmflow.lasso.accumulate import count_moments, cross_kernel, gram_kernel


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """Every test starts with nothing forced or cached (the process-wide state of the dispatch point)."""
    monkeypatch.delenv(kernels.ENV, raising=False)
    kernels.force(None)
    yield
    kernels.force(None)


def test_settings_name_a_kernel_per_kind_and_anything_else_is_one_line():
    assert kernels.parse("float32") == {"gram": "float32", "cross": "float32", "train": "float32"}
    assert kernels.parse("int8") == {"gram": "int8", "cross": "int8"}  # the kinds that have it
    assert kernels.parse("gram=int8, cross=float32") == {"gram": "int8", "cross": "float32"}
    assert kernels.parse({"train": "auto"}) == {"train": "auto"}
    assert kernels.parse("") == {} and kernels.parse(None) == {}
    for bad, message in [
        ("fp8", "kernels='fp8': not a kernel; allowed: auto, bf16, float32, int8 or kind=kernel"),
        ("gram=bf16", "kernels.gram='bf16': allowed: auto, float32, int8"),
        ("matmul=int8", "kernels: unknown kind 'matmul'; kinds: gram, cross, train"),
        ("gram=int8,cross", "'cross' is not kind=kernel"),
    ]:
        with pytest.raises(kernels.KernelError, match=message.replace("(", r"\(").replace(")", r"\)")):
            kernels.parse(bad)


def test_a_forced_kernel_wins_over_the_environment_which_wins_over_measuring(monkeypatch):
    never = {"float32": lambda: pytest.fail("a forced kind is not measured"), "int8": lambda: None}
    monkeypatch.setenv(kernels.ENV, "gram=int8")
    assert kernels.choose("gram", never) == "int8"
    kernels.force("gram=float32")
    assert kernels.choose("gram", never) == "float32"
    assert kernels.chosen()["gram"] == "float32"


def test_a_trick_is_chosen_only_where_it_measures_faster_than_float32(monkeypatch):
    monkeypatch.setattr(kernels, "capable", lambda name: True)  # as on a CPU with int8 units
    calls = {"slow": 0}

    def slow():
        calls["slow"] += 1
        time.sleep(0.02)

    fast = {"float32": lambda: time.sleep(0.005), "int8": lambda: None}
    assert kernels.choose("gram", fast, shape=(1,)) == "int8"
    assert kernels.choose("cross", {"float32": lambda: None, "int8": slow}, shape=(1,)) == "float32"
    assert calls["slow"] == 1  # its warm-up already lost by more than LOSES: not timed again
    assert kernels.choose("cross", {"float32": lambda: None, "int8": slow}, shape=(1,)) == "float32"
    assert calls["slow"] == 1  # measured once per process and shape class
    assert kernels.chosen() == {"gram": "int8", "cross": "float32"}


def test_without_the_units_a_candidate_needs_float32_runs_unmeasured(monkeypatch):
    monkeypatch.setattr(kernels, "capable", lambda name: name == "float32")
    probes = {"float32": lambda: pytest.fail("nothing to compare: not timed"), "int8": lambda: None}
    assert kernels.choose("gram", probes) == "float32"


def test_the_moments_probes_choose_a_kernel_that_gives_the_same_counts():
    """Whatever this machine chooses, the counts equal those of each path forced (exact integers)."""
    rng = np.random.default_rng(0)
    x = rng.random((400, 48)) < 0.5
    y = rng.standard_normal((400, 5))
    rows = np.arange(400)
    assert gram_kernel(400, 48) in ("float32", "int8")
    assert cross_kernel(400, 48, 5) in ("float32", "int8")
    (chosen,) = count_moments(x, y, [rows], block_rows=128)
    for gram in ("float32", "int8"):
        (forced,) = count_moments(x, y, [rows], block_rows=128, gram=gram, cross="float32")
        np.testing.assert_array_equal(forced.sum_x, chosen.sum_x)
        np.testing.assert_array_equal(forced.grams[0], chosen.grams[0])
