"""The results contract of `semnb eval` (design.md): one JSON object per run, one table on screen.

Means and spreads over seeds come from `semnb.metrics.mean_std_over_seeds`.

Taught in: 10_eval_report.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from semnb.io_utils import write_json_atomic

NOT_IN_JSON = {"json": False}
"""Field metadata of an `EvalResult` subclass: what a notebook plots (arrays, models) but the JSON leaves out."""


@dataclass
class EvalResult:
    """What one `semnb eval TASK` run measured. `results` maps method -> metric -> value.

    Method order matters: the paper's method first, then its baselines.
    """

    task: str
    data: str
    backbone: str
    weights: str
    precision: str
    shots: int | None
    seeds: list[int]
    n_images: int
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The contract's object: every field (a subclass's arrays marked `NOT_IN_JSON` left out), `extra` merged in."""
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.metadata.get("json", True)}
        extra = out.pop("extra")
        out.update(extra)
        return out

    def write(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_json())

    def table(self, metrics: Sequence[str] | None = None, digits: int = 3) -> str:
        """A plain-text table: one row per method, mean +- std over seeds, 'undef' for NaN."""
        return format_table(self.results, metrics, digits)


def format_table(results: Mapping[str, Mapping[str, float]], metrics: Sequence[str] | None = None,
                 digits: int = 3) -> str:
    if not results:
        return "(no results)"
    if metrics is None:
        first = next(iter(results.values()))
        # "x_std" is shown as x's spread, unless it is a metric of its own (e.g. retrieval's scale_std)
        metrics = [k for k in first if not (k.endswith("_std") and k[: -len("_std")] in first)]
    header = ["method", *metrics]
    rows = [header]
    for method, values in results.items():
        row = [method]
        for metric in metrics:
            value = values.get(metric, float("nan"))
            std = values.get(f"{metric}_std")
            if value is None or (isinstance(value, float) and math.isnan(value)):
                row.append("undef")
            elif std is not None and not math.isnan(std):
                row.append(f"{value:.{digits}f}±{std:.{digits}f}")
            else:
                row.append(f"{value:.{digits}f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
