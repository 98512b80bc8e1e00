"""End-to-end training on the bundled digits data: accuracy, resume, faults, evaluation."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cnnjax import train
from cnnjax.data import load_dataset, preprocess
from experiments.configs import allcnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def standard_promotion():
    # optax's Adam bias correction mixes a Python float with an int32 count, which strict
    # promotion (conftest) rejects; our own ops and models are tested under strict promotion.
    with jax.numpy_dtype_promotion("standard"):
        yield


def quick(**overrides):
    config = allcnn.get_config("quick")
    config.progress = False
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One full quick run (10 epochs on digits), shared by the tests that only read it."""
    workdir = str(tmp_path_factory.mktemp("quick_run"))
    results = train.train_and_evaluate(quick(), workdir)
    return workdir, results


def test_short_run_learns_digits(trained):
    workdir, results = trained
    assert results["test_accuracy"] >= 0.90  # chance is 0.10
    assert results["val_accuracy"] >= 0.90
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["test_accuracy"] == results["test_accuracy"]
    rows = train.read_metrics(workdir)
    epochs = [r for r in rows if "epoch" in r]
    assert [r["epoch"] for r in epochs] == list(range(1, 11))
    for key in (
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "learning_rate",
        "train_images_per_sec",
        "train_step_time",
    ):
        assert key in epochs[-1], key
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert os.path.getsize(os.path.join(workdir, "curves.png")) > 1000
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"] == "all_cnn_c"
    with train.Checkpoints(os.path.join(workdir, "checkpoints")) as ckpts:
        steps = ckpts.all_steps()
    assert 1 <= len(steps) <= 3 + 1  # the last three and the best


def test_evaluate_checkpoint_reproduces_test_accuracy(trained):
    workdir, results = trained
    out = train.evaluate_checkpoint(workdir)
    assert out["split"] == "test"
    assert out["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-9)
    val = train.evaluate_checkpoint(workdir, split="validation")
    assert val["accuracy"] == pytest.approx(results["val_accuracy"], abs=1e-9)
    with train.Checkpoints(os.path.join(workdir, "checkpoints")) as ckpts:
        first = min(ckpts.all_steps())
    assert train.evaluate_checkpoint(workdir, step=first)["step"] == first


def test_evaluate_cli_writes_json(trained):
    workdir, results = trained
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}", "--split=test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "accuracy" in proc.stdout
    written = [f for f in os.listdir(workdir) if f.startswith("eval_digits_test_")]
    with open(os.path.join(workdir, written[0])) as f:
        assert json.load(f)["accuracy"] == pytest.approx(results["test_accuracy"])


def _tree_files(path):
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, path)] = f.read()
    return out


def test_corrupt_checkpoint_is_a_clear_error_and_nothing_is_overwritten(trained, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained[0], workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    with train.Checkpoints(ckpt_dir) as ckpts:
        latest = ckpts.latest_step()
    for root, _, files in os.walk(os.path.join(ckpt_dir, str(latest))):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    before = _tree_files(workdir)
    with pytest.raises(
        train.CheckpointError, match=f"checkpoint of step {latest}.*Nothing was changed"
    ):
        train.train_and_evaluate(quick(), workdir)
    assert _tree_files(workdir) == before


# A failed restore leaves an orbax/asyncio callback behind that complains at interpreter exit.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_resuming_with_another_config_is_refused_and_nothing_is_changed(trained, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained[0], workdir)
    before = _tree_files(workdir)
    with pytest.raises(
        train.ConfigError,
        match=r"started with another config; it differs in learning_rate: 0\.003 -> 0\.01; "
        r"num_epochs: 10\.0 -> 12\.0; width: 0\.25 -> 0\.5\..*allow_config_change=True",
    ):
        train.train_and_evaluate(quick(width=0.5, num_epochs=12, learning_rate=0.01), workdir)
    assert _tree_files(workdir) == before


def test_allow_config_change_continues_from_the_checkpoint_and_records_the_change(
    trained, tmp_path
):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained[0], workdir)
    with train.Checkpoints(os.path.join(workdir, "checkpoints")) as ckpts:
        done = ckpts.latest_step()
    config = quick(num_epochs=11, learning_rate=0.01, allow_config_change=True)
    train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "config_changes.jsonl")) as f:
        (change,) = [json.loads(line) for line in f]
    assert change["changes"] == ["learning_rate: 0.003 -> 0.01", "num_epochs: 10.0 -> 11.0"]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["learning_rate"] == 0.01  # the config in force
    epochs = [r["epoch"] for r in train.read_metrics(workdir) if "epoch" in r]
    assert epochs == list(range(1, 12))  # the ten epochs kept, the eleventh trained once
    with train.Checkpoints(os.path.join(workdir, "checkpoints")) as ckpts:
        assert ckpts.latest_step() == done * 11 // 10


