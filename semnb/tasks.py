"""One entry point for every task: `semnb.evaluate(task, images, **options) -> EvalResult`.

Why: the CLI, notebook 10 and the demo all run "a task's protocol on loaded data"; each used to
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

Taught in: 10_eval_report.
"""
from __future__ import annotations

from importlib import import_module

from semnb.errors import SemnbInputError
from semnb.results import EvalResult

TASKS = {  # task -> (module, its evaluation function, its tuple of metric names)
    "segment": ("semnb.fewshot.evaluate", "evaluate_segmentation", "SEGMENT_METRICS"),
    "classify": ("semnb.fewshot.evaluate", "evaluate_classification", "CLASSIFY_METRICS"),
    "cluster": ("semnb.clustering.evaluate", "evaluate_clustering", "METRICS"),
    "retrieve": ("semnb.retrieval.evaluate", "evaluate_retrieval", "METRICS"),
    "stm": ("semnb.stm.evaluate", "evaluate_stm", "METRICS"),
}


def _task(task: str, what: int):
    if task not in TASKS:
        raise SemnbInputError("task", f"unknown task {task!r}", f"use one of {', '.join(TASKS)}")
    module, *names = TASKS[task]
    return getattr(import_module(module), names[what])


def task_function(task: str):
    """The per-task evaluation function of `task` (see the table in the module docstring).

    Taught in: 10_eval_report.
    """
    return _task(task, 0)


def task_metrics(task: str) -> tuple[str, ...]:
    """The metrics `task` reports, in the order its tables show them (design.md's metric names).

    Taught in: 10_eval_report.
    """
    return tuple(_task(task, 1))


def evaluate(task: str, images, **options) -> EvalResult:
    """Run `task`'s protocol (its method against its baselines) on loaded `images`; the results contract.

    Suspect files the method reads on the way (`semnb.data.image_io.SuspectDataWarning`: an
    empty mask on a defect image, NaN pixels) are listed once each in the result's warnings.

    Taught in: 10_eval_report.
    """
    from semnb.data.image_io import suspect_data_to

    with suspect_data_to([]) as notes:
        result = task_function(task)(images, **options)
    result.warnings.extend(note for note in notes if note not in result.warnings)
    return result
