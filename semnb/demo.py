"""`semnb demo`: the main job, offline, on the embedded synthetic SEM data, ending in one HTML page.

Few-shot segmentation and classification (SEM-CLIP when real CLIP weights are present,
otherwise the offline ImageNet backbone, saying so), self-supervised clustering and retrieval,
each against its baselines, with the tables and figures on one self-contained page; then what
a user does with their own images: fit on a few labelled ones, save the model, predict an
unlabelled batch, and the inspection report of that batch.

Taught in: 00_quickstart.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from semnb import viz
from semnb.clustering import viz as cluster_viz
from semnb.data import CLASSES, ImageSet, load_dataset, write_sem_dataset
from semnb.data.synth_writer import read_marker, write_unlabelled_sem
from semnb.fewshot import FewShotData, prepare_fewshot, sample_episode
from semnb.fewshot import viz as fewshot_viz
from semnb.fewshot.evaluate import segment_episode
from semnb.fitting import fit
from semnb.html_page import HtmlPage
from semnb.io_utils import write_text_atomic
from semnb.model_folder import load_model
from semnb.models import registry
from semnb.predictions import predict
from semnb.results import EvalResult
from semnb.retrieval import viz as retrieval_viz
from semnb.tasks import evaluate, task_metrics

BATCH_PER_CLASS = 8  # the unlabelled batch: 56 images, classes mixed
SUPPORT_PER_CLASS = 2  # labelled images of each class the demo's model is fit on
TEM_PER_CLASS = 24  # 168 TEM images: a query has 11 same-class images in the gallery, so K=10 can reach 1
RETRIEVAL_K = 10


def choose_backbone() -> tuple[str, str]:
    """The paper's CLIP when its weights are on this machine, else the offline ImageNet CNN."""
    status = registry.available_weights()
    clip_name = f"{registry.PAPER_CLIP}"
    if not status.get(clip_name, "missing").startswith("missing"):
        return clip_name, f"SEM-CLIP on {clip_name} ({status[clip_name]})"
    return "efficientnet-lite0", (
        f"Real CLIP weights are not on this machine ({clip_name}: {status.get(clip_name, 'missing')}); "
        "the few-shot methods run on the offline ImageNet EfficientNet-Lite0, without the text path.")