def test_a_field_added_after_a_run_counts_as_changed_only_off_its_default():
    from cnnjax.train.workdir import config_differences

    wanted = json.loads(quick().to_json_best_effort())
    saved = {k: v for k, v in wanted.items() if k != "train_fraction"}  # a run from before it
    assert config_differences(saved, wanted) == []
    assert config_differences(saved, {**wanted, "train_fraction": 0.5}) == [
        "train_fraction: '(unset)' -> 0.5"
    ]
    assert config_differences({**saved, "mixup": 0.2}, wanted) == ["mixup: 0.2 -> '(unset)'"]


def _cli(workdir, *extra):
    return [
        sys.executable,
        "-m",
        "experiments.train",
        "--config=experiments/configs/allcnn.py:quick",
        f"--workdir={workdir}",
        "--config.progress=False",
        "--config.num_devices=1",
        "--config.num_epochs=6",
        *extra,
    ]


def _final_params(workdir):
    config = quick(num_devices=1, num_epochs=6)
    dataset, norm = preprocess(load_dataset("digits", image_size=16), "standardize")
    engine = train.build_engine(config, dataset, norm)
    with train.Checkpoints(os.path.join(workdir, "checkpoints")) as ckpts:
        return jax.device_get(ckpts.restore(engine.init()))


