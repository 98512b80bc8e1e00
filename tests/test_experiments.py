"""The study driver and the figure programs, on tiny runs."""

import csv
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from experiments import _fast_study, _feature_maps, _pool_vs_stride, _runs
from experiments.configs import fast_study as fast_configs
from experiments.configs import pool_vs_stride as study_configs
from tests import reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def standard_promotion():
    with jax.numpy_dtype_promotion("standard"):  # optax internals; see test_train.py
        yield


def _png_ok(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


STUDY_OVERRIDES = dict(variants="model_c,all_cnn_c", seeds=1, learning_rates="0.003")
STUDY_TRAIN = dict(num_epochs=1, batch_size=256, progress=False, warmup_epochs=0.0)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The quick study trained by the installed ``cnnjax-study`` command, then read back
    in-process (which must reuse its runs)."""
    out_dir = str(tmp_path_factory.mktemp("study"))
    flags = [f"--config.{k}={v}" for k, v in STUDY_OVERRIDES.items()]
    flags += [f"--config.train.{k}={v}" for k, v in STUDY_TRAIN.items()]
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "cnnjax-study"),  # `make` installs it
         "--config=experiments/configs/pool_vs_stride.py:quick", f"--config.out_dir={out_dir}",
         *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    trained = [line for line in proc.stdout.splitlines() if line.startswith("== ")]
    assert len(trained) == 2, proc.stdout[-2000:]  # 2 variants, each trained once
    config = study_configs.get_config("quick")
    config.update(dict(out_dir=out_dir, **STUDY_OVERRIDES))
    config.train.update(STUDY_TRAIN)
    records = _runs.train_runs(_pool_vs_stride.runs(config))
    # A second learning rate of each variant, made from the real records with other accuracies
    # (lower for model_c, higher for all_cnn_c): choosing the best rate is bookkeeping.
    for r, delta in zip(list(records), (-0.05, 0.05), strict=True):
        copy = json.loads(json.dumps(r))
        copy["lr"], copy["results"]["val_accuracy"] = 0.001, r["results"]["val_accuracy"] + delta
        records.insert(records.index(r) + 1, copy)
    return config, records, _pool_vs_stride.write_outputs(config, records)


def test_study_writes_table_and_plots(study):
    config, records, out = study
    assert len(records) == 4  # 2 variants x 2 learning rates (one trained, one made up)
    lines = out["table"].splitlines()
    assert lines[0].startswith("| model | error (%) |")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["model_c", "all_cnn_c"]
    with open(os.path.join(config.out_dir, "table.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["model_c", "all_cnn_c"]
    # The rate with the higher validation accuracy: by construction 0.003, then 0.001.
    assert [r["learning rate"] for r in rows] == ["0.003", "0.001"]
    for r in rows:
        assert r["parameters"].replace(",", "").isdigit()
        assert "(test)" in r["error (%)"]
        # Springenberg et al., Table 3: Model C 9.74 %, All-CNN-C 9.08 %.
        paper = {"model_c": "9.74", "all_cnn_c": "9.08"}[r["model"]]
        assert r["paper CIFAR-10 error (%)"] == paper
    best = {r["variant"]: r for r in _pool_vs_stride.summarize(records)}
    for variant in ("model_c", "all_cnn_c"):
        accs = {r["lr"]: r["results"]["val_accuracy"] for r in records if r["variant"] == variant}
        assert best[variant]["lr"] == max(accs, key=accs.get)
    for name in ("error_vs_epoch.png", "error_vs_time.png", "error_vs_params.png"):
        assert _png_ok(os.path.join(config.out_dir, name))


def test_make_demo_runs_end_to_end_and_leaves_its_table_and_figures(tmp_path):
    # `make demo`'s program and code path, at a tiny budget: two variants, one seed, a
    # quarter of an epoch (5 steps) each.
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.demo", f"--out_dir={out}", "--seeds=1",
         "--variants=model_c,all_cnn_c", "--epochs=0.25"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (out / "table.md").read_text()
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == [
        "model_c",
        "all_cnn_c",
    ]
    assert table.strip() in proc.stdout  # printed, and the same as the file
    with open(out / "table.csv") as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["model_c", "all_cnn_c"]
    figures = ["error_vs_epoch.png", "error_vs_time.png", "error_vs_params.png"]
    for name in [*figures, "feature_maps_model_c_vs_all_cnn_c.png"]:
        assert f"  {name}" in proc.stdout
        assert _png_ok(str(out / name))


def test_study_reuses_finished_runs(study, capsys):
    config, records, _ = study
    again = _runs.train_runs(_pool_vs_stride.runs(config))
    assert "==" not in capsys.readouterr().out  # nothing was trained again
    real = [r for r in records if r["lr"] == 0.003]  # the fixture's made-up rate aside
    assert [r["results"] for r in again] == [r["results"] for r in real]


def test_feature_maps_side_by_side(study, tmp_path):
    _, records, _ = study
    pool, stride = (r["workdir"] for r in records if r["lr"] == 0.003)
    runs = [_feature_maps.run_features(w, 2) for w in (pool, stride)]
    name, kernel, _, stages = runs[1]
    assert name == "all_cnn_c" and kernel.shape[:2] == (3, 3)
    assert list(stages) == ["conv1", "down1", "down2"]
    assert stages["down1"].shape[1:3] == (8, 8) and stages["down2"].shape[1:3] == (4, 4)
    path = str(tmp_path / "maps.png")
    _feature_maps.draw(runs, path, channels=4)
    assert _png_ok(path)


def test_receptive_fields_program(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.receptive_fields",
            "--model=all_cnn_c",
            "--layer=conv7",
            f"--out_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| conv7 | 1x6x6x192 | 27x27 | 4x4 |" in proc.stdout
    assert _png_ok(str(tmp_path / "receptive_field_all_cnn_c_conv7.png"))


def test_scaling_program_times_both_paths_on_each_device_count(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.scaling", "--fake_cpu_devices=2", "--width=0.125",
         "--per_device_batch=4", "--image_size=16", "--steps=2", f"--out_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(os.path.join(tmp_path, "scaling.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["devices"], r["path"], r["global batch"]) for r in rows] == [
        ("1", "jit", "4"), ("1", "pmap", "4"), ("2", "jit", "8"), ("2", "pmap", "8"),
    ]  # fmt: skip
    for r in rows:
        ms, per_s = float(r["ms/step"]), float(r["img/s"])
        # Both columns come from one measured time, each printed to 0.1: img/s is off by at
        # most 0.05, and batch / ms by at most its relative 0.05 / ms (ms off by 0.05).
        assert per_s == pytest.approx(
            int(r["global batch"]) / ms * 1e3, abs=0.05 + per_s * 0.05 / ms
        )
        one = float(
            next(o for o in rows if o["devices"] == "1" and o["path"] == r["path"])["img/s"]
        )
        efficiency = per_s / (int(r["devices"]) * one)
        # Printed to 0.01 (off by 0.005), recomputed here from two rates printed to 0.1 (each
        # off by 0.05, relative 0.05 / rate).
        rounding = 0.005 + efficiency * (0.05 / per_s + 0.05 / one)
        assert float(r["efficiency"]) == pytest.approx(efficiency, abs=rounding)
    assert _png_ok(os.path.join(tmp_path, "scaling.png"))


@pytest.fixture(scope="module")
def fast_study(tmp_path_factory):
    config = fast_configs.get_config("quick")
    config.out_dir = str(tmp_path_factory.mktemp("fast_study"))
    config.variants = "pool,stride"
    config.seeds = 1  # the second seed's bookkeeping is tested on records made from these
    config.train.update(dict(num_epochs=2.0, warmup_epochs=0.5, progress=False))
    records = _fast_study.train(config)
    return config, records, _fast_study.write_outputs(config, records)


def test_fast_study_measures_shifts_and_writes_its_table(fast_study):
    config, records, out = fast_study
    assert [(r["variant"], r["seed"]) for r in records] == [("pool", 0), ("stride", 0)]
    for r in records:
        t = r["translation"]
        assert 0.0 <= t["consistency"] <= 1.0 and 0.0 <= t["shift4_accuracy"] <= 1.0
        with open(os.path.join(r["workdir"], "translation.json")) as f:
            assert json.load(f) == t  # measured once, kept beside the checkpoint
    assert out["table"].splitlines()[0].startswith("| downsampling | TTA accuracy (%) |")
    for name in ("accuracy_vs_epoch.png", "accuracy_vs_time.png", "consistency_vs_accuracy.png"):
        assert _png_ok(os.path.join(config.out_dir, name))


def test_fast_study_pairs_seeds(fast_study):
    config, records, _ = fast_study
    # A second seed of each variant, made from the real records with other accuracies: the
    # pairing and the interval are bookkeeping on records, whatever trained them.
    second = []
    for r, tta in zip(records, (0.61, 0.74), strict=True):
        copy = json.loads(json.dumps(r))
        copy["seed"], copy["results"]["val_tta_accuracy"] = 1, tta
        second.append(copy)
    four = [records[0], second[0], records[1], second[1]]
    rows = {r["variant"]: r for r in _fast_study.summarize(config, four)}
    assert rows["pool"]["diff"] is None
    # The paired difference is the mean over seeds of (stride - pool) for the same seed.
    paired = [_fast_study._best(four[2 + s]) - _fast_study._best(four[s]) for s in (0, 1)]
    # The same float64 mean of two differences, computed twice: a rounding or two of 2^-53.
    assert rows["stride"]["diff"][0] == pytest.approx(sum(paired) / 2, rel=1e-12)
    # Two seeds: one degree of freedom, t_0.975(1) = tan(0.475 pi) = 12.7062...
    half_width = math.tan(0.475 * math.pi) * abs(paired[0] - paired[1]) / 2**0.5 / 2**0.5
    # Both sides are float64 evaluations of the same formula (scipy's quantile against the
    # closed form): a few roundings of 2^-53 apart, so 1e-9 is a wide margin, not a fit.
    assert rows["stride"]["diff"][1] == pytest.approx(half_width, rel=1e-9)


def test_fast_study_retrains_a_run_whose_config_changed(fast_study, capsys):
    config, records, _ = fast_study
    again = _fast_study.train(config)
    assert "==" not in capsys.readouterr().out  # the same config: nothing trained again
    assert [r["results"] for r in again] == [r["results"] for r in records]
    changed = config.copy_and_resolve_references()
    changed.variants = "stride"
    changed.train.label_smoothing = 0.1
    _fast_study.train(changed)
    out = capsys.readouterr().out
    assert "its config changed since it ran; moved to" in out
    assert "== stride  lr=" in out  # and trained again
    kept = [
        d for d in os.listdir(os.path.join(config.out_dir, "runs", "stride")) if "replaced" in d
    ]
    assert len(kept) == 1  # the old run is set aside, not deleted


def test_consistency_and_shifted_accuracy_match_translating_by_hand():
    from cnnjax import train
    from cnnjax.data import load_dataset, normalize, preprocess
    from experiments.configs import allcnn

    dataset, norm = preprocess(load_dataset("digits", image_size=16), "standardize")
    config = allcnn.get_config("quick")
    config.update(dict(num_devices=1, progress=False))
    engine = train.build_engine(config, dataset, norm)
    state = engine.init()
    data = engine.put_dataset(dataset.splits["train"].images, dataset.splits["train"].labels)
    for _ in range(20):  # two epochs: digits it tells apart, and predictions that move
        state, _ = engine.train_step(state, *data)
    state = jax.device_get(state)
    split = dataset.splits["validation"]
    images, labels = split.images[:96], split.labels[:96]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    apply = jax.jit(lambda x: engine.fns.model.apply(variables, normalize(x, norm)))

    def predict(shifts, pad):  # each image cropped from its mirror-padded copy, one by one
        padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
        moved = [
            padded[i, pad + r : pad + r + 16, pad + c : pad + c + 16]
            for i, (r, c) in enumerate(shifts)
        ]
        return np.argmax(np.asarray(apply(np.stack(moved))), -1)

    rng = np.random.default_rng(0)  # the measurement's own draws: two translations per image
    first, second = rng.integers(-4, 5, (96, 2)), rng.integers(-4, 5, (96, 2))
    want = np.mean(predict(first, 4) == predict(second, 4))
    assert want < 0.9  # so that comparing a prediction with itself (1.0) would fail
    # The network runs in two programs (jitted here and there) whose float32 logits may differ in
    # their last bits: an image whose two best classes tie that closely may flip, one image.
    got = train.shift_consistency(engine.fns, state, images, max_shift=4, seed=0)
    assert abs(got - want) <= 1 / 96
    for k in (1, 2, 4):
        want = np.mean(predict(np.full((96, 2), k), k) == labels)
        got = train.shifted_accuracy(engine.fns, state, images, labels, k)
        assert abs(got - want) <= 1 / 96
    moved = train.predict_translated(engine.fns, state, images, first, 4)
    assert np.mean(moved == predict(first, 4)) >= 1 - 1 / 96  # each image, each direction


def test_ablation_table_removes_one_piece_per_row(tmp_path):
    from experiments import _ablation as ablation
    from experiments.configs import ablation as ablation_configs

    config = ablation_configs.get_config("quick")
    config.out_dir = str(tmp_path)
    config.train.update(dict(num_epochs=2.0, warmup_epochs=0.5, progress=False))
    results = ablation.run_ablations(config)
    assert list(results) == ["full", "no_lookahead", "no_translation"]
    with open(os.path.join(tmp_path, "runs", "no_lookahead_seed0", "config.json")) as f:
        assert '"lookahead_every": 0' in f.read()
    rows = ablation.table_rows(results)
    assert [r[0] for r in rows] == ["the full recipe", "no lookahead", "no translation"]
    full = 100 * results["full"][0]["val_accuracy"]
    delta = 100 * results["no_lookahead"][0]["val_accuracy"] - full  # quick: no TTA
    assert rows[1][2] == f"{delta:+.2f}" and rows[0][2] == "-"


def test_weight_sharing_experiment_compares_the_three_layers(tmp_path):
    from experiments import _weight_sharing
    from experiments.configs import weight_sharing

    config = weight_sharing.get_config("quick")
    config.out_dir = str(tmp_path)
    config.fractions, config.seeds, config.shifts = "1.0", 1, "0,2"
    # Digits at their own 8x8: the dense variant stays small (512 units in its first layer).
    config.train.update(dict(num_epochs=2.0, progress=False, image_size=8))
    records = _weight_sharing.run_all(config)
    assert [r["variant"] for r in records] == [
        "sharing_conv",
        "sharing_local",
        "sharing_dense",
        "sharing_conv_wide",
    ]
    # Stride 2 maps an 8x8 digit to 4x4, 2x2, 1x1 positions (p0 .. p3) of c channels.
    (p0, p1, p2, p3), c = (64, 16, 4, 1), 32
    head = c * 10 + 10
    expected = {
        "sharing_conv": (9 * 1 * c + c) + 2 * (9 * c * c + c) + head,
        "sharing_local": (p1 * 9 * 1 * c + p1 * c)
        + (p2 * 9 * c * c + p2 * c)
        + (p3 * 9 * c * c + p3 * c)
        + head,
        "sharing_dense": (p0 * p1 * c + p1 * c)
        + (p1 * c * p2 * c + p2 * c)
        + (p2 * c * p3 * c + p3 * c)
        + head,
        # 116 channels: as many parameters as the locally connected network on CIFAR-10.
        "sharing_conv_wide": (9 * 116 + 116) + 2 * (9 * 116 * 116 + 116) + 116 * 10 + 10,
    }
    for r in records:
        assert int(r["results"]["num_params"]) == expected[r["variant"]]
        # Moved by 0 px, the held-out accuracy is the run's own: the same predictions counted
        # twice, so the two fractions can differ only by float64 rounding of count / n.
        assert r["shifted"]["0"] == pytest.approx(r["results"]["val_accuracy"], abs=1e-9)
    header, rows = _weight_sharing.summarize(config, records)
    assert header[3] == "accuracy, 1 of the data (%)" and header[-1] == "shifted 2 px (%)"
    assert [row[1] for row in rows] == [f"{v:,}" for v in expected.values()]
    for name in _weight_sharing.plot(config, records):
        assert _png_ok(name)


def test_analysis_subsets_draw_from_every_class_of_a_class_ordered_split():
    from types import SimpleNamespace

    from experiments import _runs

    labels = np.repeat(np.arange(10), 500)  # stored class by class, like an image folder
    split = SimpleNamespace(images=np.arange(5000)[:, None], labels=labels)
    images, picked = _runs.subset(split, 2000)
    assert len(picked) == 2000 and len(set(images[:, 0])) == 2000
    assert np.array_equal(labels[images[:, 0]], picked)  # images and labels stay paired
    counts = np.bincount(picked, minlength=10)
    assert counts.min() > 150  # ~200 each; the first 2,000 would hold four classes only
    assert np.array_equal(_runs.subset(split, 2000)[1], picked)  # the same draw every time


def test_an_unknown_inception_branch_lists_the_branches(tmp_path):
    from experiments import _inception_branches as ib

    assert ib.check_branches("pool, 3x3") == ("pool", "3x3")
    with pytest.raises(ValueError, match=r"names '7x7'.*the branches are 1x1, 3x3, 5x5, pool\."):
        ib.check_branches("1x1,7x7")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.inception_branches",
            "--config.branches=3x3,7x7",
            f"--out_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: `branches` names '7x7', which is not a branch of an Inception module; "
        "the branches are 1x1, 3x3, 5x5, pool."
    ]
    assert not os.listdir(tmp_path)  # refused before anything was trained or written


def _max_pool_3x3_stride_2(x):
    """3x3 max-pool, stride 2, one pixel of padding, in float64 (N, H, W, C)."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    h, w = (x.shape[1] + 1) // 2, (x.shape[2] + 1) // 2
    return np.stack(
        [np.stack([padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max((1, 2)) for j in range(w)], 1)
         for i in range(h)], 1,
    )  # fmt: skip


def test_inception_branch_measures_against_the_network_by_hand(tmp_path):
    import flax.linen as flax_nn

    from cnnjax import models, train
    from cnnjax.data import load_dataset, normalize, preprocess
    from experiments import _inception_branches as ib
    from experiments.configs import inception_branches

    # The measures are arithmetic on any weights: an initialised network and 32 images test
    # them as well as a trained one.
    config = inception_branches.get_config("quick").train
    config.update(dict(num_devices=1, progress=False))
    dataset, norm = preprocess(load_dataset("digits", image_size=16), "standardize")
    engine = train.build_engine(config, dataset, norm)
    state = jax.device_get(engine.init())
    model, images = engine.fns.model, dataset.splits["validation"].images[:32]
    variables = train.variables_of(state.params, state.batch_stats)
    x = normalize(images, norm)
    logits, feats = model.apply(variables, x, return_features=True)

    # The last module feeds down2 (3x3/2 max-pool), the global mean and the classifier: with
    # a branch's channels replaced by their mean over the images, its predictions by hand.
    out = np.asarray(feats["inception4a"], np.float64)
    head = {k: np.asarray(v, np.float64) for k, v in state.params["head"].items()}
    classify = lambda o: _max_pool_3x3_stride_2(o).mean((1, 2)) @ head["kernel"] + head["bias"]
    # float64 against the network's float32 logits: same classes up to near-ties, one image.
    assert np.mean(classify(out).argmax(-1) == np.argmax(logits, -1)) >= 1 - 1 / 32
    sites = {site.name: site for site in models.inception_sites(model)}
    slices = ib.branch_slices(sites["inception4a"])

    def ablated(branch):
        o = out.copy()
        o[..., slices[branch]] = out[..., slices[branch]].mean(0)
        return classify(o).argmax(-1)

    # Labels chosen as the 1x1-ablated network's own predictions: that ablation must score 1,
    # which replacing the wrong channels, or by zeros instead of the mean, would not.
    labels = ablated("1x1")
    report = ib.analyse(model, state, images, labels, norm)
    for branch in ib.BRANCHES:
        want = np.mean(ablated(branch) == labels)
        assert abs(report["ablated_accuracy"]["inception4a"][branch] - want) <= 1 / 32
    assert report["ablated_accuracy"]["inception4a"]["1x1"] >= 1 - 1 / 32

    # Two branches only: the same numbers for them (shares of all four), the others left out.
    two = ib.analyse(model, state, images, labels, norm, ("pool", "1x1"))
    for key in ("weight_share", "ablated_accuracy", "contribution_share"):
        for module in sites:
            assert two[key][module] == {b: report[key][module][b] for b in ("pool", "1x1")}
    assert [row[:2] for row in ib.table_rows(two)][:2] == [
        ["inception3a", "pool"],
        ["inception3a", "1x1"],
    ]
    for key in ("weight_share", "contribution_share"):
        for module in sites:
            # Shares are normalised by their own total: 1 up to float64 rounding of 4 terms.
            assert sum(report[key][module].values()) == pytest.approx(1.0, rel=1e-12)
    # The classifier's weight share and contribution share of each branch, by hand in float64;
    # the program sums float32 values with numpy's pairwise summation, whose relative error is
    # below log2(n) * 2**-24 (< 1e-6 for n < 2**16 terms).
    total = float(np.sum(head["kernel"] ** 2))
    pooled = np.asarray(feats["pooled"], np.float64)
    parts = {b: np.mean(np.abs(pooled[:, sl] @ head["kernel"][sl])) for b, sl in slices.items()}
    # The program's parts: float32 dot products of K = the branch's channels (each within
    # γ_K Σ|x||w| of the exact one, Higham), their absolute values averaged in float32 over n
    # entries (pairwise: (log2 n + 1) 2^-24 relative). So part b is within e_b relative, with
    # e_b = γ_K mean(Σ|x||w|) / mean(|dot|) + (log2 n + 1) 2^-24, and a share within
    # e_b + max e (its denominator, a sum of the parts, within the largest e).
    rel = {}
    for b, sl in slices.items():
        magnitude = np.mean(np.abs(pooled[:, sl]) @ np.abs(head["kernel"][sl]))
        n = pooled.shape[0] * head["kernel"].shape[1]
        rel[b] = ref.gamma(sl.stop - sl.start) * magnitude / parts[b] + (np.log2(n) + 1) * ref.U32
    for branch, sl in slices.items():
        want = float(np.sum(head["kernel"][sl] ** 2)) / total
        assert report["weight_share"]["inception4a"][branch] == pytest.approx(want, rel=2e-6)
        want = parts[branch] / sum(parts.values())
        bound = rel[branch] + max(rel.values())
        assert report["contribution_share"]["inception4a"][branch] == pytest.approx(want, rel=bound)
    # Replacing a branch by a constant changes what the network computes.
    sl = ib.branch_slices(sites["inception3a"])["1x1"]
    with flax_nn.intercept_methods(ib._replacer("inception3a", sl, 0.0)):
        replaced = model.apply(variables, x[:8])
    assert not np.allclose(replaced, model.apply(variables, x[:8]))
    ib.plot(report, str(tmp_path / "branches.png"))
    assert _png_ok(str(tmp_path / "branches.png"))


def test_confidence_interval_uses_student_t_for_every_sample_size():
    # Closed forms of the 0.975 quantile: 1 degree of freedom (Cauchy) tan(0.475 pi); 2 degrees
    # (2p - 1) / sqrt(2p(1 - p)); beyond 30 a table value (40: 2.0210754), not the normal 1.96.
    p = 0.975
    for values, quantile in [
        ([1.0, 3.0], math.tan(0.475 * math.pi)),
        ([1.0, 2.0, 4.0], (2 * p - 1) / math.sqrt(2 * p * (1 - p))),
        ([float(i % 7) for i in range(41)], 2.0210754),
    ]:
        mean, half = _fast_study.mean_ci(values)
        n = len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        # float64 means of at most 41 small values: within 41 · 2^-53 of each other.
        assert mean == pytest.approx(sum(values) / n, rel=1e-12)
        # The closed forms are exact; 2.0210754 is rounded to 8 significant digits (relative
        # error below 2.5e-8), hence 1e-7.
        assert half == pytest.approx(quantile * sd / math.sqrt(n), rel=1e-7)
    assert math.isnan(_fast_study.mean_ci([1.0])[1])
