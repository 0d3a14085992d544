"""The `semnb` command line (contract in design.md): thin wrappers over the package's functions.

Each command parses options, calls one function of the package, and prints where its
results are. Bad input becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import functools
import signal
import sys
import threading
from pathlib import Path

import click

from semnb import evaluate
from semnb.data import synth_writers
from semnb.errors import SemnbInputError
from semnb.io_utils import check_writable

# Seeds reach numpy, torch and scikit-learn; this is the range all three accept (sklearn's random_state the narrowest).
MAX_SEED = 2**32 - 1


class SemnbGroup(click.Group):
    """A click group that turns SemnbInputError into one clear line and exit status 2.

    Progress bars still open when the error is raised are closed first, so that the error is
    the last line on stderr, where a user (and a log tail) looks.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SemnbInputError as err:
            _close_progress_bars()
            click.echo(f"semnb: error: {err}", err=True)
            sys.exit(2)


def _close_progress_bars() -> None:
    from tqdm.auto import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


@click.group(cls=SemnbGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="semnb")
def main() -> None:
    """semnb: few-shot inspection of electron-microscope images."""
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        click.get_current_context().call_on_close(lambda: signal.signal(signal.SIGTERM, previous))


def _exit_on_sigterm(signum, frame):
    """SIGTERM (`kill`, `timeout`, a job scheduler) ends the run as Ctrl-C does: as an exception, so the
    `finally` blocks remove staging folders and temporary files and shut the notebook kernel down."""
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------- data
@main.group()
def data() -> None:
    """Make or inspect data sets."""


@data.command("synth")
@click.option("--kind", type=click.Choice(sorted(synth_writers.WRITERS)), required=True,
              help="sem: wafer defects (MVTec layout); tem: cross-sections; stm: tunnelling scans.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Folder to write.")
@click.option("--n-per-class", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--size", type=click.IntRange(min=32, max=4096), default=256, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
def data_synth(kind: str, out_dir: Path, n_per_class: int, size: int, seed: int) -> None:
    """Write a synthetic data set with pixel masks and a manifest."""
    check_writable(out_dir.absolute().parent, f"--out {out_dir}", folder=True)  # the set is staged beside out_dir
    out = synth_writers.write_synthetic(kind, out_dir, n_per_class=n_per_class, size=size, seed=seed)
    click.echo(f"wrote {kind} data set to {out}")


# ---------------------------------------------------------------- demo
@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("semnb-demo"),
              show_default=True, help="Folder for the data, figures and the HTML report.")
@click.option("--n-per-class", type=click.IntRange(min=2), default=12, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              callback=lambda ctx, param, seed: _check_seed(seed, "--seed"))
@click.option("--device", default="auto", show_default=True,
              help="auto (the first CUDA GPU, else the CPU), cpu, cuda, cuda:N or mps.")
def demo(out_dir: Path, n_per_class: int, seed: int, device: str) -> None:
    """The main job: offline, on the default synthetic SEM data, ending in one HTML report."""
    from semnb.hardware import resolve_device

    resolve_device(device)
    check_writable(out_dir, f"--out {out_dir}", folder=True)  # before the slow imports and the minutes of work
    from semnb.demo import run_demo

    report = run_demo(out_dir, n_per_class=n_per_class, seed=seed, device=device, progress=True)
    click.echo(f"demo report: {report.resolve()}")


# ---------------------------------------------------------------- report
@main.command()
@click.argument("notebook")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Folder for the executed notebook and its HTML page.")
@click.option("-p", "--parameter", "parameters", type=(str, str), multiple=True, metavar="NAME VALUE",
              help="Override a value of the notebook's parameters cell (repeatable).")
def report(notebook: str, out_dir: Path, parameters: tuple[tuple[str, str], ...]) -> None:
    """Run NOTEBOOK (a path or a name such as 09_report) with parameters; write .ipynb and .html."""
    from semnb.report import parse_parameter, run_report

    values = {name: parse_parameter(value) for name, value in parameters}
    ipynb, html = run_report(notebook, out_dir, values)
    click.echo(f"report: {html.resolve()}\nexecuted notebook: {ipynb.resolve()}")


# ---------------------------------------------------------------- eval
@main.group("eval", cls=SemnbGroup)
def eval_() -> None:
    """Measure a method against its baselines on a data set (results contract in design.md)."""


