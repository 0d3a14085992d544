"""STM: unsupervised and few-shot defect maps and defect classes of scanning tunnelling microscope scans.

- `preprocess`: plane levelling, line flattening, robust normalisation of a raw topograph;
- `lattice`: the lattice, its residual, the unsupervised defect map and the defect list (no labels);
- `fewshot`: the few-shot pixel map and the few-shot defect classifier (ProtoNet, prototypes);
- `evaluate`: `evaluate_stm`, the protocol of `semnb eval stm`;
- `viz`: the figures of notebook 08.

Taught in: 08_stm.
"""
from semnb.stm.evaluate import analyse_scan, evaluate_stm
from semnb.stm.fewshot import (
    PixelSupport,
    ProtoNet,
    PrototypeClassifier,
    defect_crops,
    dihedral,
    fewshot_pixel_map,
    flatten_embedding,
    pixel_features,
    sample_pixel_support,
    support_polarity,
    train_protonet,
)
from semnb.stm.lattice import (
    DefectMap,
    Lattice,
    defect_list,
    detect_defects,
    dominant_period,
    estimate_lattice,
    lattice_residual,
    level_terraces,
    step_edges,
    unsupervised_defect_map,
)
from semnb.stm.preprocess import flatten_lines, plane_level, preprocess_scan

__all__ = [
    "DefectMap", "Lattice", "PixelSupport", "ProtoNet", "PrototypeClassifier", "analyse_scan", "defect_crops",
    "defect_list", "detect_defects", "dihedral", "dominant_period", "estimate_lattice", "evaluate_stm",
    "fewshot_pixel_map", "flatten_embedding", "flatten_lines", "lattice_residual", "level_terraces",
    "pixel_features", "plane_level", "preprocess_scan", "sample_pixel_support", "step_edges", "support_polarity",
    "train_protonet", "unsupervised_defect_map",
]
