"""`semnb demo`: the main job, offline, on the embedded synthetic SEM data, ending in one HTML page.

Taught in: 00_quickstart.
"""
from __future__ import annotations

import time
from pathlib import Path

from semnb import viz
from semnb.data import load_dataset, write_sem_dataset
from semnb.html_page import HtmlPage
from semnb.io_utils import write_text_atomic


def run_demo(out_dir: str | Path, n_per_class: int = 12, size: int = 256, seed: int = 0) -> Path:
    """Generate the default data set, look at it, and write `report.html` in `out_dir`."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    data_dir = out_dir / "data"
    if not (data_dir / "manifest.csv").exists():
        write_sem_dataset(data_dir, n_per_class=n_per_class, size=size, seed=seed)
    dataset = load_dataset(data_dir, layout="mvtec")

    page = HtmlPage("semnb demo: synthetic wafer-SEM defects")
    page.paragraph(f"Data: {data_dir.resolve()} ({len(dataset)} images, seed {seed}).", css="note")
    page.heading("The classes, with their defect masks outlined in red")
    test = dataset.subset([i for i, s in enumerate(dataset.splits) if s == "test"])
    names = [test.class_names[label] for label in test.labels]
    fig = viz.class_gallery([test.image(i) for i in range(len(test))],
                            [test.mask(i) for i in range(len(test))], names, test.class_names)
    page.figure(viz.figure_png(fig), alt="class gallery")
    page.table([{"class": name, "images": count} for name, count in dataset.class_counts().items()])
    page.paragraph(f"Wall time {time.perf_counter() - started:.1f} s.", css="note")
    return write_text_atomic(out_dir / "report.html", page.render())
