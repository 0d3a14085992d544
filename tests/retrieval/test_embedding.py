"""Retrieval training pieces (mining, standardising, decoder, schedule, determinism) and the eval protocol.

Training tests use `semnb-tiny-cnn` (a random 4-layer CNN) on 32-px images so the file stays fast.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.miners import TripletMarginMiner

import semnb.retrieval.evaluate as retrieval_eval
from semnb.cli import main
from semnb.data import load_dataset
from semnb.data.synth_tem import write_tem_dataset
from semnb.errors import SemnbInputError
from semnb.hardware import SlowPrecisionWarning
from semnb.retrieval.embedding import (
    BACKBONES,
    LABEL_METHODS,
    METHODS,
    TINY_CNN,
    EmbeddingNet,
    MirrorDecoder,
    RetrievalConfig,
    Standardize,
    TrainedEmbedding,
    augment,
    build_view_bank,
    embedding_distances,
    load_split_backbone,
    mine_semihard,
    mirror_levels,
    phase_schedule,
    query_gate,
    train_embedding,
)
from semnb.retrieval.evaluate import (
    evaluate_retrieval,
    retrieval_scores,
    split_collection,
    withhold_class,
)

SIZE = 32
TINY_CONFIG = RetrievalConfig(image_size=SIZE, epochs=2, views=2, dims=16, batch_size=16, per_class=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ semi-hard mining


def _at_angles(degrees):
    radians = np.deg2rad(degrees)
    return torch.tensor(np.stack([np.cos(radians), np.sin(radians)], axis=1), dtype=torch.float32)


def test_semihard_miner_on_a_hand_made_example():
    # unit vectors at these angles; chord distance d = 2 sin(angle/2); margin 0.3
    emb = _at_angles([0, 20, 30, 90, 25])
    labels = torch.tensor([0, 0, 1, 1, 2])
    a, p, n = mine_semihard(emb, labels, margin=0.3)
    picks = {(int(x), int(y)): int(z) for x, y, z in zip(a, p, n)}
    # (0,1): d_ap=0.347; negatives 2 (0.518) and 4 (0.433) are semi-hard, 3 (1.414) is too far: closest semi-hard is 4
    assert picks[(0, 1)] == 4
    # (1,0): d_ap=0.347; 2 (0.174) and 4 (0.087) are harder than the positive, 3 (1.147) beyond the margin:
    # no semi-hard negative, so the closest negative of all, 4
    assert picks[(1, 0)] == 4
    # (2,3): d_ap=1.0, window (1.0, 1.3) is empty (0: 0.518, 1: 0.174, 4: 0.087): closest negative, 4
    assert picks[(2, 3)] == 4
    assert len(picks) == 4  # two ordered pairs per two-image class; the singleton class has none


def _brute_force_semihard(emb: np.ndarray, labels: np.ndarray, margin: float):
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    out = []
    for a in range(len(labels)):
        for p in range(len(labels)):
            if a == p or labels[a] != labels[p]:
                continue
            d_ap = np.linalg.norm(unit[a] - unit[p])
            negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
            if not negatives:
                continue
            d = {n: np.linalg.norm(unit[a] - unit[n]) for n in negatives}
            semi = [n for n in negatives if d_ap < d[n] < d_ap + margin]
            pool = semi if semi else negatives
            out.append((a, p, min(pool, key=lambda n: d[n])))
    return sorted(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semihard_miner_matches_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(24, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 24)
    a, p, n = mine_semihard(torch.from_numpy(emb), torch.from_numpy(labels), margin=0.4)
    mined = sorted(zip(a.tolist(), p.tolist(), n.tolist()))
    assert mined == _brute_force_semihard(emb, labels, 0.4)


def test_triplet_loss_on_mined_triplets_is_the_hinge_averaged_over_active_triplets():
    rng = np.random.default_rng(3)
    emb = torch.from_numpy(rng.normal(size=(16, 6)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 3, 16))
    triplets = mine_semihard(emb, labels, 0.2)
    loss = TripletMarginLoss(margin=0.2, distance=__import__("pytorch_metric_learning.distances",
                                                                fromlist=["LpDistance"]).LpDistance(normalize_embeddings=True))
    value = float(loss(emb, labels, indices_tuple=triplets))
    d = embedding_distances(emb)
    hinge = torch.relu(d[triplets[0], triplets[1]] - d[triplets[0], triplets[2]] + 0.2)
    assert value == pytest.approx(float(hinge[hinge > 0].mean()), rel=1e-5)


# ------------------------------------------------------------------ model pieces


def test_standardising_layer_gives_zero_mean_unit_std_per_embedding():
    z = torch.randn(7, 32) * torch.linspace(0.1, 30, 7)[:, None] + torch.linspace(-5, 5, 7)[:, None]
    out = Standardize()(z)
    assert torch.allclose(out.mean(dim=1), torch.zeros(7), atol=1e-5)
    assert torch.allclose(out.std(dim=1, unbiased=False), torch.ones(7), atol=1e-4)
    assert torch.allclose(Standardize()(z[2:3]), out[2:3])  # alone or in a batch: the same vector


def test_decoder_mirrors_the_backbone_resolutions_back_to_the_input_size():
    backbone = load_split_backbone(TINY_CNN)
    levels = mirror_levels(backbone, 64)
    assert levels == [(32, 8), (16, 16), (8, 32), (4, 64)]
    decoder = MirrorDecoder(levels, 64, 64)
    with torch.no_grad():
        out = decoder(backbone(torch.rand(2, 1, 64, 64)))
    assert out.shape == (2, 1, 64, 64) and float(out.min()) >= 0 and float(out.max()) <= 1
    widths = [m.out_channels for m in decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [64, 32, 16, 8, 1]


def test_efficientnet_split_equals_the_whole_network():
    from semnb.models.efficientnet import MEAN, STD, create_efficientnet_lite0
    from semnb.models.pixels import normalize

    split = load_split_backbone("efficientnet-lite0", tuned_blocks=3).eval()
    whole, _ = create_efficientnet_lite0()
    gray = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(split(gray), whole.extract_features(normalize(gray, MEAN, STD)), atol=1e-4)
    assert "ImageNet" in split.weights


def test_clip_backbones_are_refused_with_a_fix():
    with pytest.raises(SemnbInputError, match="--backbone"):
        load_split_backbone("ViT-B-16:openai")


def test_semnb_tiny_names_the_tiny_clip_only_so_retrieval_refuses_it_and_lists_its_names():
    with pytest.raises(SemnbInputError, match="--backbone semnb-tiny") as error:
        load_split_backbone("semnb-tiny")
    assert all(name in str(error.value) for name in BACKBONES)
    assert BACKBONES == ("efficientnet-lite0", "semnb-tiny-cnn")
    assert "semnb-tiny-cnn" in load_split_backbone(TINY_CNN).weights


def test_augment_without_shift_or_zoom_is_identity_or_a_mirror():
    gray = torch.rand(6, 1, 16, 16)
    out = augment(gray, torch.Generator().manual_seed(0), max_shift=0.0, scale_range=(1.0, 1.0))
    for original, moved in zip(gray, out):
        same, mirrored = torch.allclose(moved, original, atol=1e-5), torch.allclose(moved, original.flip(-1), atol=1e-5)
        assert same or mirrored
    again = augment(gray, torch.Generator().manual_seed(0))
    assert torch.equal(again, augment(gray, torch.Generator().manual_seed(0)))


def test_phase_schedule_warms_up_then_alternates():
    assert phase_schedule("ours", 7, 3) == ["classifier"] * 3 + ["triplet", "autoencoder", "triplet", "autoencoder"]
    assert phase_schedule("siamese", 2, 1) == ["triplet", "triplet"]
    assert phase_schedule("autoencoder", 2, 1) == ["autoencoder"] * 2
    assert phase_schedule("classifier", 2, 1) == ["classifier"] * 2
    assert phase_schedule("frozen", 5, 1) == []
    with pytest.raises(SemnbInputError):
        phase_schedule("pca", 2, 1)


def test_general_recipe_trains_both_losses_every_epoch_and_paper_keeps_the_warm_up():
    assert phase_schedule("ours", 3, 0, "general") == ["joint"] * 3
    assert phase_schedule("ours", 3, 1, "general") == ["classifier", "joint", "joint"]
    assert phase_schedule("siamese", 2, 0, "general") == ["triplet", "triplet"]  # baselines: one recipe
    assert RetrievalConfig(epochs=9).warmup_epochs() == 0
    assert RetrievalConfig(epochs=9, recipe="paper").warmup_epochs() == 3
    with pytest.raises(SemnbInputError, match="recipe"):
        RetrievalConfig(recipe="alternating")


def test_embedding_with_pooled_features_is_the_projection_then_the_scaled_standardised_pool():
    backbone = load_split_backbone(TINY_CNN)
    net = EmbeddingNet(backbone, 64, 16, pooled_weight=0.5)
    conv_map = torch.randn(3, 64, 2, 2)
    out = net.embed_map(conv_map)
    assert out.shape == (3, 16 + 64) and net.dims == 80
    projected = net.project(conv_map)
    assert torch.equal(out[:, :16], projected)
    pooled = conv_map.mean(dim=(2, 3))
    pooled = (pooled - pooled.mean(1, keepdim=True)) / pooled.std(1, unbiased=False, keepdim=True)
    assert torch.allclose(out[:, 16:], 0.5 * math.sqrt(16 / 64) * pooled, atol=1e-4)
    # the pooled half is pooled_weight times as long as the projection (which has length sqrt(16))
    assert torch.allclose(out[:, 16:].norm(dim=1), 0.5 * projected.norm(dim=1), atol=1e-3)
    assert EmbeddingNet(backbone, 64, 16).embed_map(conv_map).shape == (3, 16)


def test_only_the_general_recipe_embedding_gets_a_query_gate_on_its_projection_half():
    backbone = load_split_backbone(TINY_CNN)
    labelled = np.random.default_rng(0).normal(size=(6, 80)).astype(np.float32)
    general = TrainedEmbedding("ours", EmbeddingNet(backbone, 64, 16, pooled_weight=1.0), 32)
    gate = query_gate(general, labelled, RetrievalConfig(gate_quantile=0.5, gate_scales=(0.25, 3.0)))
    assert gate.dims == 16 and (gate.known_scale, gate.novel_scale) == (0.25, 3.0)
    assert gate.reference.shape == (6, 16)
    assert query_gate(general, labelled, RetrievalConfig(gate_quantile=None)) is None
    projection_only = TrainedEmbedding("ours", EmbeddingNet(backbone, 64, 16), 32)  # recipe paper, siamese, classifier
    assert query_gate(projection_only, labelled[:, :16], RetrievalConfig()) is None


def test_library_semihard_miner_keeps_exactly_the_semihard_triplets():
    """pytorch-metric-learning's miner (recipe "general"): all triplets with d(a,p) < d(a,n) < d(a,p) + R."""
    rng = np.random.default_rng(5)
    emb = torch.from_numpy(rng.normal(size=(20, 6)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 3, 20))
    miner = TripletMarginMiner(margin=0.3, type_of_triplets="semihard", distance=LpDistance(normalize_embeddings=True))
    mined = set(zip(*(t.tolist() for t in miner(emb, labels))))
    d = embedding_distances(emb).numpy()
    lab = labels.numpy()
    expected = {(a, p, n) for a in range(20) for p in range(20) for n in range(20)
                if a != p and lab[a] == lab[p] and lab[n] != lab[a] and d[a, p] < d[a, n] < d[a, p] + 0.3}
    assert mined == expected and expected


