"""`semnb.evaluate(task, images, **options)`: the one dispatch to each task's protocol."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import semnb
from semnb.clustering.evaluate import ClusterEvaluation, evaluate_methods
from semnb.data.image_io import SuspectDataWarning
from semnb.errors import SemnbInputError
from semnb.results import EvalResult
from semnb.tasks import TASKS, task_function, task_metrics

CONTRACT_METRICS = {"image_auroc", "pixel_auroc", "pixel_f1_max", "aupro", "accuracy", "macro_precision",
                    "macro_recall", "macro_f1", "silhouette", "nmi", "precision_at_k", "map_at_k", "scale_std",
                    "ari"}  # design.md's list, plus the adjusted Rand index issue 18 asked for beside NMI


@pytest.mark.parametrize("task, module, name", [
    ("segment", "semnb.fewshot.evaluate", "evaluate_segmentation"),
    ("classify", "semnb.fewshot.evaluate", "evaluate_classification"),
    ("cluster", "semnb.clustering.evaluate", "evaluate_clustering"),
    ("retrieve", "semnb.retrieval.evaluate", "evaluate_retrieval"),
    ("stm", "semnb.stm.evaluate", "evaluate_stm"),
])
def test_each_task_runs_its_packages_evaluate_function_with_the_options(monkeypatch, task, module, name):
    calls, ran = [], EvalResult(task, "d", "b", "w", "fp32", None, [3], 1)
    monkeypatch.setattr(f"{module}.{name}", lambda images, **options: calls.append((images, options)) or ran)
    assert task_function(task).__name__ == "<lambda>"
    assert semnb.evaluate(task, "the images", seeds=[3], progress=False) is ran
    assert calls == [("the images", {"seeds": [3], "progress": False})]


def test_suspect_files_met_during_the_run_are_listed_once_in_the_warnings(monkeypatch):
    def run(images, **options):
        for _ in range(3):  # the same file read three times (shots, seeds) is listed once
            warnings.warn("a.png: mask marks no defect pixel", SuspectDataWarning, stacklevel=1)
        return EvalResult("segment", "d", "b", "w", "fp32", 1, [0], 1, warnings=["backbone note"])

    monkeypatch.setattr("semnb.fewshot.evaluate.evaluate_segmentation", run)
    result = semnb.evaluate("segment", None)
    assert result.warnings == ["backbone note", "a.png: mask marks no defect pixel"]


def test_every_task_names_contract_metrics_and_an_unknown_task_is_refused():
    for task in TASKS:
        assert task_metrics(task) and set(task_metrics(task)) <= CONTRACT_METRICS, task
    with pytest.raises(SemnbInputError, match="unknown task 'segmentation'.*segment, classify"):
        semnb.evaluate("segmentation", None)


def test_a_cluster_evaluation_is_an_eval_result_whose_json_leaves_the_arrays_out():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 6)
    pixels = (rng.random((12, 16, 16)) * 0.2 + labels[:, None, None] * 0.6).astype(np.float32)
    evaluation = evaluate_methods(pixels, labels, ["a", "b"], methods=["pca", "lbp"], seeds=[0])
    assert isinstance(evaluation, ClusterEvaluation) and isinstance(evaluation, EvalResult)
    assert evaluation.features["pca"].shape[0] == 12 and evaluation.pixels is pixels
    out = evaluation.to_json()
    assert not {"pixels", "labels", "features", "clusters", "ssl_run"} & set(out)
    assert out["class_names"] == ["a", "b"]  # from `extra`, as before
    assert list(out)[:8] == ["task", "data", "backbone", "weights", "precision", "shots", "seeds", "n_images"]
    assert out["k"] == 2 and set(out["results"]) == {"pca", "lbp"}
    json.dumps(out)  # plain JSON, no arrays
