"""The fast-training recipe's pieces, each against a hand-written reference, and the recipe end
to end on digits."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import train
from cnnjax.data import alternating_flips, apply_augment
from cnnjax.train import groups, optim
from experiments.configs import airbench, allcnn


@pytest.fixture(scope="module", autouse=True)
def standard_promotion():
    with jax.numpy_dtype_promotion("standard"):  # optax internals; see test_train.py
        yield


def _params():
    rng = np.random.default_rng(0)
    return {
        "whiten": {"kernel": rng.standard_normal((2, 2, 3, 24)), "bias": rng.standard_normal(24)},
        "block1_conv1": {"kernel": rng.standard_normal((3, 3, 24, 8))},
        "block1_bn1": {"bias": rng.standard_normal(8)},
        "head": {"kernel": rng.standard_normal((8, 10))},
    }


def _airbench_config(**overrides):
    c = airbench.get_config()
    c.update(overrides)
    return c


def test_decoupled_hyperparameters_match_airbench():
    lr, decay = optim.decoupled_hyperparameters(11.5, 0.0153, 0.85, 1024)
    kilo = 1024 * (1 + 1 / 0.15)
    assert lr == pytest.approx(11.5 / kilo * 1024) and lr == pytest.approx(1.5, rel=1e-3)
    assert decay == pytest.approx(0.0153 / 11.5)


def test_sgd_groups_take_the_steps_of_airbenchs_pytorch_optimizer():
    # Reference: torch.optim.SGD(nesterov, momentum m) on a SUMMED loss over the batch, with
    # per-group lr = lr/kilo · factor and weight_decay = (wd · batch/kilo) / lr_group, written
    # out by hand. cnnjax sees the MEAN loss (the summed gradient / batch).
    batch, m, lr, wd = 1024, 0.85, 11.5, 0.0153
    config = _airbench_config(
        lr_multipliers="*_bn*/bias=64", frozen="whiten/kernel", train_epochs="whiten/bias=3"
    )
    config.schedule = "constant"
    config.warmup_epochs = 0.0
    steps_per_epoch = 2
    tx, _ = optim.make_optimizer(config, steps_per_epoch, total=20)
    params = jax.tree.map(jnp.asarray, _params())
    state = tx.init(params)
    kilo = 1024 * (1 + 1 / (1 - m))
    ref = jax.tree.map(np.asarray, _params())
    bufs = jax.tree.map(np.zeros_like, ref)
    paths = groups.param_paths(ref)
    rng = np.random.default_rng(1)
    for step in range(8):
        mean_grads = jax.tree.map(lambda p: rng.standard_normal(p.shape), ref)
        updates, state = tx.update(jax.tree.map(jnp.asarray, mean_grads), state, params)
        params = optax.apply_updates(params, updates)

        def torch_step(path, p, g, buf, step=step):
            if path == "whiten/kernel" or (path == "whiten/bias" and step >= 3 * steps_per_epoch):
                return p, buf
            lr_g = lr / kilo * (64.0 if path == "block1_bn1/bias" else 1.0)
            d_p = g * batch + (wd * batch / kilo / lr_g) * p  # summed gradient + decay
            buf = m * buf + d_p
            return p - lr_g * (d_p + m * buf), buf

        out = jax.tree.map(torch_step, paths, ref, mean_grads, bufs)
        ref = jax.tree.map(lambda o: o[0], out, is_leaf=lambda x: isinstance(x, tuple))
        bufs = jax.tree.map(lambda o: o[1], out, is_leaf=lambda x: isinstance(x, tuple))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    # Frozen never moved; the whitening bias stopped after 3 epochs (6 steps).
    initial = np.asarray(_params()["whiten"]["kernel"], np.float32)
    np.testing.assert_array_equal(params["whiten"]["kernel"], initial)


def test_group_patterns_that_match_nothing_are_refused():
    params = _params()
    optim.check_groups(_airbench_config(lr_multipliers="*_bn*/bias=64"), params)
    with pytest.raises(train.ConfigError, match=r"`config.frozen`: the pattern 'whitten/\*'"):
        optim.check_groups(_airbench_config(frozen="whitten/*"), params)
    with pytest.raises(train.ConfigError, match="form pattern=number"):
        optim.check_groups(_airbench_config(lr_multipliers="*bias"), params)
    with pytest.raises(train.ConfigError, match="Muon orthogonalises matrices and convolution"):
        optim.check_groups(_airbench_config(optimizer="muon", muon_params="*bias"), params)


def test_linear_schedule_warms_up_then_decays():
    c = _airbench_config(num_epochs=10.0, warmup_epochs=2.0)
    s = optim.make_schedule(c, steps_per_epoch=10)
    lr = c.learning_rate
    assert float(s(0)) == pytest.approx(0.2 * lr)
    assert float(s(10)) == pytest.approx(0.6 * lr)
    assert float(s(20)) == pytest.approx(lr)
    assert float(s(60)) == pytest.approx(lr * (1 - 0.93 * 40 / 80))
    assert float(s(100)) == pytest.approx(0.07 * lr)


def test_lookahead_matches_airbench():
    total, every, base = 23, 5, 0.95
    rng = np.random.default_rng(2)
    w0 = rng.standard_normal(4)
    state = train.TrainState(
        step=jnp.zeros((), jnp.int32),
        params={"w": jnp.asarray(w0)},
        batch_stats={},
        opt_state=(),
        averages={"slow": {"params": {"w": jnp.asarray(w0)}, "batch_stats": {}}},
    )
    fast, slow = w0.copy(), w0.copy()
    for step in range(1, total + 1):
        delta = rng.standard_normal(4)
        state = state.replace(step=state.step + 1, params={"w": state.params["w"] + delta})
        state = train.lookahead(state, every, base, total)
        fast = fast + delta  # airbench: after the optimiser step, every 5 steps and the last
        if step % every == 0 or step >= total:
            decay = 1.0 if step >= total else base**every * (step / total) ** 3
            slow = slow + (1 - decay) * (fast - slow)
            fast = slow.copy()
        np.testing.assert_allclose(state.params["w"], fast, rtol=1e-6)
        np.testing.assert_allclose(state.averages["slow"]["params"]["w"], slow, rtol=1e-6)


def test_ema_and_evaluation_use_the_average():
    state = train.TrainState(
        step=jnp.zeros((), jnp.int32),
        params={"w": jnp.ones(3)},
        batch_stats={},
        opt_state=(),
        averages={"ema": {"params": {"w": jnp.zeros(3)}, "batch_stats": {}}},
    )
    state = train.ema_update(state, 0.9)
    np.testing.assert_allclose(state.averages["ema"]["params"]["w"], 0.1)


def test_alternating_flips_show_each_image_both_ways_every_two_epochs():
    key, n, spe = jax.random.key(3), 40, 4
    idx = jnp.arange(n)
    epoch0 = alternating_flips(key, 0, idx, n, spe)
    epoch1 = alternating_flips(key, spe, idx, n, spe)
    epoch2 = alternating_flips(key, 2 * spe + 3, idx, n, spe)
    np.testing.assert_array_equal(epoch1, ~epoch0)
    np.testing.assert_array_equal(epoch2, epoch0)
    assert 5 < int(epoch0.sum()) < 35  # each image's own coin, drawn once


def test_reflect_crops_translate_over_the_mirror_image():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 6, 7, 2)).astype(np.float32)
    offsets = rng.integers(0, 5, (5, 2))
    flips = np.array([False, True, False, True, False])
    got = np.asarray(apply_augment(x, offsets, flips, 2, mode="reflect"))
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    for i in range(5):
        want = padded[i, offsets[i, 0] : offsets[i, 0] + 6, offsets[i, 1] : offsets[i, 1] + 7]
        np.testing.assert_array_equal(got[i], want[:, ::-1] if flips[i] else want)


def test_tta_weights_six_views_like_airbench():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 5, 5, 1)).astype(np.float32)
    w = rng.standard_normal(25).astype(np.float32)
    apply = lambda v: (v.reshape(len(v), -1) @ w)[:, None]  # any function of the whole image
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    views = [x, padded[:, :5, :5], padded[:, 2:7, 2:7]]
    weights = [0.25, 0.125, 0.125]  # original and mirror at 1/4, each shifted view at 1/8
    want = sum(wt * (apply(v) + apply(v[:, :, ::-1])) for wt, v in zip(weights, views, strict=True))
    np.testing.assert_allclose(train.tta_logits(apply, x, "mirror_translate"), want, rtol=1e-5)
    mirror = 0.5 * (apply(x) + apply(x[:, :, ::-1]))
    np.testing.assert_allclose(train.tta_logits(apply, x, "mirror"), mirror, rtol=1e-5)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("airbench_quick"))
    config = airbench.get_config("quick")
    config.progress = False
    return workdir, config, train.train_and_evaluate(config, workdir)


def test_airbench_recipe_trains_on_digits(quick_run):
    _, _, results = quick_run
    assert results["test_accuracy"] >= 0.85  # chance is 0.10
    assert {"data_seconds", "compile_seconds", "train_seconds"} <= set(results)


def test_whitening_layer_is_set_from_data_and_frozen(quick_run):
    workdir, config, _ = quick_run
    _, engine, state, data = train.load_run(workdir)
    kernel = np.asarray(state.params["whiten"]["kernel"], np.float64)
    assert kernel.shape == (2, 2, 1, 8)
    # The run's sample of its training images (fixed by its seed), normalised as the network
    # sees them, and their 2x2 patches' second moment, computed here patch by patch.
    train_split = data.splits["train"]
    pick = np.sort(np.random.default_rng(config.seed).permutation(len(train_split))[:500])
    norm = engine.fns.cfg.norm
    x = (train_split.images[pick] * norm.scale - norm.mean[0]) / norm.std[0]
    rows = [
        x[b, i : i + 2, j : j + 2, 0].reshape(-1)
        for b in range(len(x))
        for i in range(15)
        for j in range(15)
    ]
    cov = np.asarray(rows).T @ np.asarray(rows) / len(rows)
    lam = np.linalg.eigvalsh(cov)[::-1]
    v = kernel[..., :4].reshape(4, 4)
    # After training the kernel still whitens them: Vᵀ Σ V = diag(λ / (λ + eps)), i.e. frozen.
    np.testing.assert_allclose(v.T @ cov @ v, np.diag(lam / (lam + 5e-4)), atol=2e-4)
    np.testing.assert_array_equal(kernel[..., 4:], -kernel[..., :4])
    assert np.any(np.asarray(state.params["whiten"]["bias"]) != 0.0)  # the bias did train


def test_whitening_a_model_whose_first_conv_does_not_fit_is_refused(tmp_path):
    config = allcnn.get_config("quick")
    config.patch_whitening = True
    config.progress = False
    with pytest.raises(
        train.ConfigError,
        match=r"\(conv1/conv/kernel, kernel \(3, 3, 1, 24\)\) to 18 whitening filters .* must have 18 output channels",
    ):
        train.train_and_evaluate(config, str(tmp_path / "run"))


def test_muon_recipe_updates_kernels_by_orthogonalised_steps():
    config = airbench.get_config("quick")
    config.optimizer = "muon"
    config.lookahead_every = 0
    rng = np.random.default_rng(6)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 4, 8)), jnp.float32)
    params = {"block1_conv1": {"kernel": kernel}, "block1_bn1": {"bias": jnp.zeros(8)}}
    tx, _ = optim.make_optimizer(config, steps_per_epoch=10, total=100)
    state = tx.init(params)
    grads = {"block1_conv1": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 4, 8)), jnp.float32)},
             "block1_bn1": {"bias": jnp.ones(8)}}  # fmt: skip
    updates, _ = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)["block1_conv1"]["kernel"]
    # airbench's Muon: the kernel is first rescaled to Frobenius norm sqrt(out channels), then
    # moved by lr x an orthogonalised direction (3 Newton-Schulz steps: singular values
    # near, not at, 1), so the step's matrix (rows: taps x inputs, columns: outputs) is
    # well conditioned and its size set by the rate alone.
    normalised = kernel * np.sqrt(8) / np.linalg.norm(kernel)
    step = np.asarray(normalised - new).reshape(36, 8) / config.muon_lr
    singular = np.linalg.svd(step, compute_uv=False)
    assert 0.3 < singular.min() and singular.max() < 1.6
    assert float(jnp.abs(updates["block1_bn1"]["bias"]).max()) > 0  # the SGD group moved too
