"""One entry point for every task: `semnb.evaluate(task, images, **options) -> EvalResult`.

Why: the CLI, notebook 09 and the demo all run "a task's protocol on loaded data"; each used to
carry its own dispatch over the five per-task functions. Here is the only copy. Each task's
function lives in its method package's `evaluate.py` and takes loaded data, never a folder:

| task       | function                                            | `images`                              |
|------------|-----------------------------------------------------|---------------------------------------|
| `segment`  | `semnb.fewshot.evaluate.evaluate_segmentation`     | `ImageSet` (or a prepared FewShotData) |
| `classify` | `semnb.fewshot.evaluate.evaluate_classification`   | `ImageSet` (or a prepared FewShotData) |
| `cluster`  | `semnb.clustering.evaluate.evaluate_clustering`    | `ImageSet`                            |
| `retrieve` | `semnb.retrieval.evaluate.evaluate_retrieval`      | `ImageSet`                            |
| `stm`      | `semnb.stm.evaluate.evaluate_stm`                  | scans from `semnb.data.load_scans`    |

`options` are that function's keyword arguments. The method packages are imported only when
their task runs, so `import semnb` stays light.

Taught in: 09_report.
"""
from __future__ import annotations

from importlib import import_module

from semnb.errors import SemnbInputError
from semnb.results import EvalResult

TASKS = {
    "segment": ("semnb.fewshot.evaluate", "evaluate_segmentation"),
    "classify": ("semnb.fewshot.evaluate", "evaluate_classification"),
    "cluster": ("semnb.clustering.evaluate", "evaluate_clustering"),
    "retrieve": ("semnb.retrieval.evaluate", "evaluate_retrieval"),
    "stm": ("semnb.stm.evaluate", "evaluate_stm"),
}
METRICS = {
    "segment": ("image_auroc", "pixel_auroc", "pixel_f1_max", "aupro"),
    "classify": ("accuracy", "macro_precision", "macro_recall", "macro_f1"),
    "cluster": ("silhouette", "nmi"),
    "retrieve": ("precision_at_k", "map_at_k", "scale_std"),
    "stm": ("pixel_auroc", "pixel_f1_max", "accuracy", "macro_f1"),
}
"""The metrics each task reports, in the order its tables show them (design.md's metric names)."""


def task_function(task: str):
    """The per-task evaluation function of `task` (see the table in the module docstring).

    Taught in: 09_report.
    """
    if task not in TASKS:
        raise SemnbInputError("task", f"unknown task {task!r}", f"use one of {', '.join(TASKS)}")
    module, name = TASKS[task]
    return getattr(import_module(module), name)


def evaluate(task: str, images, **options) -> EvalResult:
    """Run `task`'s protocol (its method against its baselines) on loaded `images`; the results contract.

    `evaluate_clustering` also hands back the features and clusters notebook 06 plots (a
    `ClusterEvaluation`); here only its results contract is returned.

    Taught in: 09_report.
    """
    result = task_function(task)(images, **options)
    return result if isinstance(result, EvalResult) else result.result
