"""Every results table's columns, declared once, with the check its writers run and the reader its users call.

The numbers' arrays have their formats in ``dmflow.store.formats``; the answers are tables (csv, or parquet
where they are large). Each is a ``TableSpec``: its columns in order, each with a kind and a meaning. The
computation that makes a table names its columns from here; the stage checks a table against its spec before
writing it (``TableSpec.check``: a missing, extra or mistyped column is a bug, said in one line); every reader
(the summary, the API, a later stage) opens it with ``TableSpec.read``, which refuses a file that lacks a
column in one line naming the file, the columns and what rebuilds it.

Kinds: ``int`` (integer dtype), ``float`` (any real number; NaN where undefined), ``bool``, ``str``.
Columns marked ``since_older=True`` are absent from tables written before they existed; a reader derives them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dmflow.core.errors import FileError

KINDS = ("int", "float", "bool", "str")


@dataclass(frozen=True)
class Column:
    """One column of a table: its name, kind (``KINDS``) and meaning."""

    name: str
    kind: str
    meaning: str
    since_older: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")

    def accepts(self, values: pd.Series) -> bool:
        """Whether a column's dtype is of this kind (an empty column is of every kind)."""
        dtype = values.dtype
        if len(values) == 0:
            return True
        if self.kind == "int":
            return pd.api.types.is_integer_dtype(dtype)
        if self.kind == "float":
            return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        if self.kind == "bool":
            return pd.api.types.is_bool_dtype(dtype)
        return pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype)


@dataclass(frozen=True)
class TableSpec:
    """A results table: what it holds (``what``), its columns in order, and how to rebuild it (``rebuild``).

    ``numbered``: a column repeated as ``{name}1``, ``{name}2``, ... (as many as the run asked for), placed
    after the column ``numbered_after``.
    """

    what: str
    columns: tuple[Column, ...]
    rebuild: str
    numbered: Column | None = None
    numbered_after: str | None = None

    @property
    def names(self) -> list[str]:
        """The declared column names, in order (without the numbered ones)."""
        return [c.name for c in self.columns]

    def expected(self, frame_columns: Sequence[str]) -> list[Column]:
        """The columns a table with these column names must have, in order, numbered ones included."""
        numbered = []
        if self.numbered is not None:
            stem = self.numbered.name
            count = sum(1 for c in frame_columns if str(c).startswith(stem) and str(c)[len(stem) :].isdigit())
            numbered = [Column(f"{stem}{i + 1}", self.numbered.kind, self.numbered.meaning) for i in range(count)]
        out: list[Column] = []
        for column in self.columns:
            out.append(column)
            if column.name == self.numbered_after:
                out += numbered
        return out

    def check(self, frame: pd.DataFrame, *, where: str | Path) -> pd.DataFrame:
        """The table with its columns in the declared order; a ``ValueError`` (a bug in its maker) when a
        column is missing, extra or of another kind."""
        expected = self.expected(list(frame.columns))
        names = [c.name for c in expected]
        missing = [n for n in names if n not in frame.columns]
        extra = [str(c) for c in frame.columns if c not in names]
        if missing or extra:
            raise ValueError(
                f"{where}: the {self.what} table has columns {list(map(str, frame.columns))}; "
                f"missing {missing}, not declared {extra} (dmflow.core.tables)"
            )
        wrong = [f"{c.name} ({frame[c.name].dtype}, not {c.kind})" for c in expected if not c.accepts(frame[c.name])]
        if wrong:
            raise ValueError(f"{where}: the {self.what} table's columns {', '.join(wrong)} (dmflow.core.tables)")
        return frame[names]

    def read(self, path: str | Path) -> pd.DataFrame:
        """The table at ``path`` (parquet for ``.parquet``, tab-separated for ``.tsv``, else csv); a
        ``FileError`` in one line when it cannot be read or lacks a declared column."""
        path = Path(path)
        try:
            if path.suffix == ".parquet":
                frame = pd.read_parquet(path)
            else:
                frame = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
        except FileNotFoundError:
            raise FileError(f"{path}: no such file; {self.rebuild}") from None
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise FileError(f"{path}: cannot be read as the {self.what} table ({reason}); {self.rebuild}") from None
        needed = [c.name for c in self.expected(list(frame.columns)) if not c.since_older]
        missing = [n for n in needed if n not in frame.columns]
        if missing:
            raise FileError(
                f"{path}: the {self.what} table lacks the columns {', '.join(missing)} "
                f"(made by another dmflow, or not by dmflow); {self.rebuild}"
            )
        return frame