def eval_options(func):
    """The options every `semnb eval TASK` shares (design.md contract)."""
    options = [
        click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True,
                     help="Data folder (or CSV manifest)."),
        click.option("--layout", type=click.Choice(["auto", "mvtec", "folders", "csv", "carinthia"]),
                     default="auto", show_default=True),
        click.option("--normal-class", default="good", show_default=True,
                     help="Name of the defect-free class."),
        click.option("--path-column", default=None,
                     help="csv layout: the manifest's column of image paths  [default: path]"),
        click.option("--label-column", default=None,
                     help="csv layout: the column of class labels, '' for an unlabelled set  [default: label]"),
        click.option("--magnification-column", default=None,
                     help="csv layout: the column of magnifications  [default: magnification, if present]"),
        click.option("--image-folder", type=click.Path(path_type=Path), default=None,
                     help="csv layout: the folder the image paths start in, relative to the CSV  "
                          "[default: the CSV's folder]"),
        click.option("--backbone", default=None, help="semnb-tiny, efficientnet-lite0, MODEL:PRETRAINED or clip:/path (retrieve: efficientnet-lite0 or the test CNN semnb-tiny-cnn)."),
        click.option("--shots", type=click.IntRange(min=1), default=None, help="Labelled examples per class."),
        click.option("--seeds", default="0,1,2", show_default=True, callback=_parse_seeds,
                     help="Comma-separated seeds; figures are means over them."),
        click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, callback=_check_json_path,
                     help="Write the results object here."),
    ]
    func = _with_csv_options(func)
    for option in reversed(options):
        func = option(func)
    return func