def run_demo(out_dir: str | Path, n_per_class: int = 12, size: int = 256, seed: int = 0, shots: int = 5,
             ssl_epochs: int = 5, tem_per_class: int = TEM_PER_CLASS, retrieval_k: int = RETRIEVAL_K,
             batch_per_class: int = BATCH_PER_CLASS, device: str = "auto", progress: bool = False) -> Path:
    """Generate the default data, run every SEM method against its baselines, write `report.html`.

    The defaults are the README's demo (its measured time is in the README); the tests pass smaller sizes.
    Every method computes on `device` (`auto`: the first CUDA GPU, else the CPU).
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    data_dir = synthetic_set(out_dir / "data", "sem", functools.partial(write_sem_dataset, progress=progress),
                             n_per_class=n_per_class, size=size, seed=seed)
    dataset = load_dataset(data_dir, layout="mvtec")
    test = dataset.subset([i for i, split in enumerate(dataset.splits) if split == "test"])
    backbone, backbone_note = choose_backbone()

    page = HtmlPage("semnb demo: few-shot inspection of synthetic wafer-SEM defects")
    page.paragraph(f"Data: {data_dir.resolve()} ({len(dataset)} images, seed {seed}). {backbone_note}", css="note")
    _gallery_section(page, test)

    steps = tqdm(total=5, desc="demo: few-shot segmentation", disable=not progress)
    few_shot = prepare_fewshot(dataset, "segment", backbone, device=device)
    segment = evaluate("segment", few_shot, shots=shots, seeds=[seed])
    _result_section(page, "Few-shot defect segmentation", segment, task_metrics("segment"))
    page.figure(viz.figure_png(_defect_map_figure(few_shot, shots, seed)), alt="defect maps")
    steps.update()
    steps.set_description("demo: few-shot classification")
    classify = evaluate("classify", dataset, backbone=backbone, shots=shots, seeds=[seed], device=device)
    _result_section(page, "Few-shot defect classification", classify, task_metrics("classify"))
    for method in ("semnb", "semclip"):  # semnb's recommended classifier, and the paper's
        if method in classify.extra["confusion_matrix"]:
            page.figure(viz.figure_png(fewshot_viz.confusion_matrix_figure(
                classify.extra["confusion_matrix"][method], classify.extra["class_names"], title=method)),
                alt=f"confusion matrix of {method}")
    steps.update()
    steps.set_description("demo: self-supervised clustering")
    cluster = evaluate("cluster", dataset, seeds=[seed], epochs=ssl_epochs, image_size=128, device=device)
    _result_section(page, "Label-free clustering (self-supervised multi-resolution vs texture features)",
                    cluster, task_metrics("cluster"))
    page.figure(viz.figure_png(cluster_viz.embedding_views(
        cluster.features["ssl"], cluster.clusters["ssl"], cluster.labels, cluster.class_names)),
        alt="embedding views")
    steps.update()
    steps.set_description("demo: retrieval (TEM archive)")

    _retrieval_section(page, out_dir / "tem", seed, tem_per_class, retrieval_k, device)
    steps.update()
    steps.set_description("demo: fit, save, predict an unlabelled batch")
    _fit_predict_section(page, dataset, backbone, out_dir, size, seed, batch_per_class, device)
    steps.update()
    steps.close()

    page.paragraph(f"Wall time {time.perf_counter() - started:.0f} s. Each table is one seed; "
                   "`semnb eval TASK --seeds 0,1,2` gives means and spreads.", css="note")
    return write_text_atomic(out_dir / "report.html", page.render())


def _fit_predict_section(page: HtmlPage, dataset: ImageSet, backbone: str, out_dir: Path, size: int, seed: int,
                         batch_per_class: int, device: str) -> None:
    """What a user does with their own images: fit on a few labelled ones, save, predict a new batch."""
    support = dataset.subset(_support_indices(dataset, SUPPORT_PER_CLASS))
    model = fit("segment", support, backbone=backbone, seed=seed, device=device)
    model.save(out_dir / "model", overwrite=True)
    batch = synthetic_set(out_dir / "batch", "sem-batch", write_unlabelled_sem, n_per_class=batch_per_class,
                          size=size, seed=seed + 1)
    predictions = predict(load_model(out_dir / "model", device=device), batch / "images", out_dir / "predictions",
                          overwrite=True)
    table = predictions.table
    page.heading("Your own images: fit on a few labelled ones, predict an unlabelled batch")
    page.paragraph(f"`semnb fit segment` on {len(support)} labelled images ({SUPPORT_PER_CLASS} per class) saved "
                   f"the model to {(out_dir / 'model').resolve()}; its threshold {model.threshold:.3g} was chosen "
                   f"as: {model.settings()['threshold_rule']}. `semnb predict` then mapped {len(table)} unlabelled "
                   f"images; its inspection report: {predictions.report.resolve()}.", css="note")
    page.table([{"": "defect found", "images": int(table["defective"].sum())},
                {"": "clean", "images": int((~table["defective"].astype(bool)).sum())}])
    groups = table["defective"].map({True: "defect found", False: "clean"}).to_numpy()
    page.figure(viz.figure_png(viz.score_histogram(table["score"].to_numpy(), groups, model.threshold)),
                alt="score histogram of the unlabelled batch")


def _support_indices(dataset: ImageSet, per_class: int) -> list[int]:
    """The first `per_class` images of every class: the few a user would label."""
    chosen: dict[int, list[int]] = {}
    for i, label in enumerate(dataset.labels):
        if len(chosen.setdefault(int(label), [])) < per_class:
            chosen[int(label)].append(i)
    return sorted(i for rows in chosen.values() for i in rows)


def synthetic_set(folder: Path, kind: str, write: Callable[..., Path], **settings) -> Path:
    """`folder` holding the synthetic `kind` set made with `settings`: the one there when it was, else `write`s it.

    Why: a demo run again reuses its data to save minutes, but only data made as asked (the set's
    marker file says how it was made); with another --seed or --n-per-class the old set is
    replaced whole, so the page never shows old data under the new settings.

    Taught in: 00_quickstart.
    """
    made = read_marker(folder) or {}
    if any(made.get(name) != value for name, value in {"kind": kind, **settings}.items()):
        write(folder, **settings)
    return folder


def _defect_map_figure(data: FewShotData, shots: int, seed: int, n_show: int = 4):
    """The first episode's defect maps by each method on query images of different defect classes."""
    episode = sample_episode(data.labels, shots, seed, data.class_names)
    queries = [int(i) for i in episode.queries]
    first_of_class = {}
    for i in queries:
        if data.is_defect[i]:
            first_of_class.setdefault(int(data.labels[i]), i)
    show = list(first_of_class.values())[:n_show]
    rows = [queries.index(i) for i in show]
    maps = {method: segment_episode(data, episode, method)[0].maps[rows] for method in ("semnb", "semclip", "patchcore")}
    titles = [f"query: {data.class_names[data.labels[i]]}" for i in show]
    return fewshot_viz.defect_map_overlays(data.pixels[show], list(data.masks[show]), maps, titles)


