"""Load a finished run in a notebook: ``run = dmflow.load_run("results/default")``.

run.top_influencers(target_id=1165, k=10)   # helpers and harmers with labels and weights
run.predict(mask)                           # datamodel predictions for one or many masks
run.leakage()                               # ranked train-test leakage candidates
run.evaluation, run.summary                 # per-target scores and headline numbers
run.lds(scores, name="trak")                # any attribution [n, T] scored like the datamodels
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dmflow.analysis.influence import top_influencers
from dmflow.core.io import load_json, load_npz
from dmflow.core.layout import Layout, alpha_dir
from dmflow.core.tables import DATAMODEL_SCORES, INFLUENCERS, LEAKAGE
from dmflow.evaluation.metrics import predict
from dmflow.stages.analysis import leakage_ranking
from dmflow.stages.evaluate import score_attribution
from dmflow.store.formats import Datamodels, Store, open_datamodels, open_store


@dataclass
class DatamodelRun:
    """The datamodels of one alpha of a finished run, with its data and tables."""

    layout: Layout
    alpha: str
    datamodels: Datamodels
    data: dict[str, np.ndarray]

    @property
    def results(self) -> Path:
        return Path(self.layout.results)

    @property
    def weight(self) -> np.ndarray:
        """float32 [n, T]: weight[i, t] is training example i's effect on target t's margin."""
        return self.datamodels.weight

    @property
    def bias(self) -> np.ndarray:
        """float32 [T]."""
        return self.datamodels.bias

    @property
    def target_ids(self) -> np.ndarray:
        """int64 [T]: each target's id in the dataset's test set."""
        return self.datamodels.target_ids

    def target_index(self, target_id: int) -> int:
        """Column of a target id (the id recorded in data.npz)."""
        hits = np.flatnonzero(self.target_ids == target_id)
        if not len(hits):
            raise KeyError(f"target id {target_id} is not among this run's {len(self.target_ids)} targets")
        return int(hits[0])

    def top_influencers(self, target_id: int, k: int = 10) -> pd.DataFrame:
        """The k most helpful and k most harmful training examples of one target."""
        t = self.target_index(target_id)
        helpers, harmers = top_influencers(self.weight, t, k)
        rows = [
            (d, r + 1, int(i), int(self.data["train_ids"][i]), int(self.data["y_train"][i]), float(self.weight[i, t]))
            for d, idx in (("helps", helpers), ("harms", harmers))
            for r, i in enumerate(idx)
        ]
        return pd.DataFrame(rows, columns=[c for c in INFLUENCERS.names if not c.startswith("target")])

    def predict(self, mask: np.ndarray) -> np.ndarray:
        """Predicted margins: [n] mask -> float32 [T]; [m, n] masks -> [m, T]."""
        mask = np.asarray(mask)
        if mask.shape[-1] != self.weight.shape[0]:
            raise ValueError(
                f"a mask needs {self.weight.shape[0]} entries (one per training example), got {mask.shape[-1]}"
            )
        return predict(mask, self.weight, self.bias)

    def leakage(self) -> pd.DataFrame:
        """Train-test leakage candidates for every target, ranked (read from the run when present)."""
        path = Path(self.layout.leakage_table(self.alpha))
        if path.exists():
            return LEAKAGE.read(path)
        return leakage_ranking(self.weight, self.data, self.target_ids, image_shape=None)

    @property
    def evaluation(self) -> pd.DataFrame:
        """Per-target held-out scores (LDS, Pearson, ceilings, ...)."""
        return DATAMODEL_SCORES.read(self.layout.eval_table(self.alpha))

    @property
    def summary(self) -> dict:
        """The evaluation's headline numbers (``evaluation/{alpha}/summary.json``)."""
        return load_json(Path(self.layout.eval_summary(self.alpha)), rebuild="rerun the workflow")

    def lds(
        self, scores: np.ndarray | str | Path, *, name: str | None = None, transpose: bool | None = None
    ) -> tuple[pd.DataFrame, dict]:
        """Score any attribution method on this run's eval store exactly as the datamodels are scored.

        An attribution's prediction for an eval mask is ``mask @ scores``; the scores are
        what ``evaluate`` reports (``dmflow.evaluation.metrics.score``, the one
        implementation): LDS (Spearman) and Pearson against one seed and against the seed
        mean, the noise ceilings and the fraction of the ceiling, per target and as a
        summary. ``run.lds(run.weight)`` gives the evaluation's own correlations exactly.

        Parameters
        ----------
        scores : int or float array [n, T] (or [T, n]), or a ``.npy`` path
            ``scores[i, t]``: training example i's attribution to target t.
        name : str, optional
            Also write ``evaluation/{alpha}/methods/{name}.csv`` and ``.json`` (a safe file
            name; only that method's earlier files are replaced).
        transpose : bool, optional
            True: ``scores`` is [T, n]; False: [n, T]; None: [n, T] when it fits (always when
            n == T), else [T, n].

        Returns
        -------
        table : DataFrame
            One row per target (``target``, ``target_id``, ``pearson_single``, ``lds_single``,
            ``pearson_mean``, ``lds_mean``, ``replicate_corr``, ``ceiling_single``, ``ceiling_mean``).
        summary : dict
            Means and medians, ``fraction_of_ceiling``, counts, the method.
        """
        written = {}
        if name is not None:
            written = {
                "table": Path(self.layout.method_table(self.alpha, name)),
                "summary": Path(self.layout.method_summary(self.alpha, name)),
            }
        return score_attribution(
            scores,
            Path(self.layout.store(self.alpha, "eval")),
            name=name,
            target_ids=self.target_ids,
            transpose=transpose,
            **written,
        )

    def store(self, split: str = "eval") -> Store:
        """The memory-mapped store of a split (``fit`` or ``eval``)."""
        return open_store(Path(self.layout.store(self.alpha, split)))


def load_run(results: str | Path, alpha: float | str | None = None) -> DatamodelRun:
    """Open a finished run; ``alpha`` may be omitted when the run has a single one."""
    layout = Layout(results)
    available = sorted(p.stem for p in Path(layout.datamodels("x")).parent.glob("*.npz"))
    if not available:
        raise FileNotFoundError(f"{results}: no datamodels/*.npz (has the workflow finished?)")
    if alpha is None:
        if len(available) > 1:
            raise ValueError(f"{results} has alphas {available}; pass alpha=")
        key = available[0]
    else:
        key = alpha_dir(alpha)
        if key not in available:
            raise ValueError(f"{results}: alpha {alpha} not found; available: {available}")
    return DatamodelRun(layout, key, open_datamodels(Path(layout.datamodels(key))), load_npz(Path(layout.data())))