def compute_options(func):
    """`--device`, `--precision` and `--deterministic`: where and how every computing command runs.

    The device is checked against this machine before any data is read (one clear line when it
    is not there); the method resolves `auto` with `semnb.hardware` the same way.
    """
    @functools.wraps(func)
    def command(*args, device: str, precision: str, deterministic: bool, **kwargs):
        from semnb.hardware import resolve_device, set_deterministic

        resolve_device(device)
        for note in set_deterministic(deterministic):
            click.echo(f"deterministic: {note}", err=True)
        return func(*args, device=device, precision=precision, **kwargs)

    options = [
        click.option("--device", default="auto", show_default=True,
                     help="auto (the first CUDA GPU, else the CPU), cpu, cuda, cuda:N or mps."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
                     show_default=True, help="auto: bf16 on a GPU that has it, else fp16; on the CPU bf16 only "
                                            "with AMX or AVX512-BF16, else fp32."),
        click.option("--deterministic", is_flag=True, default=False,
                     help="torch.use_deterministic_algorithms on (matters on CUDA; the CPU is deterministic already)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _with_csv_options(func):
    """Hand the csv-layout options to the command as one dict, `csv_options`, holding only those
    given, so that `load_dataset(..., **csv_options)` keeps the loader's own defaults."""

    @functools.wraps(func)
    def command(*args, path_column, label_column, magnification_column, image_folder, **kwargs):
        given = {"path_column": path_column, "label_column": label_column,
                 "magnification_column": magnification_column, "image_folder": image_folder}
        csv_options = {name: value for name, value in given.items() if value is not None}
        if label_column == "":
            csv_options["label_column"] = None  # --label-column '': an unlabelled collection
        return func(*args, csv_options=csv_options, **kwargs)

    return command


def _parse_seeds(ctx, param, value: str) -> list[int]:
    try:
        seeds = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise SemnbInputError("--seeds", f"{value!r} is not a comma-separated list of integers",
                              "write e.g. --seeds 0,1,2") from None
    if not seeds:
        raise SemnbInputError("--seeds", "no seed given", "write e.g. --seeds 0,1,2")
    for seed in seeds:
        _check_seed(seed, "--seeds")
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:  # refused, not dropped: a repeat would show a spread of 0 as if the seeds agreed
        raise SemnbInputError("--seeds", f"{', '.join(map(str, repeated))} given more than once",
                              "give each seed once, e.g. --seeds 0,1,2")
    return seeds


def _check_seed(seed: int, option: str) -> int:
    """Refuse a seed numpy, torch or scikit-learn would reject, before the data is even loaded."""
    if not 0 <= seed <= MAX_SEED:
        raise SemnbInputError(option, f"seed {seed} is out of range", f"use seeds from 0 to {MAX_SEED} (2**32 - 1)")
    return seed


def _check_json_path(ctx, param, value: Path | None) -> Path | None:
    """Refuse a --json path that cannot be written now, not after the whole computation."""
    if value is not None:
        check_writable(value, f"--json {value}")
    return value


def finish_eval(result, json_path: Path | None) -> None:
    """Print the results table and write the JSON object (atomically) when asked."""
    click.echo(result.table())
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if json_path is not None:
        click.echo(f"wrote {result.write(json_path)}")


def _fewshot_options(func):
    """Options `eval segment` and `eval classify` add to the shared ones."""
    options = [
        click.option("--image-size", type=click.IntRange(min=32, max=1024), default=None,
                     help="Side the images are resized to  [default: the backbone's own: 224 efficientnet-lite0, "
                          "240 ViT-B-16-plus-240, 128 semnb-tiny]"),
        click.option("--ablations/--no-ablations", default=False, show_default=True,
                     help="Also run the paper's Table 3 ablations (printed and written under `ablations`)."),
        click.option("--max-per-class", type=click.IntRange(min=1), default=None,
                     help="Use at most this many images of each class (a fixed seeded draw)  [default: all]"),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
                     help="Images encoded at a time (halved and retried when the GPU runs out of memory)."),
        click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Processes that read and resize the next images while the backbone encodes (0: none)."),
        click.option("--coreset", "coreset_fraction", type=click.FloatRange(min=0, max=1, min_open=True), default=0.1,
                     show_default=True, help="Share of the defect-free support patches PatchCore's greedy coreset "
                                             "keeps (patchcore and semnb's memory map; PatchCore: 0.1)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _echo_ablations(result) -> None:
    from semnb.results import format_table

    if "ablations" in result.extra:
        click.echo("ablations (the paper's Table 3):")
        click.echo(format_table(result.extra["ablations"]))
        click.echo("")


def _run_fewshot_eval(task: str, data_dir: Path, layout: str, normal_class: str, csv_options: dict,
                      backbone: str | None, shots: int | None, seeds: list[int], device: str, precision: str,
                      image_size: int | None, ablations: bool, max_per_class: int | None, batch_size: int,
                      workers: int, coreset_fraction: float = 0.1):
    """Load the data and run `task` (segment or classify) as `eval segment` and `eval classify`
    both do: the same defaults, a feature cache, the ablation table when asked."""
    from semnb.data import load_dataset
    from semnb.fewshot.evaluate import DEFAULT_SHOTS
    from semnb.models import DEFAULT_BACKBONE, FeatureCache

    images = load_dataset(data_dir, layout=layout, normal_class=normal_class, **csv_options)
    result = evaluate(task, images, backbone=backbone or DEFAULT_BACKBONE, shots=shots or DEFAULT_SHOTS, seeds=seeds,
                      device=device, precision=precision, image_size=image_size, ablations=ablations,
                      max_per_class=max_per_class, batch_size=batch_size, workers=workers,
                      coreset_fraction=coreset_fraction, cache=FeatureCache(), progress=True)
    _echo_ablations(result)
    return result


@eval_.command("segment")
@eval_options
@_fewshot_options
@compute_options
def eval_segment(data_dir: Path, layout: str, normal_class: str, backbone: str | None, shots: int | None,
                 seeds: list[int], json_path: Path | None, image_size: int | None, device: str, precision: str,
                 ablations: bool, max_per_class: int | None, batch_size: int, workers: int, coreset_fraction: float,
                 csv_options: dict) -> None:
    """Few-shot defect segmentation: semnb (recommended: SEM-CLIP's supervised map + PatchCore's calibrated memory
    map), SEM-CLIP, PatchCore and a visual nearest neighbour (default: 5 shots, efficientnet-lite0; features
    cached under $SEMNB_CACHE_DIR or ~/.cache/semnb)."""
    result = _run_fewshot_eval("segment", data_dir, layout, normal_class, csv_options, backbone, shots,
                               seeds, device, precision, image_size, ablations, max_per_class,
                               batch_size, workers, coreset_fraction)
    click.echo(f"{result.shots}-shot, {len(seeds)} seed(s), {result.extra['n_queries']} queries per episode, "
               f"{result.timing['episode_s']:.1f} s per episode (semclip training {result.timing['semclip_fit_s']:.1f} s)")
    finish_eval(result, json_path)


@eval_.command("classify")
@eval_options
@_fewshot_options
@compute_options
def eval_classify(data_dir: Path, layout: str, normal_class: str, backbone: str | None, shots: int | None,
                  seeds: list[int], json_path: Path | None, image_size: int | None, device: str, precision: str,
                  ablations: bool, max_per_class: int | None, batch_size: int, workers: int, coreset_fraction: float,
                  csv_options: dict) -> None:
    """Few-shot defect classification: semnb (recommended, with masks: the defect region's pooled tokens x a PatchCore
    normal gate), SEM-CLIP (P = 0.2 P_S + 0.8 P_C), linear probe, prototype, defect_pooled (default: 5 shots,
    efficientnet-lite0; features cached under $SEMNB_CACHE_DIR or ~/.cache/semnb)."""
    import pandas as pd

    result = _run_fewshot_eval("classify", data_dir, layout, normal_class, csv_options, backbone, shots,
                               seeds, device, precision, image_size, ablations, max_per_class,
                               batch_size, workers, coreset_fraction)
    names = result.extra["class_names"]
    first = next(iter(result.results))  # the recommended method: semnb where masks allow it, else semclip
    confusion = pd.DataFrame(result.extra["confusion_matrix"][first], index=names, columns=names)
    click.echo(f"{first} confusion matrix (rows: true class, columns: predicted; summed over {len(seeds)} seed(s)):")
    click.echo(confusion.to_string())
    click.echo("")
    click.echo(f"{result.shots}-shot, {len(seeds)} seed(s), {result.extra['n_queries']} queries per episode, "
               f"{result.timing['episode_s']:.2f} s per episode (semclip head training {result.timing['semclip_fit_s']:.2f} s)")
    finish_eval(result, json_path)


@eval_.command("cluster")
@eval_options
@click.option("--epochs", type=click.IntRange(min=1), default=15, show_default=True,
              help="SSL training epochs (the paper: 15).")
@click.option("--image-size", type=click.IntRange(min=32, max=2048), default=512, show_default=True,
              help="Side the images are resized to, a multiple of 4 (the paper: 512; 128 for a quick run); "
                   "ssl's frozen trunk reads them at most at 256 px.")
@click.option("--k", type=click.IntRange(min=2), default=None,
              help="Number of k-means clusters  [default: number of labelled classes]")
@click.option("--methods", default=None,
              help="Comma-separated subset of ssl,ssl_paper,glcm,lbp,wavelet,pca,imagenet,clip,ssl_untrained,"
                   "ssl_paper_untrained  [default: all that --ssl-mode keeps; clip only with weights]")
@click.option("--ssl-mode", type=click.Choice(["both", "semnb", "paper"]), default="both", show_default=True,
              help="SSL rows of the default method list: semnb (ssl: ImageNet-initialised, fine-tuned with VICReg, "
                   "pooled on the defect region; ssl_untrained), paper (ssl_paper: the paper's multi-resolution "
                   "SimSiam; ssl_paper_untrained), or both.")
@click.option("--border", type=click.IntRange(min=0), default=0, show_default=True,
              help="Pixels cropped off every side before resizing (the info banner is found and cut automatically).")
@click.option("--crop", type=click.Choice(["defect"]), default=None,
              help="Cluster a window (1/4 of the side) around each image's most anomalous place, found without "
                   "labels (distance to the patches of the train/ defect-free images)  [default: whole images]")
@click.option("--ssl-augment", is_flag=True, default=False,
              help="Train ssl_paper on randomly augmented pyramid levels (crop, turn, blur, contrast, noise per level); "
                   "not the paper's  [default: off, the paper's method]")
@compute_options
def eval_cluster_command(data_dir: Path, layout: str, normal_class: str, backbone: str | None, shots: int | None,
                         seeds: list[int], json_path: Path | None, epochs: int, image_size: int, k: int | None,
                         methods: str | None, ssl_mode: str, border: int, crop: str | None, ssl_augment: bool,
                         device: str, precision: str, csv_options: dict) -> None:
    """Self-supervised clustering (ssl; the paper's ssl_paper) vs GLCM, LBP, wavelet, PCA, ImageNet, CLIP and untrained encoders."""
    from semnb.data import load_dataset

    images = load_dataset(data_dir, layout=layout, normal_class=normal_class, **csv_options)
    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    result = evaluate("cluster", images, methods=chosen, seeds=seeds, epochs=epochs, image_size=image_size, k=k,
                      backbone=backbone, border=border, crop=crop, ssl_augment=ssl_augment, device=device,
                      precision=precision, ssl_mode=ssl_mode, progress=True)
    if shots is not None:
        result.warnings.append("--shots is not used by clustering (no labels are used to train)")
    if crop:
        click.echo(f"defect windows: {result.extra['crop']['reference']}; hold the true defect in "
                   f"{result.extra['crop']['hit_rate']:.2f} of the {result.extra['crop']['n_scored']} images with a "
                   "defect mask")
    click.echo(f"k = {result.extra['k']} clusters on {result.n_images} images; NMI of a random assignment: "
               f"{result.extra['nmi_random_assignment']:.3f}")
    finish_eval(result, json_path)


@eval_.command("retrieve")
@eval_options
@click.option("--k", type=click.IntRange(min=1), default=100, show_default=True,
              help="Results per query that precision@K and mAP@K score.")
@click.option("--loco/--no-loco", default=False, show_default=True,
              help="Also run leave-one-class-out (retrains the label-using methods once per class).")
@click.option("--epochs", type=click.IntRange(min=1), default=9, show_default=True,
              help="Training epochs of every trained method.")
@click.option("--image-size", type=click.IntRange(min=32, max=1024), default=128, show_default=True,
              help="Side in pixels the images are resized to.")
@click.option("--recipe", type=click.Choice(["general", "paper"]), default="general", show_default=True,
              help="How ours trains: general (triplet + classifier + reconstruction every step, pooled embedding) or "
                   "paper (classifier warm-up, then triplet and autoencoder epochs alternated).")
@compute_options
def eval_retrieve(data_dir: Path, layout: str, normal_class: str, backbone: str | None, shots: int | None,
                  seeds: list[int], json_path: Path | None, k: int, loco: bool, epochs: int, image_size: int,
                  recipe: str, device: str, precision: str, csv_options: dict) -> None:
    """Semi-supervised retrieval (triplet + reconstruction) vs autoencoder, siamese, classifier, frozen."""
    from semnb.data import load_dataset
    from semnb.models import DEFAULT_BACKBONE
    from semnb.retrieval.embedding import RetrievalConfig
    from semnb.retrieval.evaluate import loco_text

    images = load_dataset(data_dir, layout=layout, normal_class=normal_class, **csv_options)
    config = RetrievalConfig(epochs=epochs, image_size=image_size, recipe=recipe)
    result = evaluate("retrieve", images, backbone=backbone or DEFAULT_BACKBONE, k=k, seeds=seeds, config=config,
                      loco=loco, shots=shots, device=device, precision=precision, progress=True)
    if loco:
        click.echo(loco_text(result))
    finish_eval(result, json_path)


@eval_.command("stm")
@eval_options
@click.option("--episodes", type=click.IntRange(min=1), default=300, show_default=True,
              help="ProtoNet training episodes (per target surface and seed) for the defect classes.")
@compute_options
def eval_stm(data_dir: Path, layout: str, normal_class: str, backbone: str | None, shots: int | None,
             seeds: list[int], json_path: Path | None, episodes: int, device: str, precision: str,
             csv_options: dict) -> None:
    """STM scans X.npy with masks X_mask.npy: few-shot vs unsupervised vs raw-brightness defect maps
    (--shots = labelled defects per scan, default 1) and, with defects.csv, defect classes."""
    from semnb.data import load_scans

    result = evaluate("stm", load_scans(data_dir), shots=shots or 1, seeds=seeds, episodes=episodes, device=device,
                      precision=precision, progress=True)
    if layout != "auto":
        result.warnings.append(f"--layout {layout} is not used: stm reads scans X.npy with masks X_mask.npy")
    for name in csv_options:
        result.warnings.append(f"--{name.replace('_', '-')} is not used: stm reads no CSV manifest")
    if backbone is not None:
        result.warnings.append(f"--backbone {backbone} is not used: stm works on the lattice, not on an image backbone")
    finish_eval(result, json_path)


# ---------------------------------------------------------------- fit, predict, search
@main.group("fit", cls=SemnbGroup)
def fit_group() -> None:
    """Fit a method on your images and save it as a model folder (weights.safetensors + config.json)."""


def fit_options(func):
    """The options every `semnb fit TASK` shares: where the model goes, the seed, the device."""
    options = [
        click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
                     help="Model folder to write (config.json + weights.safetensors)."),
        click.option("--overwrite", is_flag=True, default=False, help="Replace an existing model folder."),
        click.option("--seed", type=int, default=0, show_default=True,
                     callback=lambda ctx, param, seed: _check_seed(seed, "--seed")),
    ]
    func = compute_options(func)
    for option in reversed(options):
        func = option(func)
    return func


def _save_fitted(model, out_dir: Path, overwrite: bool) -> None:
    folder = model.save(out_dir, overwrite=overwrite)
    settings = model.settings()
    click.echo(f"fit {model.task} ({settings.get('method')}) on {model.training.get('n_images')} images "
               f"{model.training.get('per_class')}")
    if settings.get("threshold") is not None:
        click.echo(f"threshold {settings['threshold']:.4g}: {settings.get('threshold_rule')}")
    click.echo(f"model: {folder.resolve()}")


def _support_command(task: str):
    @fit_group.command(task)
    @click.option("--support", "support_dir", type=click.Path(path_type=Path), required=True,
                  help="Folder of labelled images (MVTec layout, class folders or CSV)"
                       + (" with a mask for every defect image." if task == "segment" else "."))
    @click.option("--layout", type=click.Choice(["auto", "mvtec", "folders", "csv", "carinthia"]), default="auto",
                  show_default=True)
    @click.option("--normal-class", default="good", show_default=True, help="Name of the defect-free class.")
    @click.option("--backbone", default=None, help="efficientnet-lite0 (default), MODEL:PRETRAINED or clip:/path.")
    @click.option("--method", default=None, help="semnb (default, recommended), semclip, patchcore, nn_visual"
                  if task == "segment" else "semnb (default with masks, recommended), semclip (default without), "
                  "defect_pooled, linear_probe, prototype")
    @click.option("--image-size", type=click.IntRange(min=32, max=1024), default=None,
                  help="Side the images are resized to  [default: the backbone's own]")
    @fit_options
    def command(support_dir: Path, layout: str, normal_class: str, backbone: str | None, method: str | None,
                image_size: int | None, out_dir: Path, overwrite: bool, seed: int, device: str, precision: str) -> None:
        from semnb.data import load_dataset
        from semnb.fitting import fit
        from semnb.models import DEFAULT_BACKBONE

        _refuse_existing(out_dir, overwrite)
        support = load_dataset(support_dir, layout=layout, normal_class=normal_class)
        options = {"method": method} if method else {}
        model = fit(task, support, backbone=backbone or DEFAULT_BACKBONE, image_size=image_size, seed=seed,
                    device=device, precision=precision, progress=True, **options)
        _save_fitted(model, out_dir, overwrite)

    command.__doc__ = ("Fit few-shot defect segmentation on every labelled image of --support (defect images with "
                       "masks, and defect-free ones); the threshold is chosen from the support."
                       if task == "segment" else
                       "Fit few-shot defect classification on every labelled image of --support (two classes or more).")
    return command


def _refuse_existing(out_dir: Path, overwrite: bool) -> None:
    """An existing model folder is refused before the minutes of fitting, not after."""
    if out_dir.exists() and not overwrite:
        raise SemnbInputError(f"--out {out_dir}", "already exists", "choose a new folder, or pass --overwrite")
    check_writable(out_dir.absolute().parent, f"--out {out_dir}", folder=True)


fit_segment_command = _support_command("segment")
fit_classify_command = _support_command("classify")


@fit_group.command("cluster")
@click.option("--images", "images_dir", type=click.Path(path_type=Path), required=True,
              help="Folder of unlabelled images (labels, if any, are ignored).")
@click.option("--k", "k", default="auto", show_default=True,
              help="Number of clusters, or auto (the k of highest mean silhouette in 2..10).")
@click.option("--method", type=click.Choice(["ssl", "ssl_paper", "imagenet"]), default="ssl", show_default=True,
              help="ssl: ImageNet encoder fine-tuned on the images (VICReg), pooled on the defect region (--image-size "
                   "a multiple of 32); ssl_paper: the paper's multi-resolution SimSiam; imagenet: frozen ImageNet features.")
@click.option("--epochs", type=click.IntRange(min=1), default=15, show_default=True)
@click.option("--image-size", type=click.IntRange(min=32, max=2048), default=128, show_default=True)
@fit_options
def fit_cluster_command(images_dir: Path, k: str, method: str, epochs: int, image_size: int, out_dir: Path,
                        overwrite: bool, seed: int, device: str, precision: str) -> None:
    """Fit label-free clustering: self-supervised training on the images, then k-means centroids."""
    from semnb.data import load_dataset
    from semnb.fitting import fit

    if k != "auto" and not (k.isdigit() and int(k) >= 2):
        raise SemnbInputError("--k", f"got {k!r}", "use a whole number of clusters of 2 or more, or auto")
    _refuse_existing(out_dir, overwrite)
    model = fit("cluster", load_dataset(images_dir), k=k if k == "auto" else int(k), method=method, epochs=epochs,
                image_size=image_size, seed=seed, device=device, precision=precision, progress=True)
    _save_fitted(model, out_dir, overwrite)


@fit_group.command("retrieve")
@click.option("--images", "images_dir", type=click.Path(path_type=Path), required=True,
              help="Folder of images (class folders give labels; a flat folder is unlabelled).")
@click.option("--labels", "labels_csv", type=click.Path(path_type=Path), default=None,
              help="CSV with columns path,label (paths relative to --images; an empty label = unlabelled).")
@click.option("--backbone", default=None, help="efficientnet-lite0 (default) or semnb-tiny-cnn (tests).")
@click.option("--method", type=click.Choice(["ours", "autoencoder", "frozen"]), default=None,
              help="ours (default with two labelled classes or more), autoencoder (default without), frozen.")
@click.option("--recipe", type=click.Choice(["general", "paper"]), default="general", show_default=True,
              help="How ours trains: general (all losses every step) or paper (warm-up, alternated epochs).")
@fit_options
def fit_retrieve_command(images_dir: Path, labels_csv: Path | None, backbone: str | None, method: str | None,
                         recipe: str, out_dir: Path, overwrite: bool, seed: int, device: str, precision: str) -> None:
    """Fit the retrieval embedding on the images and index them, for `semnb search`."""
    from semnb.data import load_dataset
    from semnb.fitting import fit
    from semnb.models import DEFAULT_BACKBONE
    from semnb.retrieval.embedding import RetrievalConfig

    _refuse_existing(out_dir, overwrite)
    images = (load_dataset(labels_csv, layout="csv", image_folder=images_dir.absolute()) if labels_csv
              else load_dataset(images_dir))
    options = {"config": RetrievalConfig(recipe=recipe), **({"method": method} if method else {})}
    model = fit("retrieve", images, backbone=backbone or DEFAULT_BACKBONE, seed=seed, device=device,
                precision=precision, progress=True, **options)
    _save_fitted(model, out_dir, overwrite)


@fit_group.command("stm")
@click.option("--scans", "scans_dir", type=click.Path(path_type=Path), required=True,
              help="Folder of scans X.npy with masks X_mask.npy (1 = defect).")
@fit_options
def fit_stm_command(scans_dir: Path, out_dir: Path, overwrite: bool, seed: int, device: str, precision: str) -> None:
    """Fit the few-shot STM defect map on labelled scans."""
    from semnb.data import load_scans
    from semnb.fitting import fit

    _refuse_existing(out_dir, overwrite)
    model = fit("stm", load_scans(scans_dir), seed=seed, device=device, precision=precision, progress=True)
    _save_fitted(model, out_dir, overwrite)


@main.command("predict")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--images", "images", type=click.Path(path_type=Path), required=True,
              help="Folder of images (searched recursively) or a CSV with a `path` column.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Results folder: maps/, masks/, predictions.parquet + .csv, report.html.")
@click.option("--threshold", type=float, default=None, help="Pixel threshold of the masks  [default: the model's]")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Processes that read the next images while the model predicts.")
@click.option("--top", "top_n", type=click.IntRange(min=0), default=12, show_default=True,
              help="Images the report shows first.")
@click.option("--overwrite", is_flag=True, default=False,
              help="Replace what --out holds (by default an unfinished run of the same model and images continues).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: a pool of Ray actors, each loading the model once.")
@click.option("--ray-address", default=None,
              help="host:port, ray://host:port or auto  [default: start a local Ray for this run]")
@click.option("--concurrency", type=click.IntRange(min=1), default=2, show_default=True,
              help="Ray actors (--engine ray).")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="GPUs each Ray actor reserves (--engine ray).")
