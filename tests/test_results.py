"""The resumable results CSV (samplerkit.results) that sweep and exposure-bias share."""

from __future__ import annotations

import pytest

from samplerkit.errors import SamplerkitError
from samplerkit.results import ResultsCSV, cell_text


def _table(path):
    return ResultsCSV(path, ("name", "t", "value"), ("name", "t"), "a test")


def test_rows_read_back_with_exact_floats_and_the_same_keys(tmp_path):
    table = _table(tmp_path / "r.csv")
    rows = [{"name": "a", "t": 3, "value": 0.1 + 0.2}, {"name": "b", "t": 10, "value": 1e-17, "extra": None}]
    table.write(rows)
    back = table.read()
    assert back == [{"name": "a", "t": "3", "value": "0.30000000000000004", "extra": ""},
                    {"name": "b", "t": "10", "value": "1e-17", "extra": ""}]
    assert float(back[0]["value"]) == 0.1 + 0.2
    assert [table.key(r) for r in back] == [table.key(r) for r in rows] == [("a", "3"), ("b", "10")]


def test_put_replaces_the_row_of_the_same_cell_and_appends_a_new_one(tmp_path):
    table = _table(None)
    rows = [{"name": "a", "t": "3", "value": "1.0"}]
    table.put(rows, {"name": "a", "t": 3, "value": 2.0})
    table.put(rows, {"name": "a", "t": 4, "value": 3.0})
    assert rows == [{"name": "a", "t": 3, "value": 2.0}, {"name": "a", "t": 4, "value": 3.0}]


def test_extra_columns_follow_the_declared_ones_sorted(tmp_path):
    _table(tmp_path / "r.csv").write([{"name": "a", "t": 1, "value": 2, "zeta": 1, "alpha": 0}])
    assert (tmp_path / "r.csv").read_text().splitlines()[0] == "name,t,value,alpha,zeta"


def test_a_csv_without_the_key_columns_is_a_one_line_error(tmp_path):
    (tmp_path / "r.csv").write_text("x,y\n1,2\n")
    with pytest.raises(SamplerkitError, match=r"is not a test CSV \(it lacks the column\(s\) name, t\)"):
        _table(tmp_path / "r.csv").read()


def test_a_missing_file_or_no_path_reads_as_no_rows(tmp_path):
    assert _table(tmp_path / "none.csv").read() == [] and _table(None).read() == []


def test_cell_text():
    assert [cell_text(v) for v in (None, 0.5, 3, "x", float("nan"))] == ["", "0.5", "3", "x", "nan"]
