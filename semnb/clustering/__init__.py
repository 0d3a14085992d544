"""Label-free clustering of SEM defect morphologies: self-supervised multi-resolution learning vs texture features.

- `ssl_imagenet`: semnb's `ssl` mode, an ImageNet encoder fine-tuned with lightly's VICReg, pooled on the defect region;
- `ssl`: the paper's method (`ssl_paper`): the image pyramid, the shared encoder and the cross-scale SimSiam loss;
- `baselines`: GLCM, LBP, wavelet and raw-pixel PCA features, and frozen backbone features;
- `defect_crop`: a label-free locator that cuts a window around each image's defect;
- `kmeans`: standardise, k-means and the scores every feature space shares;
- `evaluate`: `evaluate_clustering`, the protocol of `semnb eval cluster`, and `split_for_clustering`;
- `viz` and `explore`: the figures and the cluster explorer of notebook 06.

Taught in: 06_ssl_clustering.
"""
from semnb.clustering.evaluate import (
    METHODS,
    ClusterEvaluation,
    evaluate_clustering,
    evaluate_methods,
    split_for_clustering,
)
from semnb.clustering.kmeans import kmeans_clusters, score_clusters
from semnb.clustering.model import ClusterModel, fit_cluster
from semnb.clustering.ssl import SSLConfig, embed, train_ssl

__all__ = ["ClusterModel", "fit_cluster", "METHODS", "ClusterEvaluation", "SSLConfig", "embed", "evaluate_clustering", "evaluate_methods",
           "kmeans_clusters", "score_clusters", "split_for_clustering", "train_ssl"]