@compute_options
def predict_command(model_dir: Path, images: Path, out_dir: Path, threshold: float | None, batch_size: int,
                    workers: int, top_n: int, overwrite: bool, engine: str, ray_address: str | None,
                    concurrency: int, gpus_per_worker: float, device: str, precision: str) -> None:
    """Apply a fitted model to images without labels; per-image maps, one table, one HTML report. Resumable."""
    from semnb.data.listing import list_images

    paths = list_images(images)
    check_writable(out_dir.absolute().parent, f"--out {out_dir}", folder=True)
    chosen_precision = None if precision == "auto" else precision
    if engine == "ray":
        from semnb.ray_engine import predict_with_ray

        result = predict_with_ray(model_dir, paths, out_dir, threshold=threshold, batch_size=batch_size,
                                  concurrency=concurrency, num_gpus=gpus_per_worker, address=ray_address,
                                  overwrite=overwrite, top_n=top_n, device=device, precision=chosen_precision,
                                  progress=True)
    else:
        from semnb.model_folder import load_model
        from semnb.predictions import predict

        model = load_model(model_dir, device=device, precision=chosen_precision)
        result = predict(model, paths, out_dir, threshold=threshold, batch_size=batch_size, workers=workers,
                         overwrite=overwrite, top_n=top_n, progress=True)
    table = result.table
    unreadable = table[table["error"].notna()]
    for path, error in zip(unreadable["path"], unreadable["error"]):
        click.echo(f"skipped {path}: {error}", err=True)
    click.echo(f"{len(table) - len(unreadable)} images predicted, {len(unreadable)} unreadable")
    click.echo(f"predictions: {(out_dir / 'predictions.parquet').resolve()} (and .csv)")
    click.echo(f"report: {result.report.resolve()}")


