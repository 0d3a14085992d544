"""Atomic output, strict JSON and the results table."""
import json

import numpy as np
import pytest

from semnb.errors import SemnbInputError
from semnb.html_page import HtmlPage
from semnb.io_utils import (
    atomic_path,
    check_writable,
    remove_leftover_temporaries,
    write_json_atomic,
)
from semnb.results import EvalResult, format_table


def test_failed_write_leaves_earlier_file_untouched(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("earlier")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "earlier"
    assert list(tmp_path.iterdir()) == [target]


def test_a_killed_writers_temporary_file_is_removed_and_nothing_else(tmp_path):
    result = tmp_path / "part-000003.parquet"
    result.write_bytes(b"kept")
    (tmp_path / ".part-000003.parquet.tg2c1nuy.tmp").write_bytes(b"half")  # atomic_path's name, left by a SIGKILL
    (tmp_path / ".hidden_but_mine.json").write_text("{}")
    remove_leftover_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden_but_mine.json", "part-000003.parquet"]
    assert result.read_bytes() == b"kept"


def test_json_is_strict_with_undefined_metrics_as_null(tmp_path):
    path = write_json_atomic(tmp_path / "r.json", {"auroc": float("nan"), "x": np.float32(0.25), "v": np.arange(2)})
    text = path.read_text()
    assert "NaN" not in text
    assert json.loads(text) == {"auroc": None, "x": 0.25, "v": [0, 1]}


def test_eval_result_contract_and_table(tmp_path):
    result = EvalResult("segment", "data", "semnb-tiny", "random-init", "fp32", 2, [0, 1], 10,
                        results={"semclip": {"image_auroc": float("nan"), "pixel_auroc": 0.91, "pixel_auroc_std": 0.02},
                                 "patchcore": {"image_auroc": 0.5, "pixel_auroc": 0.8, "pixel_auroc_std": 0.0}})
    obj = json.loads(result.write(tmp_path / "r.json").read_text())
    for key in ("task", "data", "backbone", "weights", "precision", "shots", "seeds", "n_images",
                "results", "timing", "warnings"):
        assert key in obj
    assert list(obj["results"]) == ["semclip", "patchcore"]
    assert obj["results"]["semclip"]["image_auroc"] is None
    table = result.table()
    assert "undef" in table and "0.910±0.020" in table
    assert table.splitlines()[2].startswith("semclip")


def test_html_page_escapes_user_supplied_names():
    page = HtmlPage("<script>alert(1)</script>")
    page.table([{"class": "<img src=x onerror=alert(1)>", "n": 3}])
    page.paragraph("a & b")
    html = page.render()
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html and "a &amp; b" in html


def test_table_keeps_a_metric_whose_name_ends_in_std():
    # scale_std (retrieval) is a metric of its own; precision_at_k_std is precision_at_k's spread
    results = {"ours": {"precision_at_k": 0.5, "precision_at_k_std": 0.1, "scale_std": 0.42, "scale_std_std": 0.02}}
    table = format_table(results)
    assert table.splitlines()[0].split() == ["method", "precision_at_k", "scale_std"]
    assert table.splitlines()[2].split() == ["ours", "0.500±0.100", "0.420±0.020"]


def test_check_writable_accepts_new_folders_and_refuses_a_folder_or_a_file_on_the_way(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_writable("r.json", "--json r.json")  # relative, in the working folder
    check_writable(tmp_path / "new" / "deeper" / "r.json", "--json")  # folders still to be made
    check_writable(tmp_path / "new", "--out", folder=True)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SemnbInputError, match="is a folder. Fix: give a file name"):
        check_writable(tmp_path, "--json")
    with pytest.raises(SemnbInputError, match="notes.txt is a file, not a folder"):
        check_writable(tmp_path / "notes.txt" / "a" / "r.json", "--json")
    with pytest.raises(SemnbInputError, match="notes.txt is a file, not a folder"):
        check_writable(tmp_path / "notes.txt", "--out", folder=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # a check makes nothing
