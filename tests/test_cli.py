"""The command line: the contract of design.md, exit statuses and one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from semnb.cli import _parse_seeds, main
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


def one_line(result):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as loading data, evaluating or benchmarking."""
    def refuse(*args, **kwargs):
        raise AssertionError("the bad output path was not refused before the work")

    monkeypatch.setattr("semnb.cli.evaluate", refuse)
    monkeypatch.setattr("semnb.data.load_dataset", refuse)
    monkeypatch.setattr("semnb.data.load_scans", refuse)
    monkeypatch.setattr("semnb.models.bench.bench_encoder", refuse)
    monkeypatch.setattr("semnb.demo.run_demo", refuse)


COMMANDS_WITH_JSON = [["eval", task] for task in ("segment", "classify", "cluster", "retrieve", "stm")] + [
    ["bench", "encoder"]]


def _data_option(command, tmp_path):
    return ["--data", str(tmp_path / "data")] if command[0] == "eval" else []


@pytest.mark.parametrize("command", COMMANDS_WITH_JSON, ids=" ".join)
@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_unwritable_json_path_is_refused_before_any_work(command, where, tmp_path, no_work):
    (tmp_path / "notes.txt").write_text("keep me")
    json_path = tmp_path if where == "a folder" else tmp_path / "notes.txt" / "r.json"
    result = run(*command, *_data_option(command, tmp_path), "--json", str(json_path))
    assert result.exit_code == 2
    line = one_line(result)
    assert line.startswith("semnb: error: --json") and "Fix:" in line
    assert ("is a folder" if where == "a folder" else "notes.txt is a file, not a folder") in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "keep me"


root_can_write_anywhere = pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not stop root from writing")


@root_can_write_anywhere
@pytest.mark.parametrize("command", COMMANDS_WITH_JSON, ids=" ".join)
def test_json_in_a_read_only_folder_is_refused_before_any_work(command, tmp_path, no_work):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = run(*command, *_data_option(command, tmp_path), "--json", str(locked / "r.json"))
    assert result.exit_code == 2
    assert "is not writable" in one_line(result) and list(locked.iterdir()) == []


@pytest.mark.parametrize("seeds", ["-1", str(2**32), str(2**63), str(2**64 + 1)])
def test_seed_out_of_range_is_refused_before_any_work(seeds, tmp_path, no_work):
    result = run("eval", "classify", "--data", str(tmp_path), "--seeds", f"0,{seeds}")
    assert result.exit_code == 2
    line = one_line(result)
    assert line.startswith("semnb: error: --seeds: seed") and f"{seeds} is out of range" in line
    assert "from 0 to 4294967295" in line


def test_largest_seed_is_accepted():
    assert _parse_seeds(None, None, f"0,{2**32 - 1}") == [0, 2**32 - 1]


def test_repeated_seeds_are_refused_naming_them(tmp_path, no_work):
    result = run("eval", "cluster", "--data", str(tmp_path), "--seeds", "0,1,0,2,1")
    assert result.exit_code == 2
    assert "--seeds: 0, 1 given more than once" in one_line(result)


def test_demo_out_at_a_file_is_refused_before_any_work(tmp_path, no_work):
    existing = tmp_path / "report.html"
    existing.write_text("an earlier page")
    result = run("demo", "--out", str(existing))
    assert result.exit_code == 2
    assert "--out" in one_line(result) and "is a file, not a folder" in one_line(result)
    assert existing.read_text() == "an earlier page"
    result = run("demo", "--out", str(tmp_path / "d"), "--seed", "-1")
    assert result.exit_code == 2 and "--seed: seed -1 is out of range" in one_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_synth_out_under_a_file_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    result = run("data", "synth", "--kind", "stm", "--out", str(tmp_path / "notes.txt" / "set"))
    assert result.exit_code == 2
    assert "notes.txt is a file, not a folder" in one_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@root_can_write_anywhere
def test_synth_out_in_a_read_only_folder_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = run("data", "synth", "--kind", "tem", "--out", str(locked / "set"))
    assert result.exit_code == 2
    assert "is not writable" in one_line(result) and list(locked.iterdir()) == []


