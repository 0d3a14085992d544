"""`semnb eval retrieve`: the retrieval method and its four baselines, measured the same way on one data set.

Protocol (per seed):
- each labelled class is split in halves: a training half and a held-out half; unlabelled
  images (label -1) all go to training (the autoencoder uses them) and to the gallery;
- `--shots N` keeps the labels of only N training images per class (the rest stay in
  training, unlabelled);
- every method trains on the same images with the same augmented views, then embeds the
  gallery (held-out labelled images + unlabelled images); each held-out image queries the
  gallery, itself excluded, with query expansion (5 neighbours) unless `n_expand=0`; the
  general recipe's "ours" searches through its query gate (`embedding.query_gate`, fit on the
  labelled training images: each query weighs the pooled half by its novelty);
- precision@K and mAP@K (semnb.metrics, the paper's eq. 5-6) over the queries; scale_std:
  the spread (std of log10 magnification) of the correctly retrieved images of a query,
  averaged over queries;
- leave-one-class-out: for each class, the label-using methods retrain with that class's
  training labels hidden (its images stay, unlabelled) and only that class's held-out
  images query. The label-free methods (autoencoder, frozen) would train identically, so
  their main-run models are scored on the same queries.
Figures are means over seeds with the sample std (`<metric>_std`).

Everything trains and embeds on one `device` in one `precision`, resolved once (`auto`: the
first GPU, else the CPU); the faiss search runs there too where faiss can (see `index`).

Taught in: 07_retrieval.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from semnb import metrics
from semnb.data.dataset import UNLABELLED, ImageSet
from semnb.errors import SemnbInputError
from semnb.hardware import Compute
from semnb.models import DEFAULT_BACKBONE
from semnb.results import EvalResult
from semnb.retrieval.embedding import (
    LABEL_METHODS,
    METHODS,
    RetrievalConfig,
    ViewBank,
    build_view_bank,
    load_split_backbone,
    query_gate,
    train_embedding,
)
from semnb.retrieval.index import RetrievalIndex, faiss_device

METRICS = ("precision_at_k", "map_at_k", "scale_std")


class RetrievalResult(EvalResult):
    """An `EvalResult` whose table always shows the three retrieval metrics (scale_std included).

    Taught in: 07_retrieval.
    """

    def table(self, metrics=None, digits: int = 3) -> str:
        return super().table(metrics or METRICS, digits)


@dataclass(frozen=True)
class RetrievalSplit:
    """Image indices of one seed: `train` with the labels training may see, `queries`, `gallery` (queries inside it).

    Taught in: 07_retrieval.
    """

    train: np.ndarray
    train_labels: np.ndarray
    queries: np.ndarray
    gallery: np.ndarray


def split_collection(labels, test_fraction: float = 0.5, seed: int = 0, shots: int | None = None) -> RetrievalSplit:
    """Split labelled images per class into training and held-out halves; unlabelled ones train and stay in the gallery.

    A class needs two images (one to train on, one to query). `shots` keeps the labels of
    only that many training images per class (the others train unlabelled).

    Taught in: 07_retrieval.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 0 < test_fraction < 1:
        raise SemnbInputError("test_fraction", f"got {test_fraction}", "use a fraction between 0 and 1, e.g. 0.5")
    rng = np.random.default_rng([int(seed), 11])
    train, train_labels, held_out = [], [], []
    for cls in np.unique(labels[labels >= 0]):
        members = rng.permutation(np.flatnonzero(labels == cls))
        if len(members) < 2:
            continue
        n_test = min(len(members) - 1, max(1, int(round(test_fraction * len(members)))))
        held_out.append(members[:n_test])
        kept = members[n_test:]
        visible = np.full(len(kept), cls)
        if shots is not None:
            visible[int(shots):] = UNLABELLED
        train.append(kept)
        train_labels.append(visible)
    if len(held_out) < 1:
        raise SemnbInputError("labels", "no class has two labelled images", "label at least two images of a class")
    unlabelled = np.flatnonzero(labels < 0)
    queries = np.sort(np.concatenate(held_out))
    train_all = np.concatenate([*train, unlabelled])
    order = np.argsort(train_all, kind="stable")
    return RetrievalSplit(
        train=train_all[order],
        train_labels=np.concatenate([*train_labels, np.full(len(unlabelled), UNLABELLED)])[order],
        queries=queries,
        gallery=np.sort(np.concatenate([queries, unlabelled])),
    )


