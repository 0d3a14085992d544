"""The multi-resolution SimSiam: pyramid, shared encoder, loss with stop-gradient, training, embedding."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semnb.clustering.ssl import (
    LEVEL_PAIRS,
    SSLConfig,
    build_pyramid,
    create_model,
    cross_scale_loss,
    embed,
    embed_pyramid,
    embedding_std,
    negative_cosine,
    prepare_images,
    train_ssl,
)
from semnb.data import preprocess, resize
from semnb.errors import SemnbInputError
from semnb.hardware import Compute, SlowPrecisionWarning
from tests.clustering.ssl_images import stripes_and_dots

# ---------------------------------------------------------------- loss


def test_negative_cosine_equals_an_independent_computation():
    rng = np.random.default_rng(1)
    p, z = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    expected = -np.mean(np.sum(p * z, 1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(z, axis=1)))
    got = negative_cosine(torch.tensor(p), torch.tensor(z))
    assert float(got) == pytest.approx(expected, abs=1e-12)


def test_cross_scale_loss_is_the_symmetrised_mean_over_all_three_level_pairs():
    rng = np.random.default_rng(2)
    z = [rng.normal(size=(4, 6)) for _ in range(3)]
    p = [rng.normal(size=(4, 6)) for _ in range(3)]

    def d(a, b):
        return -np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))

    expected = np.mean([(d(p[0], z[1]) + d(p[1], z[0])) / 2, (d(p[0], z[2]) + d(p[2], z[0])) / 2,
                        (d(p[1], z[2]) + d(p[2], z[1])) / 2])
    assert LEVEL_PAIRS == ((0, 1), (0, 2), (1, 2))
    got = cross_scale_loss([torch.tensor(t) for t in z], [torch.tensor(t) for t in p])
    assert float(got) == pytest.approx(expected, abs=1e-12)
    same = cross_scale_loss([torch.tensor(z[0])] * 3, [torch.tensor(z[0])] * 3)
    assert float(same) == pytest.approx(-1.0)


def test_stop_gradient_blocks_every_gradient_through_the_target_side():
    model = create_model(SSLConfig(seed=0, channels_last=False))
    x = torch.from_numpy(stripes_and_dots(4))[:, None]
    levels = [level.detach().requires_grad_(True) for level in build_pyramid(x)]
    z, p, _ = model(levels)
    negative_cosine(p[0], z[1]).backward()  # level 0 predicts, level 1 is the target
    assert levels[0].grad is not None and levels[0].grad.abs().sum() > 0
    assert levels[1].grad is None or levels[1].grad.abs().sum() == 0
    # Without the stop-gradient the target side would receive gradient: the test can fail.
    levels = [level.detach().requires_grad_(True) for level in build_pyramid(x)]
    z, p, _ = model(levels)
    (-F.cosine_similarity(p[0], z[1], dim=1).mean()).backward()
    assert levels[1].grad.abs().sum() > 0


# ---------------------------------------------------------------- pyramid and encoder


def test_pyramid_halves_twice_by_area_averaging():
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    levels = build_pyramid(x)
    assert [tuple(level.shape) for level in levels] == [(2, 1, 64, 64), (2, 1, 32, 32), (2, 1, 16, 16)]
    assert torch.equal(levels[0], x)
    blocks = x.numpy()[:, 0]
    for level, factor in ((1, 2), (2, 4)):
        block_mean = blocks.reshape(2, 64 // factor, factor, 64 // factor, factor).mean(axis=(2, 4))
        np.testing.assert_allclose(levels[level].numpy()[:, 0], block_mean, atol=1e-6)
        pil_box = resize(blocks[0], 64 // factor, method="area")  # semnb.data's "area" = Pillow's BOX filter
        np.testing.assert_allclose(levels[level].numpy()[0, 0], pil_box, atol=1e-5)


def test_pyramid_rejects_sizes_that_do_not_halve_cleanly():
    with pytest.raises(SemnbInputError, match="--image-size"):
        build_pyramid(torch.zeros(1, 1, 30, 30))
    with pytest.raises(SemnbInputError, match="pixels"):
        build_pyramid(torch.zeros(1, 3, 32, 32))


def test_encoder_follows_the_paper_and_one_set_of_weights_reads_every_level():
    model = create_model(SSLConfig(seed=0, channels_last=False))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(32, 1, 3, 3), (64, 32, 3, 3), (128, 64, 3, 3)]
    assert all(c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    assert model.encoder.linear.out_features == 128
    assert [m.out_features for m in model.projector if isinstance(m, torch.nn.Linear)] == [128, 128]
    model.eval()
    levels = build_pyramid(torch.from_numpy(stripes_and_dots(3))[:, None])
    with torch.no_grad():
        _, _, h0 = model(levels)
        per_level = embed_pyramid(model, stripes_and_dots(3))
    np.testing.assert_allclose(per_level[0], h0.numpy(), atol=1e-6)
    # A loss on the coarsest level alone changes the same conv weights that read L0.
    model.train()
    z, p, _ = model(levels)
    negative_cosine(p[2], z[0]).backward()
    assert convs[0].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- training and embedding


def test_training_is_deterministic_for_a_seed_and_differs_between_seeds():
    images = stripes_and_dots(10)
    runs = [train_ssl(images, SSLConfig(epochs=2, batch_size=4, seed=s, threads=1), progress=False) for s in (3, 3, 4)]
    assert runs[0].history.loss == runs[1].history.loss
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b)
    assert runs[0].history.loss != runs[2].history.loss
    np.testing.assert_array_equal(embed(runs[0].model, images), embed(runs[1].model, images))


def test_training_lowers_the_loss_and_watches_for_collapse_without_touching_global_state():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    threads = torch.get_num_threads()
    run = train_ssl(stripes_and_dots(16), SSLConfig(epochs=4, batch_size=8, seed=0, threads=1), progress=False)
    assert torch.equal(torch.get_rng_state(), before) and torch.get_num_threads() == threads
    history = run.history
    assert len(history.loss) == len(history.std_projection) == len(history.std_embedding) == 4
    assert history.loss[-1] < history.loss[0]
    assert all(-1 <= v <= 1 for v in history.loss)
    assert all(0 < v < 1 for v in history.std_projection + history.std_embedding)
    assert history.images_seen == 4 * 16 and history.images_per_second > 0


def test_collapse_watch_is_zero_for_a_constant_output_and_one_over_sqrt_d_when_spread():
    assert embedding_std(torch.ones(50, 128)) == pytest.approx(0.0, abs=1e-7)
    spread = np.random.default_rng(0).normal(size=(20000, 128))
    assert embedding_std(spread) == pytest.approx(1 / np.sqrt(128), rel=0.02)


def test_embedding_is_the_l0_encoder_output_without_the_projection_head():
    images = stripes_and_dots(5)
    model = create_model(SSLConfig(seed=1))
    features = embed(model, images, batch_size=2)
    with torch.no_grad():
        expected = model.eval().encoder(torch.from_numpy(images)[:, None]).numpy()
    assert features.shape == (5, 128)
    np.testing.assert_allclose(features, expected, atol=1e-5)


def test_training_and_embedding_place_every_tensor_on_the_device_asked_for(implicit_device_is_meta):
    images = stripes_and_dots(6)
    config = SSLConfig(epochs=1, batch_size=3, seed=0, threads=1, augment_levels=True, device="cpu", precision="fp32")
    with implicit_device_is_meta():  # a tensor made without an explicit device would be meta and fail
        run = train_ssl(images, config, progress=False)
        features = embed(run.model, images, device="cpu", precision="fp32")
        per_level = embed_pyramid(run.model, images, device="cpu", precision="fp32")
    assert run.compute == Compute(torch.device("cpu"), "fp32")
    assert all(p.device.type == "cpu" for p in run.model.parameters())
    assert isinstance(features, np.ndarray) and features.shape == (6, 128) and features.dtype == np.float32
    assert all(isinstance(level, np.ndarray) for level in per_level)
    plain = train_ssl(images, config, progress=False)
    assert plain.history.loss == run.history.loss  # the context changes nothing on the CPU
    np.testing.assert_array_equal(features, embed(plain.model, images, device="cpu", precision="fp32"))


def test_training_and_embedding_in_bf16_run_on_any_cpu():
    images = stripes_and_dots(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowPrecisionWarning)  # said where the CPU lacks AMX / AVX512-BF16
        run = train_ssl(images, SSLConfig(epochs=1, batch_size=3, threads=1, device="cpu", precision="bf16"))
        features = embed(run.model, images, device="cpu", precision="bf16")
    assert run.compute.precision == "bf16" and all(np.isfinite(run.history.loss))
    assert features.dtype == np.float32 and np.isfinite(features).all()
    assert SSLConfig().precision == SSLConfig().device == "auto"


def test_prepare_images_is_semnb_preprocess_at_the_chosen_size():
    rng = np.random.default_rng(0)
    raw = [rng.random((40, 50)).astype(np.float32), rng.random((64, 64)).astype(np.float32)]
    out = prepare_images(raw, size=32, border=2)
    assert out.shape == (2, 32, 32) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], preprocess(raw[0], size=32, border=2))
    assert out.min() >= 0 and out.max() <= 1
    as_uint8 = (raw[1] * 255).round().astype(np.uint8)
    np.testing.assert_allclose(prepare_images([as_uint8], size=32)[0],
                               prepare_images([as_uint8.astype(np.float32) / 255], size=32)[0], atol=1e-6)


def test_bad_input_names_the_option_and_the_fix():
    with pytest.raises(SemnbInputError, match="--epochs"):
        SSLConfig(epochs=0)
    with pytest.raises(SemnbInputError, match="precision.*fp32"):
        SSLConfig(precision="fp8")
    with pytest.raises(SemnbInputError, match="--device"):
        train_ssl(stripes_and_dots(2), SSLConfig(epochs=1, device="tpu"), progress=False)
    with pytest.raises(SemnbInputError, match="at least 2"):
        train_ssl(stripes_and_dots(1), SSLConfig(epochs=1), progress=False)
    with pytest.raises(SemnbInputError, match="square"):
        embed(create_model(SSLConfig()), np.zeros((2, 32, 40), np.float32))
    with pytest.raises(SemnbInputError, match="--image-size"):
        prepare_images([np.zeros((10, 10))], size=50)
