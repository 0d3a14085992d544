"""Interactive explorers: each a pure `render_*` function (plain inputs -> `RenderResult`) plus a thin widget.

- `prompt_editor` / `render_prompt_editor`: edit state and template phrases, see one image's
  class probabilities and defect map change (02_prompts);
- `segmentation_explorer` / `render_segmentation`: shots, threshold, level and path switches
  over a few-shot defect map, with live metrics (04_segmentation);
- `cluster_explorer` / `render_clusters`: a 2-D map of the embeddings, a cluster's thumbnails
  (06_ssl_clustering);
- `retrieval_browser` / `render_retrieval`: a query's top K with class and magnification
  (07_retrieval).

A notebook run headless calls the render functions (a `RenderResult` displays itself);
the widgets re-render on every control change and keep the latest result in `.result`.
"""
from semnb.widgets.base import Explorer, RenderResult
from semnb.widgets.cluster_explorer import cluster_explorer, render_clusters
from semnb.widgets.prompt_editor import (
    PromptEditorData,
    default_phrases,
    prepare_prompt_editor,
    prompt_editor,
    render_prompt_editor,
)
from semnb.widgets.retrieval_browser import render_retrieval, retrieval_browser
from semnb.widgets.segmentation_explorer import (
    render_segmentation,
    segment_setting,
    segmentation_explorer,
)

__all__ = [
    "Explorer",
    "PromptEditorData",
    "RenderResult",
    "cluster_explorer",
    "default_phrases",
    "prepare_prompt_editor",
    "prompt_editor",
    "render_clusters",
    "render_prompt_editor",
    "render_retrieval",
    "render_segmentation",
    "retrieval_browser",
    "segment_setting",
    "segmentation_explorer",
]