def _columns(*specs: tuple[str, str, str] | Column) -> tuple[Column, ...]:
    return tuple(spec if isinstance(spec, Column) else Column(*spec) for spec in specs)


_TARGET = (("target", "int", "the target's column in the datamodels (0..T-1)"),)
_TARGET_ID = (("target_id", "int", "the target's id in the dataset (data.npz's target_ids)"),)
_CORRELATIONS = (
    ("pearson_single", "float", "Pearson r of the prediction with one seed's margins on the eval masks"),
    ("lds_single", "float", "Spearman rank correlation (LDS) with one seed's margins"),
    ("pearson_mean", "float", "Pearson r with the seed mean of the margins"),
    ("lds_mean", "float", "LDS with the seed mean"),
)
_ERRORS = (
    ("mse_single", "float", "mean squared error against one seed's margins"),
    ("mse_mean", "float", "mean squared error against the seed mean"),
)
_CEILINGS = (
    ("replicate_corr", "float", "Pearson r between two seeds' margins (the noise)"),
    ("ceiling_single", "float", "the best Pearson r any predictor can reach against one seed"),
    ("ceiling_mean", "float", "the best Pearson r against the seed mean"),
)
_TRAIN = (
    ("train_index", "int", "the training example's row in the masks (0..n-1)"),
    ("train_id", "int", "the training example's id in the dataset"),
    ("train_label", "int", "the training example's label"),
)
_RERUN = "rerun its rule (delete the file, then run the workflow again)"

DATAMODEL_SCORES = TableSpec(
    "per-target evaluation",
    _columns(
        *_TARGET,
        *_TARGET_ID,
        *_CORRELATIONS,
        *_ERRORS,
        *_CEILINGS,
        ("nnz", "int", "non-zero weights of the target's datamodel"),
        ("lam", "float", "the lambda chosen by validation"),
        ("flags", "int", "the fit's flags (dmflow.core.codes)"),
    ),
    _RERUN,
)
"""``evaluation/{alpha}/targets.parquet``: the datamodels' held-out scores, one row per target."""

ATTRIBUTION_SCORES = TableSpec(
    "attribution scores", _columns(*_TARGET, *_TARGET_ID, *_CORRELATIONS, *_CEILINGS), _RERUN
)
"""``evaluation/{alpha}/methods/{name}.csv`` and ``dmflow score-attribution``'s table: another method's held-out
scores, one row per target, as the datamodels' without their errors and fit."""

_CURVE_SCORES = ("lds_single", "lds_mean", "pearson_single", "pearson_mean", "ceiling_single", "ceiling_mean")
LEARNING_CURVE = TableSpec(
    "learning curve",
    _columns(
        ("fraction", "float", "the fraction of the fit store's models"),
        ("num_models", "int", "models the refit saw"),
        ("num_usable", "int", "of them, models that trained (not diverged)"),
        *(
            spec
            for key in _CURVE_SCORES
            for spec in ((key, "float", f"mean over targets of {key}"), (f"{key}_median", "float", "its median"))
        ),
    ),
    _RERUN,
)
"""``evaluation/{alpha}/learning_curve.csv``: one row per fraction; ``CURVE_SCORES`` as mean and median."""
CURVE_SCORES = _CURVE_SCORES
"""The per-target scores the learning curve summarises (mean as the score's name, median as ``{name}_median``)."""

COMPARE = TableSpec(
    "comparison",
    _columns(
        ("method", "str", "datamodels, a learning-curve point, or a baseline at one model count"),
        ("models_trained", "int", "models trained for it"),
        ("seconds", "float", "their training wall-seconds (NaN where not recorded)"),
        ("lds_single", "float", "mean LDS with one seed"),
        ("lds_mean", "float", "mean LDS with the seed mean"),
        ("fraction_of_ceiling", "float", "mean Pearson r with the seed mean over its ceiling"),
    ),
    _RERUN,
)
"""``evaluation/{alpha}/compare.csv``: datamodels against the baselines, by compute."""

_CASE = (
    ("case", "int", "the counterfactual case (a row of the counterfactual masks)"),
    ("kind", "str", "top (the k largest weights removed), random (k random examples), or base (none)"),
    ("target", "int", "the target (-1 for the base case)"),
    ("k", "int", "training examples removed"),
    ("removed", "int", "examples removed (fewer than k where the target has fewer positive weights)"),
    ("predicted_change", "float", "the datamodel's predicted change of the margin"),
    ("predicted_base", "float", "the datamodel's predicted margin on the base subset (NaN for the base case)"),
)
CF_CASES = TableSpec("counterfactual cases", _columns(*_CASE), _RERUN)
"""``counterfactual/{alpha}/cases.csv``: the designed removals, one row per case."""