def withhold_class(split: RetrievalSplit, cls: int) -> RetrievalSplit:
    """The same split with class `cls`'s training labels hidden (-1): leave-one-class-out.

    Taught in: 07_retrieval.
    """
    hidden = np.where(split.train_labels == cls, UNLABELLED, split.train_labels)
    return replace(split, train_labels=hidden)


def magnifications_of(images: ImageSet) -> np.ndarray:
    """Per-image magnification from the metadata column `magnification` (NaN where unknown or absent).

    Taught in: 07_retrieval.
    """
    if "magnification" not in images.meta.columns:
        return np.full(len(images), np.nan)
    values = pd.to_numeric(images.meta["magnification"], errors="coerce").to_numpy(dtype=np.float64)
    return np.where(values > 0, values, np.nan)


def retrieval_scores(retrieved_labels: np.ndarray, retrieved_mags: np.ndarray, query_labels: np.ndarray,
                     k: int) -> dict[str, float]:
    """The three metrics of the results contract for ranked results [Q, K] (labels and magnifications).

    precision@K and mAP@K as `semnb.metrics` defines them; scale_std is
    `metrics.mean_scale_std` (the spread of each query's correct results, averaged).

    Taught in: 07_retrieval.
    """
    return {
        "precision_at_k": metrics.mean_precision_at_k(retrieved_labels, query_labels, k),
        "map_at_k": metrics.map_at_k(retrieved_labels, query_labels, k),
        "scale_std": metrics.mean_scale_std(retrieved_labels, retrieved_mags, query_labels, k),
    }


def _search_scores(index: RetrievalIndex, rows: np.ndarray, k: int, n_expand: int) -> tuple[dict, np.ndarray]:
    """Scores of the stored images at `rows` as queries (each excluded from its own results)."""
    queries = index.embeddings[rows]
    _, ids = (index.search_expanded(queries, k, exclude=rows, n_expand=n_expand) if n_expand
              else index.search(queries, k, exclude=rows))
    mags = np.where(ids >= 0, index.magnifications[np.maximum(ids, 0)], np.nan)
    return retrieval_scores(index.labels_of(ids), mags, index.labels[rows], k), ids


def _check_k(k: int, n_gallery: int) -> None:
    if not 1 <= int(k) <= n_gallery - 1:
        raise SemnbInputError("--k", f"is {k} but the gallery of held-out and unlabelled images holds {n_gallery}",
                              f"use --k {max(1, min(100, n_gallery - 1))} or less, or add images")


