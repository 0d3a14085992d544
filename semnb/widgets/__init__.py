"""The Explorer base every method's `explore.py` builds on: a pure `render_*` function (plain inputs ->
`RenderResult`) plus a thin widget that re-renders on every control change.

A notebook run headless calls the render functions (a `RenderResult` displays itself); the
widgets keep the latest result in `.result`. The explorers themselves live with their methods:
`semnb.fewshot.explore` (prompt editor, segmentation explorer), `semnb.clustering.explore`
(cluster explorer), `semnb.retrieval.explore` (retrieval browser).
"""
from semnb.widgets.base import Explorer, RenderResult

__all__ = ["Explorer", "RenderResult"]