CF_CHANGES = TableSpec(
    "counterfactual changes",
    _columns(
        *_CASE,
        ("base_margin", "float", "mean margin of the models trained on the base subset"),
        ("actual_change", "float", "mean margin after the removal minus the base margin"),
        ("flip_fraction", "float", "fraction of seeds whose prediction flipped"),
        ("flipped", "bool", "flip_fraction > 0.5"),
        ("seeds_used", "int", "seeds that trained"),
    ),
    _RERUN,
)
"""``counterfactual/{alpha}/changes.csv``: each removal case's predicted and actual change."""

CF_FLIPS = TableSpec(
    "flip rates",
    _columns(
        ("k", "int", "training examples removed"),
        ("top", "float", "fraction of correctly predicted targets flipped by removing their top-k helpers"),
        ("random", "float", "the same for k random examples"),
    ),
    _RERUN,
)
"""``counterfactual/{alpha}/flips.csv``: flip rate by k, top helpers against random examples."""

BRITTLENESS = TableSpec(
    "brittleness",
    _columns(
        *_TARGET,
        ("base_margin", "float", "the target's base margin"),
        ("smallest_k", "float", "the smallest k whose removal flipped it (NaN: none did)"),
    ),
    _RERUN,
)
"""``counterfactual/{alpha}/brittleness.csv``: per target, the fewest removals that flip it."""

INFLUENCERS = TableSpec(
    "influencers",
    _columns(
        *_TARGET,
        *_TARGET_ID,
        ("target_label", "int", "the target's label"),
        ("direction", "str", "helps (largest weights) or harms (most negative)"),
        ("rank", "int", "1 = the strongest"),
        *_TRAIN,
        ("weight", "float", "the datamodel weight"),
    ),
    _RERUN,
)
"""``analysis/{alpha}/influencers.parquet``: each target's strongest helpers and harmers."""

LEAKAGE = TableSpec(
    "leakage",
    _columns(
        ("rank", "int", "1 = the strongest candidate"),
        *_TARGET,
        ("train_index", "int", "the candidate training example's row"),
        ("score", "float", "similarity x evidence: how likely a leak"),
        ("similarity", "float", "input similarity of the pair (shift-tolerant for images)"),
        ("similarity_rank", "int", "the pair's rank among the target's similar examples"),
        ("distance", "float", "the pair's distance"),
        ("evidence", "float", "mean of relative_weight and standout"),
        ("weight", "float", "the candidate's datamodel weight on the target"),
        ("weight_rank", "int", "its rank among the target's weights"),
        ("relative_weight", "float", "weight over the target's largest weight"),
        ("standout", "float", "how far the weight stands out of the target's others"),
        ("share", "float", "the weight's share of the target's positive weight"),
        *_TARGET_ID,
        ("train_id", "int", "the candidate's id in the dataset"),
        ("target_label", "int", "the target's label"),
        ("train_label", "int", "the candidate's label"),
        Column("robust_z", "float", "robust z of the score among every target's best", since_older=True),
        Column("stands_out", "bool", "robust_z >= the threshold (dmflow.analysis.leakage)", since_older=True),
    ),
    _RERUN,
)
"""``analysis/{alpha}/leakage.csv``: each target's best train-test duplicate candidate, ranked."""

EMBEDDINGS = TableSpec(
    "embeddings",
    _columns(
        *_TARGET,
        *_TARGET_ID,
        ("label", "int", "the target's label"),
        ("cluster", "int", "its spectral cluster"),
    ),
    _RERUN,
    numbered=Column("pc", "float", "the target's coordinate on a principal component of the datamodel weights"),
    numbered_after="label",
)
"""``analysis/{alpha}/embeddings.csv``: each target's datamodel embedding (``pc1``...) and cluster."""

COMPONENT_ENDS = TableSpec(
    "component ends",
    _columns(
        ("component", "int", "the principal component (1 = the first)"),
        ("end", "str", "positive (the largest loadings) or negative (the smallest)"),
        ("rank", "int", "1 = the most extreme"),
        *_TRAIN,
        ("loading", "float", "the training example's loading on the component"),
    ),
    _RERUN,
)
"""``analysis/{alpha}/component_ends.csv``: the training examples at each end of each component."""

USAGE = TableSpec(
    "usage",
    _columns(
        ("s", "float", "wall seconds"),
        ("max_rss", "float", "peak resident memory, MB (the process and its children)"),
        ("cpu_time", "float", "CPU seconds"),
    ),
    "run the job again (dmflow --usage writes it)",
)
"""``benchmarks/{rule}/....tsv``: one job's resources, in the columns of Snakemake's ``benchmark:`` files."""