def evaluate_retrieval(images: ImageSet, backbone: str = DEFAULT_BACKBONE, methods=METHODS, k: int = 100,
                       seeds=(0,), config: RetrievalConfig | None = None, loco: bool = False,
                       shots: int | None = None, test_fraction: float = 0.5, n_expand: int = 5,
                       progress: bool = False, device: str = "auto", precision: str = "auto") -> EvalResult:
    """Train and score every method in `methods` on `images` (the protocol in the module docstring).

    `extra` of the result holds: settings, the split sizes, per-class scores, scores without
    query expansion, leave-one-class-out per class and mean (with `loco=True`), the
    precision@K ceiling (the best any ranking can score when a class has fewer than K
    other held-out images), the gallery's own magnification spread, and the first seed's
    training history of each method, and the device the models (`device`) and the search
    (`index_device`) ran on.

    Taught in: 07_retrieval.
    """
    compute = Compute.resolve(device, precision)
    search_device = faiss_device(compute.device)
    config = config or RetrievalConfig()
    methods = [m for m in METHODS if m in methods]
    if not methods:
        raise SemnbInputError("methods", "names no known method", f"use some of {', '.join(METHODS)}")
    seeds = [int(s) for s in seeds]
    started = time.perf_counter()
    timing: dict[str, float] = {}
    names = list(images.class_names)
    mags_all = magnifications_of(images)

    tick = time.perf_counter()
    pixels = np.stack([images.image(i, config.image_size) for i in tqdm(range(len(images)), desc="read images",
                                                                            disable=not progress)])
    timing["read_images_s"] = time.perf_counter() - tick
    reference = load_split_backbone(backbone, config.tuned_blocks, device=compute)
    tick = time.perf_counter()
    clean = build_view_bank(reference, pixels, config.image_size, progress=progress).clean
    timing["frozen_layers_s"] = time.perf_counter() - tick

    per_seed = {m: [] for m in methods}
    plain = {m: [] for m in methods}
    per_class = {m: [] for m in methods}
    loco_runs = {m: [] for m in methods}
    history, ceilings, gallery_spreads, split_sizes = {}, [], [], {}
    for seed in seeds:
        split = split_collection(images.labels, test_fraction, seed, shots)
        _check_k(k, len(split.gallery))
        rows = np.searchsorted(split.gallery, split.queries)
        gallery_labels = images.labels[split.gallery]
        ceilings.append(metrics.precision_at_k_ceiling(gallery_labels, rows, k))
        gallery_spreads.append(metrics.gallery_scale_std(gallery_labels, mags_all[split.gallery], rows))
        split_sizes = {"train": len(split.train), "train_labelled": int(np.sum(split.train_labels >= 0)),
                       "queries": len(split.queries), "gallery": len(split.gallery)}
        tick = time.perf_counter()
        views = build_view_bank(reference, pixels[split.train], config.image_size, config.views, seed, config,
                                progress=progress)
        bank = ViewBank(clean=clean[split.train], views=views.views, targets=views.targets)
        timing["frozen_layers_s"] += time.perf_counter() - tick
        main_indexes = {}
        for method in methods:
            tick = time.perf_counter()
            trained = train_embedding(method, load_split_backbone(backbone, config.tuned_blocks, device=compute),
                                      bank, split.train_labels, config, seed, progress)
            timing[f"train_{method}_s"] = timing.get(f"train_{method}_s", 0.0) + time.perf_counter() - tick
            history.setdefault(method, trained.history)
            index = RetrievalIndex(trained.encode_frozen(clean[split.gallery]), [str(images.paths[i]) for i in split.gallery],
                                   images.labels[split.gallery], names, mags_all[split.gallery], device=search_device,
                                   gate=_gate(trained, bank, split.train_labels, config))
            main_indexes[method] = index
            scores, ids = _search_scores(index, rows, k, n_expand)
            per_seed[method].append(scores)
            per_class[method].append(metrics.per_class_retrieval(index.labels_of(ids), index.labels[rows], k))
            plain[method].append(_search_scores(index, rows, k, 0)[0])
        if loco:
            tick = time.perf_counter()
            for method in methods:
                loco_runs[method].append(_leave_one_class_out(method, main_indexes[method], split, rows, images.labels,
                                                              clean, bank, backbone, config, seed, k, n_expand, progress,
                                                              compute))
            timing["loco_s"] = timing.get("loco_s", 0.0) + time.perf_counter() - tick
    timing["total_s"] = time.perf_counter() - started

    results = {m: metrics.mean_std_over_seeds(per_seed[m]) for m in methods}
    extra = {
        "k": int(k),
        "n_expand": int(n_expand),
        "settings": {**asdict(config), "test_fraction": test_fraction},
        "split": split_sizes,
        "precision_at_k_ceiling": float(np.mean(ceilings)),
        "gallery_scale_std": float(np.nanmean(gallery_spreads)) if np.any(np.isfinite(gallery_spreads)) else None,
        "without_query_expansion": {m: metrics.mean_std_over_seeds(plain[m]) for m in methods},
        "per_class": {m: _class_means(per_class[m], names) for m in methods},
        "history": history,
        "device": str(compute.device),
        "index_device": str(search_device),
    }
    if loco:
        extra["loco"] = {m: _loco_table(loco_runs[m], names) for m in methods}
    warnings = []
    if extra["precision_at_k_ceiling"] < 0.999:
        warnings.append(f"K={k} exceeds the held-out images of some classes: the best possible precision@K is "
                        f"{extra['precision_at_k_ceiling']:.3f} (pass a smaller --k to compare against 1)")
    if not np.any(np.isfinite(mags_all)):
        warnings.append("no magnification column in the data: scale_std is undefined")
    return RetrievalResult(
        task="retrieve", data=str(images.root), backbone=backbone, weights=reference.weights, precision=compute.precision,
        shots=shots, seeds=seeds, n_images=len(images), results=results, timing=timing, warnings=warnings,
        extra=_without_nan(extra),
    )