def test_sigterm_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    env = {**os.environ, "PYTHONPATH": ROOT}
    subprocess.run(_cli(straight), cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(
        _cli(interrupted),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = os.path.join(interrupted, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]
    assert "received SIGTERM: saved the checkpoint of step" in out
    with train.Checkpoints(os.path.join(interrupted, "checkpoints")) as ckpts:
        stopped = ckpts.latest_step()
    assert 0 < stopped < 6 * 20

    resumed = subprocess.run(
        _cli(interrupted), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at step {stopped}" in resumed.stdout + resumed.stderr
    a, b = _final_params(straight), _final_params(interrupted)
    assert int(a.step) == int(b.step) == 120
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path / "nan")
    # Epoch 1 trains normally; at epoch 1 the rate is multiplied by 1e35 and the loss blows up.
    config = quick(
        num_epochs=4, schedule="piecewise", decay_epochs=(1,), decay_factor=1e35, warmup_epochs=0.0
    )
    with pytest.raises(
        train.NonFiniteLossError,
        match=r"training stopped at step \d+: the train (loss|accuracy) is",
    ):
        train.train_and_evaluate(config, workdir)
    dataset, norm = preprocess(load_dataset("digits", image_size=16), "standardize")
    with train.Checkpoints(os.path.join(workdir, "checkpoints")) as ckpts:
        assert ckpts.all_steps() == [20]  # the end of epoch 1, the last good state
        state = ckpts.restore(train.build_engine(config, dataset, norm).init())
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(jax.device_get(state.params)))


def test_one_step_in_bfloat16_keeps_float32_parameters():
    config = quick(compute_dtype="bfloat16", warmup_epochs=0.0)
    dataset, norm = preprocess(load_dataset("digits", image_size=16), "standardize")
    engine = train.build_engine(config, dataset, norm)
    state = engine.init()
    images, labels = engine.put_dataset(
        dataset.splits["train"].images, dataset.splits["train"].labels
    )
    before = jax.device_get(state.params)
    state, metrics = engine.train_step(state, images, labels)
    assert int(state.step) == 1
    assert np.isfinite(float(metrics["loss"]))
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.params))
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state.params)), strict=True
        )
    ]
    assert all(changed)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("learning_rate", -0.01, r"`config.learning_rate` must be greater than 0.0, got -0.01"),
        ("width", 0.0, r"`config.width` must be greater than 0.0"),
        ("width", -1.0, r"`config.width` must be greater than 0.0"),
        ("dropout", 1.5, r"`config.dropout` must be at least 0.0 and below 1.0, got 1.5"),
        ("label_smoothing", 2.0, r"`config.label_smoothing` must be at least 0.0 and below 1.0"),
        ("crop_padding", -3, r"`config.crop_padding` must be at least 0, got -3"),
        ("eval_every_epochs", 0, r"`config.eval_every_epochs` must be at least 1"),
        ("checkpoint_every_epochs", 0, r"`config.checkpoint_every_epochs` must be at least 1"),
        ("log_every_steps", 0, r"`config.log_every_steps` must be at least 1"),
        ("steps_in_flight", 0, r"`config.steps_in_flight` must be at least 1"),
        ("lr_multipliers", "*bias=abc", r"`config.lr_multipliers`: 'abc' in '\*bias=abc' is not"),
        ("frozen", "whiten/kernel=1", r"`config.frozen` takes comma-separated items of the form"),
        # A pattern that selects nothing (a typo) is found on the model traced before loading.
        ("lr_multipliers", "*bais=2", r"`config.lr_multipliers`: the pattern '\*bais' matches no"),
        ("model_kwargs", {"activaton": "gelu"}, r"`config.model_kwargs` names activaton, which"),
        ("model_kwargs", {"width": 2.0}, r"`config.model_kwargs` sets width, which the config"),
        ("model_kwargs", {"num_classes": 3}, r"`config.model_kwargs` sets num_classes; the"),
        ("model_kwargs", {"activation": "tanh"}, r"`activation` must be one of \('relu', 'gelu'"),
        ("model_kwargs", "gelu", r"`config.model_kwargs` must be a dict of model fields"),
        ("profile_steps", "5:5", r'`config.profile_steps` must be "A:B" with whole numbers'),
        ("image_size", 3, r"on 3x3 images, the size `image_size` or the dataset gives\): `w` is"),
        ("model", "resnet", r"`config.model` must be one of airbench94, all_cnn_a, "),
        ("activation", "tanh", r"`activation` must be one of \('relu', 'gelu'"),
        ("downsample", "avg", r"`downsample` must be one of"),
        ("backend", "cuda", r"`config.backend` must be one of"),
        ("warmup_epochs", 11.0, r"`config.warmup_epochs` \(11.0\) must not exceed `num_epochs`"),
        (
            "seed",
            2**40,
            r"`config.seed` must be at least 0 and below 4294967296, got 1099511627776",
        ),
        ("split_seed", 10**20, r"`config.split_seed` must be at least 0 and below 4294967296"),
        ("image_size", 100000, r"`config.image_size` must be at least 1 and below 4097"),
        ("decay_epochs", ("a", "b"), r"`config.decay_epochs` must be a list of numbers"),
        ("batch_size", 64.5, r"`config.batch_size` must be a whole number, got 64.5"),
        ("learning_rate", "abc", r"`config.learning_rate` must be a number, got 'abc'"),
        ("flip", 1, r"`config.flip` must be True or False, got 1"),
        ("learning_rate", None, r"`config.learning_rate` must be a number, got None"),
    ],
)
def test_bad_config_values_are_refused_before_anything_is_loaded(key, value, message, tmp_path):
    config = quick()
    with config.ignore_type():  # as a config file or a flag of the wrong kind would set it
        config[key] = value
    with pytest.raises(train.ConfigError, match=message):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")  # refused before the workdir was made


def test_every_field_is_listed_with_its_default_and_meaning():
    text = train.describe_fields()
    listed = re.findall(r"--config\.(\w+)=", text)
    assert sorted(listed) == sorted(train.default_config().keys())
    assert "--config.input='auto'  Where batches come from" in text
    assert "--config.seed=0" in text


def test_a_dataset_that_cannot_fit_in_memory_is_refused_before_decoding(monkeypatch, tmp_path):
    from cnnjax.train import build

    monkeypatch.setattr(build, "_available_memory", lambda: 10 * 2**20)  # 10 MB free
    # 1,797 digits at 128 x 128 x 1 = 29.4 MB > 80 % of 10 MB.
    with pytest.raises(
        train.ConfigError,
        match=r"would take about 28\.1 MB, more than the 10\.0 MB .* smaller `image_size` \(now "
        r"128\), or `input=\"stream\"`",
    ):
        train.train_and_evaluate(quick(image_size=128), str(tmp_path / "run"))