def test_the_sigterm_handler_lasts_only_as_long_as_the_command():
    before = signal.getsignal(signal.SIGTERM)
    assert run("data", "synth", "--help").exit_code == 0
    assert run("eval", "cluster", "--data", "x", "--seeds", "-1").exit_code == 2
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_leaves_no_staging_folder_and_the_earlier_set_intact(tmp_path):
    out = tmp_path / "sem"
    semnb = [sys.executable, "-m", "semnb.cli", "data", "synth", "--kind", "sem", "--out", str(out)]
    subprocess.run([*semnb, "--n-per-class", "1", "--size", "64"], check=True, capture_output=True)
    earlier = sorted(p.relative_to(out) for p in out.rglob("*"))
    slow = subprocess.Popen([*semnb, "--n-per-class", "30"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".sem.*.writing")) and slow.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # until it made its staging folder (then it draws 240 images: seconds)
    slow.send_signal(signal.SIGTERM)
    _, stderr = slow.communicate(timeout=60)
    assert slow.returncode == 128 + signal.SIGTERM, stderr.decode()[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sem"]  # nothing hidden beside --out
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == earlier
    assert len(load_dataset(out)) == 7 + 1


def test_an_error_raised_under_a_progress_bar_is_the_last_line_on_stderr(tmp_path):
    # issue 13: the bar was redrawn after the error line, so a log tail showed the bar, not the error
    mask = np.zeros((64, 64), np.uint8)
    mask[10:14, 10:14] = 1
    np.save(tmp_path / "blank.npy", np.full((64, 64), 0.5, np.float32))  # a flat scan fails under "analyse scans"
    np.save(tmp_path / "blank_mask.npy", mask)
    run = subprocess.run([sys.executable, "-m", "semnb.cli", "eval", "stm", "--data", str(tmp_path), "--seeds", "0"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in run.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert run.returncode == 2 and "analyse scans" in run.stderr
    assert lines[-1].startswith("semnb: error: ") and "blank.npy: is flat" in lines[-1]


@pytest.mark.parametrize("command", [*COMMANDS_WITH_JSON, ["demo"]], ids=" ".join)
@pytest.mark.parametrize("device, problem", [
    ("cuda", "this machine has no CUDA device"),
    ("cuda:3", "there is no GPU 3; this machine has cuda:0"),
    ("mps", "this machine has no Apple MPS device"),
    ("tpu", "is not a device"),
])
def test_a_device_that_is_not_there_is_one_line_before_any_work(command, device, problem, tmp_path, no_work,
                                                                monkeypatch):
    one_gpu = device == "cuda:3"  # a one-GPU machine for cuda:3; no GPU otherwise
    monkeypatch.setattr("torch.cuda.is_available", lambda: one_gpu)
    monkeypatch.setattr("torch.cuda.device_count", lambda: int(one_gpu))
    monkeypatch.setattr("torch.backends.mps.is_available", lambda: False)
    out = tmp_path / "out"
    extra = ["--out", str(out)] if command == ["demo"] else []
    result = run(*command, *_data_option(command, tmp_path), "--device", device, *extra)
    assert result.exit_code == 2
    line = one_line(result)
    assert line.startswith(f"semnb: error: --device {device}: {problem}") and "Fix:" in line
    assert not out.exists()


def test_deterministic_says_what_it_changes(tmp_path, monkeypatch):
    import torch

    seen = []

    def record_and_stop(*args, **options):
        seen.append(options)
        raise SystemExit(0)

    monkeypatch.setattr("semnb.cli.evaluate", record_and_stop)
    monkeypatch.setattr("semnb.data.load_scans", lambda path: None)
    try:
        result = run("eval", "stm", "--data", str(tmp_path), "--deterministic", "--device", "cpu")
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    assert "deterministic: torch.use_deterministic_algorithms(True, warn_only=True) is on" in result.output
    assert seen[0]["device"] == "cpu" and seen[0]["precision"] == "auto"
