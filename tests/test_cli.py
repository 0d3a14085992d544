"""The command line: the contract of design.md, exit statuses and one-line errors."""
import json

import numpy as np
from click.testing import CliRunner

from semnb.cli import main
from semnb.data import load_dataset


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_data_synth_sem_writes_a_loadable_mvtec_set(tmp_path):
    out = tmp_path / "sem"
    result = run("data", "synth", "--kind", "sem", "--out", str(out), "--n-per-class", "2",
                 "--size", "64", "--seed", "3")
    assert result.exit_code == 0, result.output
    dataset = load_dataset(out)
    assert dataset.layout == "mvtec"
    assert len(dataset) == 2 * 7 + 2  # two test images per class plus two training "good"
    assert (out / "manifest.csv").exists()


def test_bad_output_folder_is_one_line_and_exit_2(tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "precious.txt").write_text("keep me")
    result = run("data", "synth", "--kind", "sem", "--out", str(occupied), "--n-per-class", "1", "--size", "64")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "occupied" in lines[0] and "Fix:" in lines[0]
    assert (occupied / "precious.txt").read_text() == "keep me"


def test_unknown_kind_is_refused_by_the_parser(tmp_path):
    result = run("data", "synth", "--kind", "xray", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert "xray" in result.output


def _archive_csv(folder, write_png):
    """A manifest in an archive's own column names (filename,doi), the images in images/."""
    rng = np.random.default_rng(0)
    rows = ["filename,doi"]
    for k in range(6):
        image = rng.uniform(0, 1, (40, 40)) if k % 2 else np.tile(np.arange(40) % 8 / 8, (40, 1))
        write_png(folder / "images" / f"{k}.png", image)
        rows.append(f"{k}.png,10.1016/paper{k % 2}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return folder / "metadata.csv"


def test_eval_csv_column_options_reach_the_loader(tmp_path, write_png):
    csv_path = _archive_csv(tmp_path, write_png)
    out = tmp_path / "cluster.json"
    result = run("eval", "cluster", "--data", str(csv_path), "--layout", "csv", "--path-column", "filename",
                 "--label-column", "doi", "--image-folder", "images", "--image-size", "32", "--seeds", "0",
                 "--methods", "glcm", "--json", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["n_images"] == 6 and record["k"] == 2


def test_eval_csv_missing_column_is_one_line_naming_the_option(tmp_path, write_png):
    csv_path = _archive_csv(tmp_path, write_png)
    result = run("eval", "cluster", "--data", str(csv_path), "--layout", "csv", "--path-column", "filename",
                 "--image-folder", "images", "--methods", "glcm")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "metadata.csv" in lines[0]
    assert "lacks the column 'label'" in lines[0] and "'filename', 'doi'" in lines[0]
    assert "--label-column" in lines[0]