def test_a_torn_metrics_line_and_unreadable_records_are_one_sentence(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    config = quick(num_epochs=2, num_devices=1)
    train.train_and_evaluate(config, workdir)
    straight = _rows(workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "40"))  # killed in epoch 2 ...
    os.remove(os.path.join(workdir, "results.json"))
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 41, "train_lo')  # ... in the middle of writing a row
    assert [r["step"] for r in train.read_metrics(workdir)] == [r["step"] for r in straight]
    train.train_and_evaluate(config, workdir)
    assert "last line of metrics.jsonl was cut short" in capsys.readouterr().out
    assert [r["step"] for r in _rows(workdir)] == [r["step"] for r in straight]
    for name, remedy in (
        ("config.json", "it records the run's config: restore it"),
        ("data.json", "it records the run's classes and normalisation: remove it"),
        ("timing.json", "remove it: the run's recorded times"),
    ):
        path = os.path.join(workdir, name)
        shutil.copy(path, path + ".good")
        with open(path, "w") as f:
            f.write('{"model": "all_cnn_c", ')
        os.remove(os.path.join(workdir, "results.json"))
        message = rf"{re.escape(path)} is not valid JSON \(line 1: .*\); {remedy}"
        with pytest.raises(train.ConfigError, match=message):
            train.train_and_evaluate(config, workdir)
        if name != "timing.json":  # evaluation does not read the times
            with pytest.raises(train.ConfigError, match=message):
                train.evaluate_checkpoint(workdir)
        os.replace(path + ".good", path)
        train.train_and_evaluate(config, workdir)  # a finished run: rewrites results.json


def test_tta_follows_the_training_augmentation(trained):
    workdir, _ = trained  # :quick digits: crops, no flips
    out = train.evaluate_checkpoint(workdir, split="test", tta=True)
    assert out["tta"] == "translate"
    assert train.default_tta(True, 4) == "mirror_translate"
    assert train.default_tta(False, 0) == "none"
    note = train.unseen_views("mirror_translate", False, 2)
    assert "mirror images (it trained without flips)" in note and "'translate'" in note
    assert train.unseen_views("translate", False, 2) is None


def test_the_progress_bar_is_off_when_its_output_is_not_a_terminal(tmp_path, capfd):
    train.train_and_evaluate(quick(num_epochs=1, progress=True), str(tmp_path / "run"))
    assert "\r" not in capfd.readouterr().err  # pytest's capture is not a terminal


def test_installed_commands_print_their_programs_help():
    bin_dir = os.path.dirname(sys.executable)  # `make` installs the commands beside python
    run = lambda *a: subprocess.run(
        [os.path.join(bin_dir, a[0]), *a[1:]], capture_output=True, text=True, timeout=120
    )
    for command, says in (
        ("cnnjax-train", "Train a model: ``python -m experiments.train"),
        ("cnnjax-evaluate", "Evaluate a run's checkpoint on any dataset split."),
        ("cnnjax-study", "Does a strided convolution replace max-pooling?"),
    ):
        out = run(command, "--help")  # absl exits 1 after printing the help
        assert says in out.stdout, out.stdout[:500] + out.stderr[-500:]
    fields = run("cnnjax-train", "--config_help").stdout
    assert len(re.findall(r"--config\.\w+=", fields)) == len(train.default_config().keys())


def test_a_setting_the_model_does_not_have_is_refused():
    config = quick(model="nin", input_dropout=0.1)
    with pytest.raises(train.ConfigError, match=r"`config\.input_dropout` does not apply to"):
        train.validate_config(config)


