"""STM: unsupervised and few-shot defect maps and defect classes of scanning tunnelling microscope scans.

- `preprocess`: scan validation, plane levelling, line flattening, robust normalization of a raw topograph;
- `lattice`: the lattice, its residual, the unsupervised defect map and the defect list (no labels),
  and `analyze_scan`, which runs preprocessing and the unsupervised map once per scan;
- `fewshot`: the few-shot pixel map (ilastik-style filter bank, a random forest on the k labelled
  defects plus cue pseudo-labels, combined with the unsupervised cues) and the few-shot defect
  classifier (ProtoNet prototypes beside explicit amplitude features, on crops that keep the height
  relative to the terrace);
- `evaluate`: `evaluate_stm`, the protocol of `semnb eval stm`, and `leave_one_surface_out`;
- `viz`: the figures of notebook 08.

The scans themselves are read by `semnb.data.load_scans`.

Taught in: 08_stm.
"""
from semnb.stm.evaluate import crops_by_surface, evaluate_stm, leave_one_surface_out
from semnb.stm.fewshot import (
    AMPLITUDE_WEIGHT,
    CUE_AGREEMENT,
    FEATURE_SCALES,
    HEIGHT_CUES,
    PSEUDO_BOTTOM,
    PSEUDO_ROWS,
    PSEUDO_TOP,
    SUPPORT_MIN,
    AmplitudeEmbedding,
    PixelSupport,
    ProtoNet,
    PrototypeClassifier,
    amplitude_features,
    brightness_embedding,
    cue_map,
    defect_crops,
    dihedral,
    fewshot_map,
    fewshot_pixel_map,
    filter_bank,
    fit_forest,
    flatten_embedding,
    forest_pixel_map,
    forest_probability,
    forest_row_groups,
    group_weights,
    height_agreement,
    logistic_map,
    pixel_features,
    pseudo_labels,
    relative_height,
    sample_class_support,
    sample_pixel_support,
    select_cues,
    support_polarity,
    synthetic_training_crops,
    train_protonet,
    unsupervised_cues,
    z_scored,
)
from semnb.stm.lattice import (
    MIN_TERRACE_CELLS,
    DefectMap,
    Lattice,
    ScanAnalysis,
    TerraceLattice,
    analyze_scan,
    defect_list,
    detect_defects,
    dominant_period,
    estimate_lattice,
    lattice_residual,
    level_terraces,
    step_edges,
    terrace_residual,
    unsupervised_defect_map,
)
from semnb.stm.model import StmModel, fit_stm
from semnb.stm.preprocess import (
    check_scan,
    flatten_lines,
    plane_level,
    preprocess_scan,
    robust_normalize,
)

__all__ = ["StmModel", "fit_stm", "AMPLITUDE_WEIGHT", "AmplitudeEmbedding", "amplitude_features", "FEATURE_SCALES", "PSEUDO_BOTTOM", "PSEUDO_ROWS", "PSEUDO_TOP", "cue_map",
    "filter_bank", "fit_forest", "forest_pixel_map", "forest_probability", "forest_row_groups", "group_weights",
    "MIN_TERRACE_CELLS", "TerraceLattice", "terrace_residual", "logistic_map", "pseudo_labels", "relative_height", "select_cues",
    "unsupervised_cues", "z_scored", "CUE_AGREEMENT", "HEIGHT_CUES", "SUPPORT_MIN", "height_agreement",
    "DefectMap", "Lattice", "PixelSupport", "ProtoNet", "PrototypeClassifier", "ScanAnalysis", "analyze_scan",
    "brightness_embedding", "check_scan", "crops_by_surface", "defect_crops", "defect_list", "detect_defects",
    "dihedral", "dominant_period", "estimate_lattice", "evaluate_stm", "fewshot_map", "fewshot_pixel_map",
    "flatten_embedding", "flatten_lines", "lattice_residual", "leave_one_surface_out", "level_terraces",
    "pixel_features", "plane_level", "preprocess_scan", "robust_normalize", "sample_class_support",
    "sample_pixel_support", "step_edges", "support_polarity", "synthetic_training_crops", "train_protonet",
    "unsupervised_defect_map",
]