@main.command("search")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--query", "queries", type=click.Path(path_type=Path), required=True, multiple=True,
              help="Query image (repeatable).")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True, help="Results per query.")
@click.option("--expand/--no-expand", default=False, show_default=True, help="Query expansion (gallery search).")
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=None,
              help="An archive index of `semnb index build` to search instead of the model's own gallery.")
@compute_options
def search_command(model_dir: Path, queries: tuple[Path, ...], k: int, expand: bool, index_dir: Path | None,
                   device: str, precision: str) -> None:
    """The k images nearest to each query image: in a retrieval model's gallery, or in an archive --index."""
    from semnb.data import read_image
    from semnb.model_folder import load_model

    model = load_model(model_dir, device=device, precision=None if precision == "auto" else precision)
    if model.task != "retrieve":
        raise SemnbInputError(model_dir, f"is a {model.task} model", "search needs a model of `semnb fit retrieve`")
    pixels = [read_image(q) for q in queries]
    if index_dir is not None:
        results = _archive_search(index_dir, model, pixels, k)
    else:
        results = model.search(pixels, k=k, expand=expand)
    for query, hits in zip(queries, results):
        click.echo(f"{query}:")
        for rank, (name, distance) in enumerate(hits, 1):
            click.echo(f"  {rank:>3}  {distance:.4f}  {name}")