def test_unknown_config_keys_are_rejected_with_the_valid_ones():
    config = quick()
    with config.unlocked():
        config.learning_rat = 0.1  # a typo
    with pytest.raises(
        train.ConfigError,
        match=r"unknown config key\(s\) \['learning_rat'\]; valid keys: .*learning_rate",
    ):
        train.validate_config(config)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "--config=experiments/configs/allcnn.py:quick",
            "--workdir=/tmp/never",
            "--config.learnin_rate=0.1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert (
        "unknown config key 'learnin_rate' (did you mean learning_rate?); valid keys:"
        in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_schedules():
    config = quick(
        schedule="piecewise",
        learning_rate=1.0,
        decay_epochs=(2, 4),
        decay_factor=0.1,
        warmup_epochs=0.0,
        num_epochs=6,
    )
    s = train.make_schedule(config, steps_per_epoch=10)
    assert [float(s(i)) for i in (0, 19, 20, 39, 40)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    config.warmup_epochs = 1.0
    s = train.make_schedule(config, steps_per_epoch=10)
    assert (
        float(s(0)) == 0.0
        and float(s(5)) == pytest.approx(0.5)
        and float(s(25)) == pytest.approx(0.1)
    )
    config.schedule, config.warmup_epochs = "cosine", 0.0
    s = train.make_schedule(config, steps_per_epoch=10)
    assert (
        float(s(0)) == pytest.approx(1.0)
        and float(s(30)) == pytest.approx(0.5)
        and float(s(60)) == pytest.approx(0.0)
    )


def test_readme_own_loop_example_runs():
    # The README's "Your own loop" block, run as written (100 steps cut to 3).
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text[text.index("### Your own loop") :]
    code = section[section.index("```python\n") + 10 : section.index("```\n", 10)]
    assert "train.build_engine" in code and "make_step_fns" in code
    scope = {}
    exec(compile(code.replace("range(100)", "range(3)"), "README.md", "exec"), scope)
    assert int(scope["state"].step) == 1
    assert np.isfinite(float(scope["metrics"]["loss"]))


def test_a_second_run_on_a_locked_workdir_is_refused_naming_the_holder(tmp_path):
    from cnnjax.train.workdir import WorkdirLock

    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with WorkdirLock(workdir):  # as a running process holds it
        with pytest.raises(train.ConfigError, match=rf"is in use by process {os.getpid()} since"):
            train.train_and_evaluate(quick(num_epochs=1), workdir)
    assert os.listdir(workdir) == [".lock"]  # refused before anything was written


def _rows(workdir):
    return train.read_metrics(workdir)


def test_resume_after_a_kill_keeps_every_step_once_and_a_finished_run_reruns_nothing(
    tmp_path, capsys
):
    workdir = str(tmp_path / "run")
    config = quick(num_epochs=3, num_devices=1)
    first = train.train_and_evaluate(config, workdir)
    straight = _rows(workdir)
    # As if killed after writing the rows of epochs 2 and 3 but before their checkpoints.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "60"))
    shutil.rmtree(os.path.join(workdir, "checkpoints", "40"))
    os.remove(os.path.join(workdir, "results.json"))
    resumed = train.train_and_evaluate(config, workdir)
    assert "dropped" in capsys.readouterr().out
    rows = _rows(workdir)
    assert [(r["step"], "epoch" in r, "num_params" in r) for r in rows] == [
        (r["step"], "epoch" in r, "num_params" in r) for r in straight
    ]
    elapsed = [r["elapsed_seconds"] for r in rows if "elapsed_seconds" in r]
    assert elapsed == sorted(elapsed)  # the whole run's training time: never runs backwards
    assert resumed["train_seconds"] >= next(r for r in rows if "epoch" in r)["elapsed_seconds"]
    assert resumed["test_accuracy"] == pytest.approx(first["test_accuracy"])  # same run
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        before = f.read()
    again = train.train_and_evaluate(config, workdir)
    assert "finished at step 60" in capsys.readouterr().out
    assert again == resumed
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert f.read() == before


def test_a_workdir_that_cannot_hold_a_run_is_refused_before_loading(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    with pytest.raises(train.ConfigError, match=r"`workdir` .* exists and is not a directory"):
        train.train_and_evaluate(quick(), str(a_file))
    with pytest.raises(train.ConfigError, match=r"`workdir` .* cannot be written: not a directory"):
        train.train_and_evaluate(quick(), str(a_file / "run"))


def test_a_checkpoint_that_cannot_be_written_is_one_sentence(tmp_path, monkeypatch):
    import errno

    state = {"w": np.ones(3, np.float32)}
    with train.Checkpoints(str(tmp_path / "ckpt")) as ckpts:
        ckpts.save(1, state)

        def full_disk(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(ckpts.manager, "save", full_disk)
        with pytest.raises(
            train.CheckpointError,
            match=r"could not write checkpoint 2 to .*ckpt: no space left on device; the last "
            r"good checkpoint is 1\.",
        ):
            ckpts.save(2, state)


def test_a_checkpoint_written_in_the_background_reports_its_failure_at_the_next_wait(
    tmp_path, monkeypatch
):
    import errno

    state = {"w": np.ones(3, np.float32)}
    with train.Checkpoints(str(tmp_path / "ckpt")) as ckpts:
        ckpts.save(1, state, wait=False)
        ckpts.wait()
        assert ckpts.all_steps() == [1]
        ckpts.save(2, state, wait=False)  # returns before the files are written

        def full_disk():
            raise OSError(errno.ENOSPC, "No space left on device")

        with monkeypatch.context() as patch:
            patch.setattr(ckpts.manager, "wait_until_finished", full_disk)
            with pytest.raises(
                train.CheckpointError,
                match=r"could not write checkpoint 2 to .*ckpt: no space left on device; the "
                r"last good checkpoint is 1\.",
            ):
                ckpts.save(3, state)  # waits for 2 first


def test_programs_run_from_any_directory_and_config_typos_are_one_line(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "cnnjax-train")
    env = {**os.environ, "PYTHONPATH": ROOT}
    args = [f"--workdir={tmp_path / 'run'}", "--config.num_epochs=1", "--config.progress=False"]
    proc = subprocess.run(
        [script, "--config=allcnn:quick", *args],
        cwd=str(tmp_path),  # not the repository
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "epoch 1/1" in proc.stdout
    typo = subprocess.run(
        [script, "--config=allcnn:qiuck", *args],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert typo.returncode != 0 and "Traceback" not in typo.stderr
    assert "error: --config: unknown config argument 'qiuck'" in typo.stderr


def test_a_corrupt_checkpoint_from_the_command_line_is_one_line(trained, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(trained[0], workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    with train.Checkpoints(ckpt_dir) as ckpts:
        latest, earlier = ckpts.latest_step(), sorted(ckpts.all_steps())[-2]
    for root, _, files in os.walk(os.path.join(ckpt_dir, str(latest))):
        for name in files:
            if "manifest" not in name and not name.startswith("_"):
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"checkpoint of step {latest}" in errors[0]
    assert "Traceback" not in proc.stderr and "loop is closed" not in proc.stderr
    # Damaged metadata reads as "unreadable", damaged arrays as "corrupt"; both name the
    # earlier checkpoint to fall back to.
    assert re.search(r"is (corrupt|unreadable)", errors[0])
    assert f"to resume from step {earlier}" in errors[0]


def test_evaluate_a_run_on_a_folder_that_has_only_a_test_split(trained, tmp_path):
    from PIL import Image

    workdir, _ = trained
    dataset = load_dataset("digits", image_size=16)
    test = dataset.splits["test"]
    root = tmp_path / "only_test"
    for label in (3, 7):  # two of the run's ten classes, as a small test set may have
        folder = root / "test" / str(label)
        folder.mkdir(parents=True)
        for i in np.flatnonzero(test.labels == label)[:15]:
            Image.fromarray(test.images[i, :, :, 0]).save(folder / f"{i}.png")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.evaluate",
            f"--workdir={workdir}",
            "--dataset=imagefolder",
            f"--data_dir={root}",
            "--split=test",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "imagefolder/test" in proc.stdout and "30 examples" in proc.stdout
    accuracy = float(proc.stdout.split("accuracy ")[1].split()[0])
    assert accuracy >= 0.8  # the digits the run learned, read back through a folder


def test_a_checkpoint_of_another_model_lists_what_differs_and_suggests_no_removal(tmp_path):
    saved = {"params": {"head": {"kernel": np.zeros((256, 10), np.float32)}, "bn": np.ones(4)}}
    wanted = {"params": {"head": {"kernel": np.zeros((256, 3), np.float32)}, "conv": np.ones(2)}}
    with train.Checkpoints(str(tmp_path / "ckpt")) as ckpts:
        ckpts.save(7, saved)
        template = jax.tree.map(jax.numpy.asarray, wanted)
        with pytest.raises(train.CheckpointError) as err:
            ckpts.restore(template)
    message = str(err.value)
    assert "written by another model or configuration" in message
    assert "params/head/kernel is (256, 10) float32 in the checkpoint, (256, 3) float32" in message
    assert "params/conv is missing from the checkpoint" in message
    assert "params/bn is in the checkpoint but not in the model" in message
    assert "remove" not in message and "Nothing was changed" in message
