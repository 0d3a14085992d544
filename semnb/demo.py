"""`semnb demo`: the main job, offline, on the embedded synthetic SEM data, ending in one HTML page.

Few-shot segmentation and classification (SEM-CLIP when real CLIP weights are present,
otherwise the offline ImageNet backbone, saying so), self-supervised clustering and retrieval,
each against its baselines, with the tables and figures on one self-contained page.

Taught in: 00_quickstart.
"""
from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from semnb import viz, viz_embedding, viz_fewshot
from semnb.data import CLASSES, ImageSet, load_dataset, write_sem_dataset
from semnb.html_page import HtmlPage
from semnb.io_utils import write_text_atomic
from semnb.models import registry
from semnb.results import EvalResult


def choose_backbone() -> tuple[str, str]:
    """The paper's CLIP when its weights are on this machine, else the offline ImageNet CNN."""
    status = registry.available_weights()
    clip_name = f"{registry.DEFAULT_BACKBONE}"
    if not status.get(clip_name, "missing").startswith("missing"):
        return clip_name, f"SEM-CLIP on {clip_name} ({status[clip_name]})"
    return "efficientnet-lite0", (
        f"Real CLIP weights are not on this machine ({clip_name}: {status.get(clip_name, 'missing')}); "
        "the few-shot methods run on the offline ImageNet EfficientNet-Lite0, without the text path.")


def run_demo(out_dir: str | Path, n_per_class: int = 12, size: int = 256, seed: int = 0,
             shots: int = 5, progress: bool = True) -> Path:
    """Generate the default data, run every SEM method against its baselines, write `report.html`."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    data_dir = out_dir / "data"
    if not (data_dir / "manifest.csv").exists():
        write_sem_dataset(data_dir, n_per_class=n_per_class, size=size, seed=seed, progress=progress)
    dataset = load_dataset(data_dir, layout="mvtec")
    test = dataset.subset([i for i, split in enumerate(dataset.splits) if split == "test"])
    backbone, backbone_note = choose_backbone()

    page = HtmlPage("semnb demo: few-shot inspection of synthetic wafer-SEM defects")
    page.paragraph(f"Data: {data_dir.resolve()} ({len(dataset)} images, seed {seed}). {backbone_note}", css="note")
    _gallery_section(page, test)

    steps = tqdm(total=4, desc="semnb demo", disable=not progress)
    from semnb.fewshot.evaluate import evaluate_classification, evaluate_segmentation

    segment = evaluate_segmentation(dataset, backbone=backbone, shots=shots, seeds=[seed])
    _result_section(page, "Few-shot defect segmentation", segment,
                    ["image_auroc", "pixel_auroc", "pixel_f1_max", "aupro"])
    steps.update()
    classify = evaluate_classification(dataset, backbone=backbone, shots=shots, seeds=[seed])
    _result_section(page, "Few-shot defect classification", classify,
                    ["accuracy", "macro_precision", "macro_recall", "macro_f1"])
    first = next(iter(classify.extra["confusion_matrix"]))
    page.figure(viz.figure_png(viz_fewshot.confusion_matrix_figure(
        classify.extra["confusion_matrix"][first], classify.extra["class_names"], title=first)),
        alt="confusion matrix")
    steps.update()

    from semnb.clustering import eval_cluster

    cluster = eval_cluster(dataset, seeds=[seed], epochs=5, image_size=128, progress=False)
    _result_section(page, "Label-free clustering (self-supervised multi-resolution vs texture features)",
                    cluster.result, ["silhouette", "nmi"])
    page.figure(viz.figure_png(viz_embedding.embedding_views(
        cluster.features["ssl"], cluster.clusters["ssl"], cluster.labels, cluster.class_names)),
        alt="embedding views")
    steps.update()

    from semnb.retrieval import RetrievalConfig
    from semnb.retrieval_eval import evaluate_retrieval

    retrieve = evaluate_retrieval(test, k=10, seeds=[seed], config=RetrievalConfig(epochs=3, image_size=96))
    _result_section(page, "Semi-supervised retrieval (precision@10, mAP@10)", retrieve,
                    ["precision_at_k", "map_at_k"])
    steps.update()
    steps.close()

    page.paragraph(f"Wall time {time.perf_counter() - started:.0f} s. Each table is one seed; "
                   "`semnb eval TASK --seeds 0,1,2` gives means and spreads.", css="note")
    return write_text_atomic(out_dir / "report.html", page.render())


def _gallery_section(page: HtmlPage, test: ImageSet) -> None:
    page.heading("The classes, with their defect masks outlined in red")
    names = [test.class_names[label] for label in test.labels]
    order = [c for c in CLASSES if c in test.class_names]
    fig = viz.class_gallery([test.image(i) for i in range(len(test))],
                            [test.mask(i) for i in range(len(test))], names, order)
    page.figure(viz.figure_png(fig, dpi=80), alt="class gallery")


def _result_section(page: HtmlPage, title: str, result: EvalResult, metrics: list[str]) -> None:
    page.heading(title)
    page.paragraph(f"backbone {result.backbone}; weights: {result.weights}; shots {result.shots}; "
                   f"{result.n_images} images", css="note")
    page.table([{"method": method, **{m: values.get(m) for m in metrics}}
                for method, values in result.results.items()])
    for warning in result.warnings:
        page.paragraph(f"warning: {warning}", css="warn")