def _archive_search(index_dir: Path, model, pixels, k: int) -> list[list[tuple[str, float]]]:
    """Embed the queries with the model, search the archive index (faiss on one thread: fastest per query)."""
    import faiss
    import numpy as np

    from semnb.retrieval.index import ArchiveIndex

    faiss.omp_set_num_threads(1)
    archive = ArchiveIndex.load(index_dir)
    embeddings = np.stack([p.embedding for p in model.predict(pixels)]).astype(np.float32)
    paths, distances = archive.search(embeddings, k, gate=model.index.gate)  # weighted as the model's gallery search
    return [[(path, float(np.sqrt(max(d, 0.0)))) for path, d in zip(row_paths, row)]
            for row_paths, row in zip(paths, distances)]


@main.group("index", cls=SemnbGroup)
def index_group() -> None:
    """Archive indexes for retrieval at scale (faiss HNSW, or IVF-PQ from 10^6 images)."""


@index_group.command("build")
@click.argument("predictions_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Index folder to write.")
@click.option("--kind", type=click.Choice(["auto", "exact", "hnsw", "ivfpq"]), default="auto", show_default=True,
              help="auto: HNSW below 10^6 vectors, IVF-PQ from there (memory: 138 vs 784 bytes per vector).")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="Rows read at a time from the shards (memory stays flat).")
