"""The command line: the contract of design.md, exit statuses and one-line errors."""
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
