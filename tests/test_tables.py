"""Results tables: each declared once (``dmflow.core.tables``); a maker's slip is caught before the file is
written, and a reader refuses a file that lacks a declared column in one line naming the file and the column."""

from __future__ import annotations

import pandas as pd
import pytest

from dmflow.core.errors import FileError
from dmflow.core.tables import BRITTLENESS, COMPARE, EMBEDDINGS, LEAKAGE, USAGE


def compare_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": ["datamodels", "trak"],
            "models_trained": [100, 10],
            "seconds": [10.0, float("nan")],
            "lds_single": [0.4, 0.2],
            "lds_mean": [0.6, 0.3],
            "fraction_of_ceiling": [0.8, 0.4],
        }
    )


def test_a_table_is_written_in_its_declared_column_order():
    rows = compare_rows()
    shuffled = rows[list(reversed(rows.columns))]
    assert list(COMPARE.check(shuffled, where="compare.csv").columns) == COMPARE.names


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda t: t.drop(columns="seconds"), r"missing \['seconds'\], not declared \[\]"),
        (lambda t: t.assign(lds=1.0), r"missing \[\], not declared \['lds'\]"),
        (lambda t: t.assign(models_trained=[1.5, 2.0]), r"models_trained \(float64, not int\)"),
        (lambda t: t.assign(lds_mean=["a", "b"]), r"lds_mean \((object|str), not float\)"),
    ],
)
def test_a_makers_slip_is_one_line_before_the_file_is_written(change, expected):
    with pytest.raises(ValueError, match=expected) as err:
        COMPARE.check(change(compare_rows()), where="evaluation/0.5/compare.csv")
    assert "evaluation/0.5/compare.csv" in str(err.value) and "\n" not in str(err.value)


def test_an_empty_table_passes_whatever_its_dtypes():
    empty = pd.DataFrame.from_records([], columns=BRITTLENESS.names)
    assert BRITTLENESS.check(empty, where="brittleness.csv").empty


def test_numbered_columns_are_checked_in_their_place():
    points = pd.DataFrame({"target": [0], "target_id": [7], "label": [1], "pc1": [0.1], "pc2": [0.2], "cluster": [0]})
    assert list(EMBEDDINGS.check(points, where="embeddings.csv").columns) == list(points.columns)
    with pytest.raises(ValueError, match=r"not declared \['pcx'\]"):
        EMBEDDINGS.check(points.assign(pcx=1.0), where="embeddings.csv")


def test_a_file_lacking_a_column_is_refused_naming_the_file_and_the_column(tmp_path):
    path = tmp_path / "compare.csv"
    compare_rows().drop(columns=["lds_mean"]).to_csv(path, index=False)
    with pytest.raises(FileError, match=r"compare.csv: the comparison table lacks the columns lds_mean .*rerun"):
        COMPARE.read(path)


def test_columns_a_table_from_an_older_dmflow_lacks_are_left_to_the_reader(tmp_path):
    path = tmp_path / "leakage.csv"
    old = [c.name for c in LEAKAGE.columns if not c.since_older]
    pd.DataFrame([[0] * len(old)], columns=old).to_csv(path, index=False)
    assert "robust_z" not in LEAKAGE.read(path)  # summary.md derives it from the scores


@pytest.mark.parametrize("text", ["", "not,a\ntable", "\x00\x01\x02"])
def test_an_empty_or_foreign_file_is_one_line(tmp_path, text):
    path = tmp_path / "job.tsv"
    path.write_text(text)
    with pytest.raises(FileError) as err:
        USAGE.read(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_a_missing_file_says_what_rebuilds_it(tmp_path):
    with pytest.raises(FileError, match=r"no such file; rerun its rule"):
        COMPARE.read(tmp_path / "compare.csv")