@click.option("--seed", type=int, default=0, show_default=True)
def index_build_command(predictions_dir: Path, out_dir: Path, kind: str, chunk_rows: int, seed: int) -> None:
    """Index the embeddings `semnb predict` wrote for a retrieval model (its parquet shards), for `semnb search --index`."""
    from semnb.retrieval.index import build_index_from_shards

    check_writable(out_dir.absolute().parent, f"--out {out_dir}", folder=True)
    archive = build_index_from_shards(predictions_dir, out_dir, kind=kind, chunk_rows=chunk_rows, seed=seed,
                                      progress=True)
    record = archive.record
    click.echo(f"{len(archive)} vectors, {record['kind']} ({record['search_setting']}), recall@10 "
               f"{record['recall@10']} against exact search, {record['bytes_per_vector']} bytes/vector, "
               f"built in {record['build_s']} s")
    click.echo(f"index: {out_dir.resolve()}")


# ---------------------------------------------------------------- env
@main.command("env")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, callback=_check_json_path,
              help="Also write the report as a JSON object here.")
def env_command(json_path: Path | None) -> None:
    """What this machine offers before a long run: versions, CPU and GPUs, what --device/--precision auto
    pick, and which model weights are present."""
    from semnb.env import environment
    from semnb.io_utils import write_json_atomic

    report = environment()
    click.echo("\n".join(report.lines()))
    if json_path is not None:
        write_json_atomic(json_path, report.to_dict())
        click.echo(f"wrote {json_path}")