# ------------------------------------------------------------------ training


def _toy_images(n_per_class=6, seed=0):
    """Three labelled stripe classes and unlabelled blobs, 32 px."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    patterns = [np.sin(12 * yy), np.sin(12 * xx), np.sin(9 * (xx + yy)), np.exp(-((xx - .5) ** 2 + (yy - .5) ** 2) * 20)]
    images, labels = [], []
    for cls, pattern in enumerate(patterns):
        for _ in range(n_per_class):
            img = 0.5 + 0.3 * np.roll(pattern, rng.integers(0, SIZE), axis=1) + rng.normal(0, 0.05, (SIZE, SIZE))
            images.append(np.clip(img, 0, 1).astype(np.float32))
            labels.append(cls if cls < 3 else -1)
    return np.stack(images), np.array(labels)


def _train(method, seed, images, labels):
    backbone = load_split_backbone(TINY_CNN)
    bank = build_view_bank(backbone, images, SIZE, TINY_CONFIG.views, seed, TINY_CONFIG)
    return train_embedding(method, backbone, bank, labels, TINY_CONFIG, seed), bank


def test_training_is_deterministic_and_keeps_the_frozen_layers():
    images, labels = _toy_images()
    first, bank = _train("ours", 0, images, labels)
    second, _ = _train("ours", 0, images, labels)
    other, _ = _train("ours", 1, images, labels)
    a, b, c = (t.encode_frozen(bank.clean) for t in (first, second, other))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert [h["phase"] for h in first.history] == ["joint", "joint"]
    assert all(math.isfinite(h["loss"]) for h in first.history)
    backbone = load_split_backbone(TINY_CNN)
    paper = train_embedding("ours", backbone, bank, labels, replace(TINY_CONFIG, recipe="paper"), 0)
    assert [h["phase"] for h in paper.history] == ["classifier", "triplet"]
    assert first.net.dims == TINY_CONFIG.dims + 64 and paper.net.dims == TINY_CONFIG.dims

    untouched = load_split_backbone(TINY_CNN)
    for trained_p, fresh_p in zip(first.backbone.frozen.parameters(), untouched.frozen.parameters()):
        assert torch.equal(trained_p, fresh_p)
    assert any(not torch.equal(t, f) for t, f in zip(first.backbone.tuned.parameters(), untouched.tuned.parameters()))


def test_general_rebuilds_the_drawn_half_at_recon_size_and_adds_the_classifier_loss(monkeypatch):
    """Recipe general: the decoder rebuilds only the images drawn from all, at `recon_size` (the view
    area-averaged down to it); cross-entropy on the projection joins only when `classify_weight` > 0."""
    import torch.nn.functional as F

    images, labels = _toy_images()
    backbone = load_split_backbone(TINY_CNN)
    bank = build_view_bank(backbone, images, SIZE, 1, 0, TINY_CONFIG)
    real_mse, real_ce = F.mse_loss, F.cross_entropy
    seen = {"mse": [], "ce": 0}

    def mse(rebuilt, target):
        seen["mse"].append((tuple(rebuilt.shape), tuple(target.shape), target))
        return real_mse(rebuilt, target)

    def ce(*args, **kwargs):
        seen["ce"] += 1
        return real_ce(*args, **kwargs)

    monkeypatch.setattr(F, "mse_loss", mse)
    monkeypatch.setattr(F, "cross_entropy", ce)
    config = replace(TINY_CONFIG, epochs=1, recon_size=SIZE // 2, classify_weight=0.0)
    plain = train_embedding("ours", load_split_backbone(TINY_CNN), bank, labels, config, 0)
    half = (TINY_CONFIG.batch_size, 1, SIZE // 2, SIZE // 2)
    assert seen["mse"] and all(r == t == half for r, t, _ in seen["mse"]) and seen["ce"] == 0
    # the target is a view averaged over 2 x 2 pixels: its values are means of four uint8 levels / 255
    target = seen["mse"][0][2]
    assert torch.allclose(target * 255 * 4, (target * 255 * 4).round(), atol=1e-3)
    assert target.min() >= 0 and target.max() <= 1

    seen["mse"].clear()
    classified = train_embedding("ours", load_split_backbone(TINY_CNN), bank, labels,
                                 replace(config, classify_weight=1.0), 0)
    assert seen["ce"] == len(seen["mse"]) > 0  # one cross-entropy per joint step
    assert not np.allclose(plain.encode_frozen(bank.clean), classified.encode_frozen(bank.clean))
    seen["mse"].clear()
    train_embedding("autoencoder", load_split_backbone(TINY_CNN), bank, labels, config, 0)  # baselines: full size
    assert all(r[-1] == SIZE for r, _, _ in seen["mse"])


def test_encoding_a_new_image_matches_the_stored_embedding():
    images, labels = _toy_images()
    trained, bank = _train("siamese", 0, images, labels)
    stored = trained.encode_frozen(bank.clean)
    fresh = trained.encode(images[[4, 9]])  # e.g. a query from outside: goes through every layer
    assert np.allclose(fresh, stored[[4, 9]], atol=1e-5)
    assert fresh.shape == (2, TINY_CONFIG.dims)


def test_label_methods_refuse_data_without_two_labelled_classes():
    images, labels = _toy_images()
    only_one = np.where(labels == 0, 0, -1)
    with pytest.raises(SemnbInputError, match="labelled"):
        _train("siamese", 0, images, only_one)
    assert _train("autoencoder", 0, images, only_one)[0].history  # the autoencoder needs no labels


def test_training_and_embedding_place_every_tensor_on_the_device_asked_for(implicit_device_is_meta):
    images, labels = _toy_images()
    config = replace(TINY_CONFIG, epochs=3, classifier_epochs=1, recipe="paper")  # classifier, triplet, autoencoder
    with implicit_device_is_meta():  # a tensor made without an explicit device would be meta and fail
        backbone = load_split_backbone(TINY_CNN, device="cpu", precision="fp32")
        bank = build_view_bank(backbone, images, SIZE, config.views, 0, config)
        trained = train_embedding("ours", backbone, bank, labels, config, 0)
        stored = trained.encode_frozen(bank.clean)
        fresh = trained.encode(images[:2])
        joint = train_embedding("ours", load_split_backbone(TINY_CNN, device="cpu", precision="fp32"), bank, labels,
                                replace(config, recipe="general", classifier_epochs=0, epochs=1), 0)
        joint.encode(images[:2])
    assert [h["phase"] for h in joint.history] == ["joint"]
    assert [h["phase"] for h in trained.history] == ["classifier", "triplet", "autoencoder"]
    assert trained.compute.device.type == "cpu" and trained.compute.precision == "fp32"
    assert all(p.device.type == "cpu" for p in trained.net.parameters())
    assert all(t.device.type == "cpu" for t in (bank.clean, bank.views, bank.targets))
    assert isinstance(stored, np.ndarray) and stored.dtype == np.float32 and isinstance(fresh, np.ndarray)
    plain = load_split_backbone(TINY_CNN, device="cpu", precision="fp32")
    again = train_embedding("ours", plain, build_view_bank(plain, images, SIZE, config.views, 0, config), labels, config, 0)
    assert np.array_equal(stored, again.encode_frozen(bank.clean))  # the context changes nothing on the CPU


def test_bf16_training_runs_on_a_cpu_without_bf16_arithmetic():
    images, labels = _toy_images()
    config = replace(TINY_CONFIG, epochs=3, classifier_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowPrecisionWarning)  # said where the CPU lacks AMX / AVX512-BF16
        backbone = load_split_backbone(TINY_CNN, device="cpu", precision="bf16")
    bank = build_view_bank(backbone, images, SIZE, config.views, 0, config)
    trained = train_embedding("ours", backbone, bank, labels, config, 0)
    embeddings = trained.encode_frozen(bank.clean)
    assert trained.compute.precision == "bf16" and all(math.isfinite(h["loss"]) for h in trained.history)
    assert embeddings.dtype == np.float32 and np.isfinite(embeddings).all()
    # standardised in float32: the projection, then the pooled part (pooled_weight times as long)
    assert np.allclose(embeddings[:, :config.dims].std(axis=1), 1.0, atol=1e-3)
    pooled = embeddings[:, config.dims:]
    assert np.allclose(np.linalg.norm(pooled, axis=1), config.pooled_weight * math.sqrt(config.dims), atol=1e-2)


# ------------------------------------------------------------------ evaluation protocol


def test_split_keeps_queries_out_of_training_and_unlabelled_in_both():
    labels = np.array([0] * 10 + [1] * 6 + [-1] * 5 + [2] * 1)
    split = split_collection(labels, 0.5, seed=0, shots=2)
    assert not set(split.train) & set(split.queries)
    assert set(split.queries) <= set(split.gallery)
    unlabelled = set(np.flatnonzero(labels == -1))
    assert unlabelled <= set(split.train) and unlabelled <= set(split.gallery)
    assert 21 not in split.queries and 21 not in split.train  # a single-image class cannot be split
    for cls in (0, 1):
        assert np.sum(split.train_labels == cls) == 2  # shots
        assert np.all(labels[split.train][split.train_labels == cls] == cls)
    assert np.array_equal(split_collection(labels, 0.5, seed=0).queries, split_collection(labels, 0.5, seed=0).queries)
    hidden = withhold_class(split, 1)
    assert 1 not in hidden.train_labels and np.array_equal(hidden.train, split.train)


def test_scale_std_is_averaged_over_queries_with_two_correct_results():
    retrieved = np.array([[1, 1, 2, 1], [2, 0, 0, 2]])
    mags = np.array([[1e4, 1e5, 1e6, 1e6], [1e4, 1e4, 1e5, 1e6]])
    scores = retrieval_scores(retrieved, mags, np.array([1, 2]), k=4)
    # query 0: correct at 1e4, 1e5, 1e6 -> std of (4, 5, 6) = 1; query 1: 1e4 and 1e6 -> std of (4, 6) = sqrt(2)
    assert scores["scale_std"] == pytest.approx((1 + math.sqrt(2)) / 2)
    assert scores["precision_at_k"] == pytest.approx((3 / 4 + 2 / 4) / 2)


@pytest.fixture(scope="module")
def tem_folder(tmp_path_factory):
    return write_tem_dataset(tmp_path_factory.mktemp("tem"), n_per_class=4, size=SIZE, seed=0)


def test_leave_one_class_out_withholds_the_class_labels(tem_folder, monkeypatch):
    calls = []
    real = retrieval_eval.train_embedding

    def spy(method, backbone, bank, labels, config, seed=0, progress=False):
        calls.append((method, np.array(labels)))
        return real(method, backbone, bank, labels, config, seed, progress)

    monkeypatch.setattr(retrieval_eval, "train_embedding", spy)
    images = load_dataset(tem_folder)
    config = RetrievalConfig(image_size=SIZE, epochs=2, views=1, dims=8, batch_size=8, per_class=2)
    result = evaluate_retrieval(images, TINY_CNN, methods=("ours", "frozen"), k=3, seeds=(0,), config=config, loco=True)

    n_classes = len(images.class_names)
    ours = [labels for method, labels in calls if method == "ours"]
    assert len(ours) == 1 + n_classes  # the main run, then one run per held-out class
    main_labels = ours[0]
    for cls, labels in zip(range(n_classes), ours[1:]):
        assert cls not in labels  # its labels are hidden ...
        assert len(labels) == len(main_labels)  # ... but its images still train (unlabelled)
        assert set(np.unique(labels[labels >= 0])) == set(range(n_classes)) - {cls}
    assert sum(method == "frozen" for method, _ in calls) == 1  # label-free: not retrained
    assert list(result.extra["loco"]["ours"]) == [*images.class_names, "mean"]


def test_evaluate_retrieval_contract(tem_folder, tmp_path):
    images = load_dataset(tem_folder)
    config = RetrievalConfig(image_size=SIZE, epochs=2, views=1, dims=8, batch_size=8, per_class=2)
    result = evaluate_retrieval(images, TINY_CNN, k=3, seeds=(0, 1), config=config)
    assert list(result.results) == list(METHODS)
    for values in result.results.values():
        for metric in ("precision_at_k", "map_at_k"):
            assert 0 <= values[metric] <= 1 and f"{metric}_std" in values
        assert values["scale_std"] >= 0 or math.isnan(values["scale_std"])
    assert result.task == "retrieve" and "NOT ImageNet" in result.weights and result.seeds == [0, 1]
    path = result.write(tmp_path / "r.json")

    def no_nan(token):
        raise AssertionError(f"non-JSON number {token}")

    data = json.loads(path.read_text(), parse_constant=no_nan)
    assert data["k"] == 3 and set(data["results"]) == set(METHODS)
    assert set(LABEL_METHODS) <= set(data["history"])


def test_evaluate_retrieval_runs_on_the_device_asked_for_and_records_it(tem_folder, implicit_device_is_meta):
    images = load_dataset(tem_folder)
    config = RetrievalConfig(image_size=SIZE, epochs=3, classifier_epochs=1, views=1, dims=8, batch_size=8, per_class=2)
    with implicit_device_is_meta():
        result = evaluate_retrieval(images, TINY_CNN, methods=("ours", "frozen"), k=3, seeds=(0,), config=config,
                                    loco=True, device="cpu", precision="fp32")
    assert result.precision == "fp32" and result.extra["device"] == "cpu" and result.extra["index_device"] == "cpu"
    assert set(result.extra["loco"]) == {"ours", "frozen"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowPrecisionWarning)
        bf16 = evaluate_retrieval(images, TINY_CNN, methods=("ours",), k=3, seeds=(0,), config=config,
                                  device="cpu", precision="bf16")
    assert bf16.precision == "bf16" and 0 <= bf16.results["ours"]["precision_at_k"] <= 1


def test_cli_retrieve_writes_json_and_rejects_a_bad_k(tem_folder, tmp_path):
    runner = CliRunner()
    common = ["eval", "retrieve", "--data", str(tem_folder), "--backbone", "semnb-tiny-cnn", "--seeds", "0",
              "--epochs", "1", "--image-size", str(SIZE)]
    ok = runner.invoke(main, [*common, "--k", "3", "--recipe", "paper", "--json", str(tmp_path / "out.json")])
    assert ok.exit_code == 0, ok.output
    written = json.loads((tmp_path / "out.json").read_text())
    assert "ours" in ok.output and written["task"] == "retrieve"
    assert written["settings"]["recipe"] == "paper"
    bad = runner.invoke(main, [*common, "--k", "500"])
    assert bad.exit_code == 2
    assert "--k" in bad.output and "Fix" in bad.output
