"""The fast-training recipe's pieces, each against a hand-written reference, and the recipe end
to end on digits."""

import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax import train
from cnnjax.data import alternating_flips, apply_augment, load_dataset, normalize, preprocess
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


def _cross_entropy(logits, labels) -> float:
    """Mean softmax cross-entropy in float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(labels)), labels]))


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
    kilo = 1024 * (1 + 1 / (1 - m))
    ref = jax.tree.map(np.asarray, _params())
    bufs = jax.tree.map(np.zeros_like, ref)
    paths = groups.param_paths(ref)
    rng = np.random.default_rng(1)

    def torch_step(step, path, p, g, buf):
        if path == "whiten/kernel" or (path == "whiten/bias" and step >= 3 * steps_per_epoch):
            return p, buf
        lr_g = lr / kilo * (64.0 if path == "block1_bn1/bias" else 1.0)
        d_p = g * batch + (wd * batch / kilo / lr_g) * p  # summed gradient + decay
        buf = m * buf + d_p
        return p - lr_g * (d_p + m * buf), buf

    # In float64, where the two agree to float64 rounding: in float32 the comparison would need
    # a tolerance for eight steps of rounding, and could hide a small error in the rule.
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), _params())
        state = tx.init(params)
        for step in range(8):
            mean_grads = jax.tree.map(lambda p: rng.standard_normal(p.shape), ref)
            updates, state = tx.update(jax.tree.map(jnp.asarray, mean_grads), state, params)
            params = optax.apply_updates(params, updates)
            out = jax.tree.map(functools.partial(torch_step, step), paths, ref, mean_grads, bufs)
            ref = jax.tree.map(lambda o: o[0], out, is_leaf=lambda x: isinstance(x, tuple))
            bufs = jax.tree.map(lambda o: o[1], out, is_leaf=lambda x: isinstance(x, tuple))
        params = jax.device_get(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref), strict=True):
        assert a.dtype == np.float64
        # Eight steps of a few float64 operations on numbers up to ~100: 1e-12 of the largest
        # is thousands of roundings (2^-53 = 1.1e-16) away; a rule that differs is not.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.max(np.abs(b)))
    # Frozen never moved; the whitening bias stopped after 3 epochs (6 steps).
    np.testing.assert_array_equal(params["whiten"]["kernel"], _params()["whiten"]["kernel"])


@pytest.mark.parametrize("decay_on", ["kernels", "all"])
def test_gradient_clipping_and_weight_decay_mask_take_the_hand_written_step(decay_on):
    # Plain SGD (no momentum, constant rate), gradients clipped to global norm 1 and L2 decay
    # on the kernels only (the default) or on every parameter, against float64 by hand.
    config = allcnn.get_config("quick")
    config.update(
        dict(optimizer="sgd", momentum=0.0, learning_rate=0.1, weight_decay=0.01,
             schedule="constant", warmup_epochs=0.0, grad_clip_norm=1.0, weight_decay_on=decay_on)
    )  # fmt: skip
    tx, _ = optim.make_optimizer(config, steps_per_epoch=10)
    params = jax.tree.map(jnp.asarray, _params())
    rng = np.random.default_rng(7)
    grads = jax.tree.map(lambda p: rng.standard_normal(p.shape), _params())
    updates, _ = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(params), params)
    norm = np.sqrt(sum(np.sum(g**2) for g in jax.tree.leaves(grads)))
    assert norm > 1  # so the clip acts

    def by_hand(p, g):
        decay = 0.01 * p if (p.ndim > 1 or decay_on == "all") else 0.0
        return -0.1 * (g / norm + decay)

    want = jax.tree.map(by_hand, _params(), grads)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(want), strict=True):
        # float32 against float64 of a few operations on O(1) numbers: 1e-6 relative is
        # a few roundings (2^-24 = 6e-8 each) with a margin.
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_group_patterns_that_match_nothing_are_refused():
    params = _params()

    def check(config):
        optim.check_groups(config, groups.parse_groups(config), params)

    check(_airbench_config(lr_multipliers="*_bn*/bias=64"))
    with pytest.raises(train.ConfigError, match=r"`config.frozen`: the pattern 'whitten/\*'"):
        check(_airbench_config(frozen="whitten/*"))
    with pytest.raises(train.ConfigError, match="form pattern=number"):
        check(_airbench_config(lr_multipliers="*bias"))
    with pytest.raises(train.ConfigError, match="Muon orthogonalises matrices and convolution"):
        check(_airbench_config(optimizer="muon", muon_params="*bias"))


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


def test_ema_update_blends_parameters_and_statistics():
    state = train.TrainState(
        step=jnp.zeros((), jnp.int32),
        params={"w": jnp.ones(3)},
        batch_stats={"mean": jnp.full(2, 4.0)},
        opt_state=(),
        averages={"ema": {"params": {"w": jnp.zeros(3)}, "batch_stats": {"mean": jnp.zeros(2)}}},
    )
    state = train.ema_update(state, 0.9)
    np.testing.assert_allclose(state.averages["ema"]["params"]["w"], 0.1)
    np.testing.assert_allclose(state.averages["ema"]["batch_stats"]["mean"], 0.4)


def test_evaluation_uses_the_ema_weights():
    dataset, norm = preprocess(load_dataset("digits", image_size=16), "standardize")
    config = allcnn.get_config("quick")
    config.update(dict(ema_decay=0.5, num_devices=1, progress=False))
    engine = train.build_engine(config, dataset, norm)
    data = engine.put_dataset(dataset.splits["train"].images, dataset.splits["train"].labels)
    state = engine.init()
    for _ in range(3):  # the average now trails the weights
        state, _ = engine.train_step(state, *data)
    split = dataset.splits["validation"]
    got = train.evaluate(engine, state, split.images, split.labels, batch_size=100)

    def by_hand(weights):
        logits = engine.fns.model.apply(
            {"params": weights["params"], "batch_stats": weights["batch_stats"]},
            normalize(split.images, norm),
        )
        return _cross_entropy(logits, split.labels), np.mean(np.argmax(logits, -1) == split.labels)

    ema_loss, ema_accuracy = by_hand(state.averages["ema"])
    raw_loss, _ = by_hand({"params": state.params, "batch_stats": state.batch_stats})
    # The same float32 logits from two programs (the jitted step, the eager apply here) may
    # differ in their last bits: an image whose two best classes tie that closely may flip.
    assert abs(got["accuracy"] - ema_accuracy) <= 1 / len(split.labels)
    # The step sums n float32 per-image losses: Higham's bound (n - 1) 2^-24 relative, about
    # 6e-5 for n <= 1,000, is the tolerance; the raw weights' loss lies farther away by orders
    # of magnitude, so the check tells the two weights apart.
    assert got["loss"] == pytest.approx(ema_loss, rel=len(split.labels) * 2.0**-24)
    assert abs(raw_loss - ema_loss) > 1e-3 * ema_loss


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
    # The run computed Σ from its float32 normalised images (each within 2^-24 relative, so Σ
    # within 2 · 2^-24 |P|ᵀ|P| / n) and stored V in float32 (2^-24 |V|): Vᵀ Σ V moves by at
    # most 2 · 2^-24 |V|ᵀ(|P|ᵀ|P| / n)|V| for each, doubled for second-order terms; a kernel
    # that trained would be off by the learning rate's steps, orders of magnitude more.
    p = np.abs(np.asarray(rows))
    bound = 8 * 2.0**-24 * np.abs(v).T @ (p.T @ p / len(p)) @ np.abs(v)
    assert (np.abs(v.T @ cov @ v - np.diag(lam / (lam + 5e-4))) <= bound).all()
    np.testing.assert_array_equal(kernel[..., 4:], -kernel[..., :4])
    assert np.any(np.asarray(state.params["whiten"]["bias"]) != 0.0)  # the bias did train


def test_evaluate_command_with_tta_averages_the_shifted_views_by_hand(quick_run):
    workdir, _, _ = quick_run
    command = os.path.join(os.path.dirname(sys.executable), "cnnjax-evaluate")  # `make` installs it
    proc = subprocess.run(
        [command, f"--workdir={workdir}", "--split=test", "--tta"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (name,) = [f for f in os.listdir(workdir) if f.startswith("eval_digits_test_")]
    with open(os.path.join(workdir, name)) as f:
        out = json.load(f)
    # The run trained with crops and no flips: its views are the image and its two diagonal
    # one-pixel shifts over the mirror image, weighted 1/2, 1/4, 1/4 (airbench's translate).
    assert out["tta"] == "translate"
    _, engine, state, data = train.load_run(workdir, tta="translate")
    test = data.splits["test"]
    x = np.asarray(normalize(test.images, engine.fns.cfg.norm))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    f = jax.jit(lambda v: engine.fns.model.apply(variables, v))
    logits = 0.5 * f(x) + 0.25 * f(padded[:, :16, :16]) + 0.25 * f(padded[:, 2:, 2:])
    want = np.mean(np.argmax(np.asarray(logits), -1) == test.labels)
    # Two programs computing the same float32 logits: an image whose two best classes lie
    # within a few roundings may flip, one image.
    assert abs(out["tta_accuracy"] - want) <= 1 / len(test.labels)
    plain = np.mean(np.argmax(np.asarray(f(x)), -1) == test.labels)
    assert abs(out["accuracy"] - plain) <= 1 / len(test.labels)
    # The loss tells the views apart where accuracies may coincide: float32 logits averaged in
    # another order (a few 2^-24 of their size) and n per-image losses summed in float32, to
    # n 2^-24 relative (Higham); the plain loss lies orders of magnitude farther.
    got = train.evaluate(engine, engine.restored(state), test.images, test.labels, 500, tta=True)
    loss = _cross_entropy(logits, test.labels)
    assert got["loss"] == pytest.approx(loss, rel=len(test.labels) * 2.0**-24)
    assert abs(_cross_entropy(f(x), test.labels) - loss) > 1e-3 * loss


def test_whitening_a_model_whose_first_conv_does_not_fit_is_refused(tmp_path):
    config = allcnn.get_config("quick")
    config.patch_whitening = True
    config.progress = False
    with pytest.raises(
        train.ConfigError,
        match=r"\(conv1/conv/kernel, kernel \(3, 3, 1, 24\)\) to 18 whitening filters .* must have 18 output channels",
    ):
        train.train_and_evaluate(config, str(tmp_path / "run"))


NS_COEFFS = (3.4445, -4.7750, 2.0315)  # the quintic of Keller Jordan's Muon (optax's default)


def _muon_reference(kernel, grads, lr, beta, total):
    """airbench94_muon's kernel update, in float64, for a list of gradients: Nesterov momentum
    (optax's form: an exponential average with bias correction), the momentum matrix (rows: taps
    x inputs, columns: outputs) scaled to unit Frobenius norm and its singular values sent three
    times through the Newton-Schulz quintic (what the iteration does to the SVD, computed here
    through numpy's SVD rather than by matrix products), the kernel rescaled to Frobenius norm
    sqrt(outputs), then moved by the linearly decaying rate. Returns the kernel after each step."""
    a, b, c = NS_COEFFS
    p, mu = np.asarray(kernel, np.float64), np.zeros(kernel.shape)
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        mu = beta * mu + (1 - beta) * g
        nesterov = beta * mu / (1 - beta ** (t + 1)) + (1 - beta) * g / (1 - beta**t)
        m = nesterov.reshape(-1, kernel.shape[-1])
        u, s, vt = np.linalg.svd(m / np.linalg.norm(m), full_matrices=False)
        for _ in range(3):
            s = a * s + b * s**3 + c * s**5
        direction = (u * s) @ vt
        rate = lr * (1 - (t - 1) / total)
        p = p * np.sqrt(kernel.shape[-1]) / np.linalg.norm(p) - rate * direction.reshape(p.shape)
        out.append(p)
    return out


def test_muon_steps_match_a_float64_newton_schulz():
    config = airbench.get_config("quick")
    config.optimizer = "muon"
    config.lookahead_every = 0
    rng = np.random.default_rng(6)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 4, 8)), jnp.float32)
    params = {"block1_conv1": {"kernel": kernel}, "block1_bn1": {"bias": jnp.zeros(8)}}
    tx, _ = optim.make_optimizer(config, steps_per_epoch=10, total=100)
    state = tx.init(params)
    grads = [rng.standard_normal((3, 3, 4, 8)).astype(np.float32) for _ in range(4)]
    want = _muon_reference(kernel, grads, config.muon_lr, config.muon_momentum, total=100)
    for g, w in zip(grads, want, strict=True):
        g = {"block1_conv1": {"kernel": jnp.asarray(g)}, "block1_bn1": {"bias": jnp.ones(8)}}
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        got = np.asarray(params["block1_conv1"]["kernel"], np.float64)
        # Tolerance from the float32 arithmetic: each 8x36 product rounds to ~36 x 2^-24 = 2e-6
        # relative, three products a Newton-Schulz step, amplified by at most the quintic's
        # slope at 0 (3.4445) per step, 3.4445^3 = 41 over three: <= 3e-4 of the step, whose
        # size is the rate (0.24); float64 against float64 would agree to 1e-12. A reversed
        # step, or momentum without Nesterov's look-ahead (from step 2), is off by O(rate).
        np.testing.assert_allclose(got, w, rtol=0, atol=3e-4 * config.muon_lr)
    assert float(jnp.abs(params["block1_bn1"]["bias"]).max()) > 0  # the SGD group moved too


def test_a_muon_run_learns_and_resumes_bit_identically(tmp_path):
    config = airbench.get_config("quick")
    config.update(
        dict(optimizer="muon", lookahead_every=0, num_epochs=2.0, warmup_epochs=0.5,
             keep_checkpoints=2, progress=False)
    )  # fmt: skip
    workdir = str(tmp_path / "muon")
    results = train.train_and_evaluate(config, workdir)
    assert results["test_accuracy"] >= 0.5  # 20 steps on digits; chance is 0.10
    directory = os.path.join(workdir, "checkpoints")

    def final():
        _, _, state, _ = train.load_run(workdir)
        return jax.device_get(state)

    straight = final()
    assert int(straight.step) == 20
    # Muon's momentum is in the checkpoint: resuming from the first epoch's retraces the second.
    shutil.rmtree(os.path.join(directory, "20"))
    os.remove(os.path.join(workdir, "results.json"))
    train.train_and_evaluate(config, workdir)
    resumed = final()
    muon_states = [s for s in jax.tree.leaves(resumed.opt_state, is_leaf=lambda s: hasattr(s, "mu"))
                   if hasattr(s, "mu")]  # fmt: skip
    assert muon_states and int(muon_states[0].count) == 20
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_muon_recipe_has_airbench94_muons_head():
    # airbench94_muon draws its head, rescales it to standard deviation 1 and divides the
    # logits by the head's 256 inputs; airbench94's head (fan-in init, x 1/9) made the recipe
    # diverge within ten steps on CIFAR-10.
    from cnnjax.train.config import build_model

    config = airbench.get_config("muon")
    train.validate_config(config)
    model = build_model(config, num_classes=10)
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))  # the smallest it takes
    variables = model.init(jax.random.key(0), x)
    kernel = np.asarray(variables["params"]["head"]["kernel"], np.float64)
    assert kernel.shape == (256, 10)
    # The float32 rescale: the standard deviation of 2,560 numbers summed pairwise, one
    # division and one product, each within (log2 2560 + 3) 2^-24 = 9e-7 relative.
    assert abs(kernel.std() - 1.0) <= 3 * 9e-7
    logits, feats = model.apply(variables, x, return_features=True)
    pooled = np.asarray(feats["pooled"], np.float64)
    want = pooled @ kernel / 256
    # A float32 dot product of 256 terms: within gamma_256 sum |x||w| (Higham), then / 256.
    bound = 256 * 2.0**-24 / (1 - 256 * 2.0**-24) * (np.abs(pooled) @ np.abs(kernel)) / 256
    assert np.all(np.abs(np.asarray(logits, np.float64) - want) <= bound + 2.0**-24 * np.abs(want))