# ---------------------------------------------------------------- bench
@main.group(cls=SemnbGroup)
def bench() -> None:
    """Speed benchmarks that print figures."""


@bench.command("encoder")
@click.option("--backbone", default="semnb-tiny", show_default=True,
              help="semnb-tiny, efficientnet-lite0, MODEL:PRETRAINED (MODEL:random for timing), clip:/path.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16", "both", "all"]), default="both",
              show_default=True, help="Precision(s) to time (auto: what --precision auto picks on the device; "
                                      "both: fp32 and bf16; all: fp32, fp16, bf16); "
                                      "bf16 and fp16 runs also report their cosine drift from fp32.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, callback=_check_json_path,
              help="Write the results object here.")
@click.option("--n-images", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--image-size", type=click.IntRange(min=32, max=1024), default=None,
              help="Input size in pixels (default: the model's own).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True,
              help="Timed passes of each kind; the best is kept.")
@click.option("--seed", type=int, default=0, show_default=True)
def bench_encoder_command(backbone: str, precision: str, device: str, json_path: Path | None, n_images: int,
                          image_size: int | None, batch_size: int, repeats: int, seed: int) -> None:
    """Images/s of plain vs dual-path encoding, their ratio, and bf16 drift from fp32."""
    from semnb.hardware import resolve_device
    from semnb.io_utils import write_json_atomic
    from semnb.models.bench import bench_encoder, format_report

    resolve_device(device)
    report = bench_encoder(backbone, precision, n_images, image_size, batch_size, repeats, seed, device)
    click.echo(format_report(report))
    if json_path is not None:
        write_json_atomic(json_path, report)
        click.echo(f"wrote {json_path}")


if __name__ == "__main__":
    main()
