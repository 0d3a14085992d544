"""k-means and scores per method, `evaluate_methods`, and `semnb eval cluster` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from semnb import metrics
from semnb.cli import main
from semnb.clustering.evaluate import METHODS, baseline_specs, evaluate_clustering, evaluate_methods
from semnb.clustering.kmeans import kmeans_clusters, score_clusters, standardize
from semnb.clustering.ssl import SSLConfig
from semnb.clustering.ssl_imagenet import FinetuneConfig
from semnb.data import load_dataset
from semnb.errors import SemnbInputError


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 5]])
    labels = np.repeat([0, 1, 2], 15)
    return centres[labels] + rng.normal(0, 0.5, (45, 3)), labels


def _two_morphologies(n: int = 16, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Stripes (label 0) and dots (label 1), noisy."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for i in range(n):
        if i % 2:
            base = 0.5 + 0.4 * np.sin(2 * np.pi * yy / 6)
        else:
            base = 0.2 + 0.6 * ((yy % 8 < 3) & (xx % 8 < 3))
        images.append(np.clip(base + rng.normal(0, 0.05, (size, size)), 0, 1))
        labels.append(1 - i % 2)
    return np.asarray(images, np.float32), np.asarray(labels)


def test_standardize_gives_zero_mean_unit_variance_and_zeros_for_constant_columns():
    x = np.column_stack([np.arange(5.0), np.full(5, 3.0), 100 * np.arange(5.0)])
    z = standardize(x)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), [1, 0, 1], atol=1e-12)
    np.testing.assert_allclose(z[:, 0], z[:, 2])  # units no longer matter


def test_kmeans_finds_separated_blobs_and_scores_match_scikit_learn():
    features, labels = _blobs()
    clusters = kmeans_clusters(features, 3, seed=0)
    np.testing.assert_array_equal(clusters, kmeans_clusters(features, 3, seed=0))
    scores = score_clusters(features, clusters, labels)
    assert scores["nmi"] == pytest.approx(1.0) and scores["ari"] == pytest.approx(1.0)
    assert scores["silhouette"] == pytest.approx(silhouette_score(standardize(features), clusters), abs=1e-9)
    assert scores["silhouette"] > 0.8


def test_ari_is_hubert_and_arabies_and_matches_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(5):
        truth, guess = rng.integers(0, 4, 40), rng.integers(0, 3, 40)
        assert metrics.adjusted_rand_index(truth, guess) == pytest.approx(adjusted_rand_score(truth, guess), abs=1e-12)
    # table [[2, 1], [0, 2]]: index 1 + 1 = 2, rows 3 + 1 = 4, columns 1 + 3 = 4, E = 4 * 4 / C(5, 2) = 1.6
    # -> (2 - 1.6) / (4 - 1.6) = 1/6
    assert metrics.adjusted_rand_index([0, 0, 0, 1, 1], [0, 0, 1, 1, 1]) == pytest.approx(1 / 6)


def test_unlabelled_images_are_clustered_but_not_scored_by_nmi():
    features, labels = _blobs()
    clusters = kmeans_clusters(features, 3)
    partly = labels.copy()
    partly[:5] = -1
    scores = score_clusters(features, clusters, partly)
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(labels[5:], clusters[5:]))
    assert np.isnan(score_clusters(features, clusters, np.full(45, -1))["nmi"])


def test_evaluate_methods_runs_every_method_in_order_and_is_reproducible():
    images, labels = _two_morphologies(12)
    methods = ["ssl", "ssl_paper", "glcm", "lbp", "wavelet", "pca", "ssl_untrained", "ssl_paper_untrained"]
    config, tune = SSLConfig(epochs=2, batch_size=6, threads=1), FinetuneConfig(epochs=2, batch_size=6, threads=1)
    first = evaluate_methods(images, labels, ["dots", "stripes"], methods=methods, seeds=(0, 1),
                             ssl_config=config, finetune_config=tune, progress=False)
    result = first
    assert list(result.results) == methods and result.task == "cluster" and result.seeds == [0, 1]
    assert result.extra["k"] == 2 and result.n_images == 12
    for scores in result.results.values():
        assert -1 <= scores["silhouette"] <= 1 and 0 <= scores["nmi"] <= 1 and -1 <= scores["ari"] <= 1
        assert {"silhouette_std", "nmi_std", "ari_std"} <= set(scores)
    assert result.results["glcm"]["nmi"] == pytest.approx(1.0)  # stripes and dots differ in texture
    assert first.features["glcm"].shape == (12, 15) and first.clusters["ssl"].shape == (12,)
    assert len(first.ssl_run.history.loss) == 2 and len(first.finetune_run.history.loss) == 2
    assert result.timing["ssl_train_images_per_s"] > 0 and result.timing["ssl_paper_train_images_per_s"] > 0
    assert "pca_s" in result.timing and first.features["ssl"].shape == (12, 1280)
    assert not np.array_equal(first.features["ssl"], first.features["ssl_untrained"])  # training moved the tail
    again = evaluate_methods(images, labels, ["dots", "stripes"], methods=methods, seeds=(0, 1),
                             ssl_config=config, finetune_config=tune, progress=False)
    assert again.results == result.results


def test_evaluate_methods_computes_on_the_device_asked_for_and_records_it(implicit_device_is_meta):
    images, labels = _two_morphologies(8)
    methods = ["ssl", "ssl_paper", "glcm", "pca", "ssl_untrained"]
    config, tune = SSLConfig(epochs=1, batch_size=4, threads=1), FinetuneConfig(epochs=1, batch_size=4, threads=1)
    with implicit_device_is_meta():  # a tensor made without an explicit device would be meta and fail
        result = evaluate_methods(images, labels, ["dots", "stripes"], methods=methods, ssl_config=config,
                                  finetune_config=tune, device="cpu", precision="fp32")
    assert result.precision == "fp32" and result.extra["device"] == "cpu"
    assert result.ssl_run.compute.device.type == "cpu"
    assert all(p.device.type == "cpu" for p in result.ssl_run.model.parameters())
    assert all(p.device.type == "cpu" for p in result.finetune_run.tail.parameters())
    assert all(isinstance(f, np.ndarray) for f in result.features.values())
    plain = evaluate_methods(images, labels, ["dots", "stripes"], methods=methods, ssl_config=config,
                             finetune_config=tune, device="cpu", precision="fp32")
    for method in methods:  # the context changes nothing on the CPU
        np.testing.assert_array_equal(plain.features[method], result.features[method])


def test_pca_is_clustered_as_it_is_and_the_other_features_standardised():
    images, labels = _two_morphologies(12)
    single = evaluate_methods(images, labels, ["dots", "stripes"], methods=["pca", "lbp"], progress=False)
    scores = single.results
    assert scores["pca"]["silhouette"] == pytest.approx(
        metrics.silhouette(single.features["pca"], single.clusters["pca"]))
    assert scores["lbp"]["silhouette"] == pytest.approx(
        metrics.silhouette(standardize(single.features["lbp"]), single.clusters["lbp"]))


def test_clip_is_left_out_without_weights_unless_asked_for_by_name(monkeypatch):
    import semnb.models

    monkeypatch.setattr(semnb.models, "available_weights",
                        lambda: {semnb.models.PAPER_CLIP: "missing: not in the local caches"})
    notes: list[str] = []
    assert "clip" not in baseline_specs(["glcm", "clip"], warnings=notes)
    assert notes and "no CLIP weights" in notes[0]
    with pytest.raises(SemnbInputError, match="clip"):
        baseline_specs(["clip"], warnings=None)
    with pytest.raises(SemnbInputError, match="--methods"):
        baseline_specs(["sift"])


def test_imagenet_baseline_uses_the_offline_efficientnet():
    spec = baseline_specs(["imagenet"], device="cpu", precision="fp32")["imagenet"]
    assert spec.backbone == "efficientnet-lite0" and "ImageNet" in spec.weights
    features = spec.extract(_two_morphologies(2, 32)[0], 0)
    assert features.shape == (2, 1280) and np.isfinite(features).all()


def test_eval_cluster_command_writes_the_results_contract(tmp_images, tmp_path):
    root = tmp_images("folders", {"good": 5, "crack": 5}, size=40)
    out = tmp_path / "cluster.json"
    args = ["eval", "cluster", "--data", str(root), "--image-size", "32", "--epochs", "1", "--seeds", "0",
            "--methods", "ssl,glcm,wavelet", "--json", str(out)]
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 0, run.output
    record = json.loads(out.read_text())
    assert record["task"] == "cluster" and list(record["results"]) == ["ssl", "glcm", "wavelet"]
    assert record["n_images"] == 10 and record["k"] == 2 and record["image_size"] == 32
    assert set(record["results"]["ssl"]) >= {"silhouette", "nmi", "ari"}
    assert record["timing"]["ssl_s"] > 0 and len(record["ssl"]["loss"]) == 1
    assert "random assignment" in run.output


@pytest.mark.parametrize("extra, option", [(["--image-size", "30"], "--image-size"),
                                           (["--methods", "sift"], "--methods"),
                                           (["--k", "99"], "--k")])
def test_eval_cluster_bad_options_fail_with_one_line_naming_the_option(tmp_images, extra, option):
    root = tmp_images("folders", {"good": 3, "crack": 3}, size=32)
    run = CliRunner().invoke(main, ["eval", "cluster", "--data", str(root), "--epochs", "1", "--seeds", "0",
                                    "--methods", "glcm", *extra])
    assert run.exit_code == 2
    assert option in run.output


def test_mvtec_sets_are_clustered_on_their_test_split(tmp_images):
    dataset = load_dataset(tmp_images("mvtec", {"good": 4, "crack": 4}, size=32), layout="mvtec")
    evaluation = evaluate_clustering(dataset, methods=["glcm"], image_size=32, progress=False)
    assert evaluation.n_images == 8 and "test images only" in evaluation.warnings[0]


def test_methods_list_starts_with_the_recommended_mode_and_the_paper_beside_it():
    assert METHODS[:2] == ("ssl", "ssl_paper") and METHODS[-2:] == ("ssl_untrained", "ssl_paper_untrained")


def test_ssl_mode_picks_the_default_ssl_rows():
    images, labels = _two_morphologies(8)
    paper = evaluate_methods(images, labels, ["dots", "stripes"], ssl_mode="paper", device="cpu",
                             ssl_config=SSLConfig(epochs=1, batch_size=4, threads=1))
    assert "ssl_paper" in paper.results and "ssl" not in paper.results and "ssl_untrained" not in paper.results
    with pytest.raises(SemnbInputError, match="--ssl-mode"):
        evaluate_methods(images, labels, ["dots", "stripes"], methods=["glcm"], ssl_mode="mine")


@pytest.mark.shared_data
def test_magnetic_tile_classes_become_the_number_of_clusters(shared_data):
    dataset = load_dataset(shared_data / "magnetic_tile", layout="folders", normal_class="free")
    picks = np.concatenate([np.flatnonzero(dataset.labels == c)[:3] for c in range(len(dataset.class_names))])
    evaluation = evaluate_clustering(dataset.subset(picks), methods=["glcm", "lbp"], image_size=64, progress=False)
    assert evaluation.extra["k"] == len(dataset.class_names) == 6
    assert evaluation.n_images == 18