def _retrieval_section(page: HtmlPage, tem_dir: Path, seed: int, per_class: int, k: int, device: str) -> None:
    """Retrieval on the synthetic TEM archive: its two unlabelled classes are what the method is for."""
    from semnb.data.synth_tem import UNLABELLED_CLASSES, write_tem_dataset
    from semnb.retrieval import RetrievalConfig

    synthetic_set(tem_dir, "tem", write_tem_dataset, n_per_class=per_class, size=256, seed=seed)
    archive = load_dataset(tem_dir, layout="csv")
    result = evaluate("retrieve", archive, k=k, seeds=[seed], loco=True, config=RetrievalConfig(image_size=128),
                      device=device)
    page.heading(f"Semi-supervised retrieval on a synthetic TEM archive (precision@{k}, mAP@{k})")
    page.paragraph(f"{len(archive)} cross-sections from 10kx to 1Mx; {', '.join(UNLABELLED_CLASSES)} carry no "
                   "label. Half of each labelled class queries; the rest trains together with every unlabelled "
                   "image. scale_std: the magnification spread (std of log10) of a query's correct results.",
                   css="note")
    _result_section(page, "", result, task_metrics("retrieve"))
    page.figure(viz.figure_png(retrieval_viz.training_curves(result.extra["history"])), alt="training curves")
    page.paragraph("Leave-one-class-out: each labelled class in turn has its labels hidden (its images stay, "
                   "unlabelled); only its queries are scored. This is retrieval of a class nobody labelled.",
                   css="note")
    page.figure(viz.figure_png(retrieval_viz.loco_bars(result.extra["loco"], "precision_at_k", k)),
                alt="leave-one-class-out bars")


def _gallery_section(page: HtmlPage, test: ImageSet) -> None:
    page.heading("The classes, with their defect masks outlined in red")
    names = [test.class_names[label] for label in test.labels]
    order = [c for c in CLASSES if c in test.class_names]
    fig = viz.class_gallery([test.image(i) for i in range(len(test))],
                            [test.mask(i) for i in range(len(test))], names, order)
    page.figure(viz.figure_png(fig, dpi=80), alt="class gallery")


def _result_section(page: HtmlPage, title: str, result: EvalResult, metrics: Sequence[str]) -> None:
    if title:
        page.heading(title)
    shots = f"shots {result.shots}; " if result.shots else ""
    page.paragraph(f"backbone {result.backbone}; weights: {result.weights}; {shots}{result.n_images} images", css="note")
    page.table([{"method": method, **{m: values.get(m) for m in metrics}}
                for method, values in result.results.items()])
    for warning in result.warnings:
        page.paragraph(f"warning: {warning}", css="warn")