def loco_text(result: EvalResult, digits: int = 3) -> str:
    """Leave-one-class-out as text: one row per held-out class (and the mean), precision@K / mAP@K per method.

    Taught in: 07_retrieval.
    """
    loco = result.extra.get("loco")
    if not loco:
        return "(no leave-one-class-out results)"
    methods = list(loco)
    classes = list(loco[methods[0]])
    k = result.extra.get("k")
    rows = [["held-out class", *[f"{m} P@{k} / mAP@{k}" for m in methods]]]
    for cls in classes:
        rows.append([cls, *[f"{loco[m][cls]['precision_at_k']:.{digits}f} / {loco[m][cls]['map_at_k']:.{digits}f}"
                            for m in methods]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "leave-one-class-out (queries of the held-out class only)\n" + "\n".join(lines)


def _without_nan(value):
    """JSON has no NaN: undefined numbers in nested tables become None."""
    if isinstance(value, dict):
        return {key: _without_nan(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(v) for v in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def _leave_one_class_out(method, main_index, split, rows, labels, clean, bank, backbone, config, seed, k,
                         n_expand, progress, compute) -> dict[int, dict[str, float]]:
    """Per held-out class: scores of that class's queries after training without its labels."""
    out = {}
    for cls in np.unique(labels[split.queries]):
        mine = rows[labels[split.queries] == cls]
        if method in LABEL_METHODS:
            hidden = withhold_class(split, int(cls))
            trained = train_embedding(method, load_split_backbone(backbone, config.tuned_blocks, device=compute),
                                      bank, hidden.train_labels, config, seed, progress)
            index = RetrievalIndex(trained.encode_frozen(clean[split.gallery]), main_index.paths, main_index.labels,
                                   main_index.class_names, main_index.magnifications, device=main_index.device,
                                   gate=_gate(trained, bank, hidden.train_labels, config))
        else:  # trains without labels: hiding one class's labels changes nothing
            index = main_index
        scores, _ = _search_scores(index, mine, k, n_expand)
        out[int(cls)] = {"precision_at_k": scores["precision_at_k"], "map_at_k": scores["map_at_k"]}
    return out


def _gate(trained, bank: ViewBank, train_labels: np.ndarray, config: RetrievalConfig):
    """The query gate of `trained` from the labelled training images (None where the method has none)."""
    return query_gate(trained, trained.encode_frozen(bank.clean[train_labels >= 0]), config)


def _class_means(runs: list[dict], names: list[str]) -> dict[str, dict[str, float]]:
    classes = sorted(set().union(*[r.keys() for r in runs]))
    return {names[c]: {metric: float(np.mean([r[c][metric] for r in runs if c in r])) for metric in ("precision_at_k", "map_at_k")}
            for c in classes}


def _loco_table(runs: list[dict], names: list[str]) -> dict[str, dict[str, float]]:
    """Per class (mean over seeds) and "mean" over classes."""
    table = _class_means(runs, names)
    table["mean"] = {metric: float(np.mean([row[metric] for row in table.values()])) for metric in ("precision_at_k", "map_at_k")}
    return table

