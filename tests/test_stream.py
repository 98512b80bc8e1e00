"""The streaming input path: which examples a batch holds, host augmentation against the device
path's, sources (folders, TFDS ArrayRecord, arrays), resume after SIGKILL, several processes,
evaluation over streams, and the errors of bad data."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from cnnjax import data, train
from cnnjax.data import stream
from cnnjax.errors import ConfigError, DataError
from experiments.configs import allcnn
from tests.loopback import train_processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def standard_promotion():
    with jax.numpy_dtype_promotion("standard"):  # optax internals; see test_train.py
        yield


def indexed_source(n=200, size=8, classes=10):
    """Arrays whose image ``i`` carries ``i`` in its top-left pixels, label ``i % classes``."""
    images = np.zeros((n, size, size, 1), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = np.arange(n) // 256, np.arange(n) % 256
    return stream.ArraySource(images, np.arange(n) % classes)


def indices_of(batch):
    return batch["image"][:, 0, 0, 0].astype(int) * 256 + batch["image"][:, 0, 1, 0]


def test_an_epoch_reads_every_example_at_most_once_whatever_the_process_count():
    source, spec = indexed_source(), stream.StreamSpec(num_examples=200, batch_size=16, seed=3)
    steps = 2 * spec.steps_per_epoch  # two epochs of 12 batches; 8 examples left out of each
    one = [stream.TrainBatches(source, spec)(s) for s in range(steps)]
    seen = [indices_of(b) for b in one]
    for b, idx in zip(one, seen, strict=True):
        np.testing.assert_array_equal(b["label"], idx % 10)  # labels travel with their image
        assert b["image"].shape == (16, 8, 8, 1)
    for epoch in range(2):
        rows = np.concatenate(seen[12 * epoch : 12 * (epoch + 1)])
        assert len(set(rows)) == len(rows) == 192
    assert not np.array_equal(np.concatenate(seen[:12]), np.concatenate(seen[12:]))
    for count in (2, 4):  # each process's rows, in process order, are the same global batch
        parts = [stream.TrainBatches(source, spec, p, count) for p in range(count)]
        for s in (0, 5, 13):
            rows = np.concatenate([indices_of(part(s)) for part in parts])
            np.testing.assert_array_equal(rows, seen[s])
    with pytest.raises(DataError, match=r"`batch_size`=16 must be divisible by .* processes \(3\)"):
        stream.TrainBatches(source, spec, 0, 3)


def test_alternating_flips_mirror_every_example_the_other_way_the_next_epoch():
    source = indexed_source()
    spec = stream.StreamSpec(200, 16, seed=1, flip=True, flip_mode="alternating")
    fn = stream.TrainBatches(source, spec)
    flips = [{}, {}]
    for step in range(2 * spec.steps_per_epoch):
        b = fn(step)
        flips[step // spec.steps_per_epoch].update(zip(indices_of(b), b["flip"], strict=True))
    both = set(flips[0]) & set(flips[1])
    assert len(both) >= 180 and all(flips[0][i] != flips[1][i] for i in both)
    assert 0.3 < np.mean(list(flips[0].values())) < 0.7  # each example drawn at random once


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_host_crops_and_flips_are_the_device_augmentation(mode):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 9, 7, 3), dtype=np.uint8)
    offsets, flips = rng.integers(0, 7, (6, 2)), rng.random(6) < 0.5
    want = np.asarray(
        data.apply_augment(
            images,
            offsets,
            flips,
            3,
            mode,
        )
    )
    got = np.stack(stream.pad_crop(images, offsets, 3, mode))
    np.testing.assert_array_equal(np.where(flips[:, None, None, None], got[:, :, ::-1], got), want)


def test_inception_crops_keep_the_papers_area_and_aspect_ranges():
    rng = np.random.default_rng(1)
    for width, height in ((500, 375), (224, 224), (64, 300)):
        for _ in range(200):
            left, top, right, bottom = stream.crop_box(width, height, rng.random((10, 4)))
            w, h = right - left, bottom - top
            assert 0 <= left and right <= width and 0 <= top and bottom <= height
            if (w, h) != (width, height) and w * h < 0.99 * width * height:  # not a fallback
                # Rounding w and h to pixels moves the area and ratio by at most a pixel's worth.
                assert 0.08 * width * height - (w + h) <= w * h <= width * height
                assert 3 / 4 - 1 / min(w, h) <= w / h <= 4 / 3 + 1 / min(w, h)
    # No attempt fits (every area draw asks for more than the image): the centre crop of the
    # widest window of ratio 3/4 in a 64x300 image.
    assert stream.crop_box(64, 300, np.ones((10, 4)) * 0.999) == (0, 107, 64, 192)
    # Evaluation: a 256x300 image (shorter side already round(224 / 0.875) = 256) is only cropped.
    im = rng.integers(0, 256, (300, 256, 3), dtype=np.uint8)
    got = np.asarray(stream.centre_crop(Image.fromarray(im), 224))
    np.testing.assert_array_equal(got, im[38:262, 16:240])


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    """The digits at 16 px as an RGB image folder with train and test splits (PNG)."""
    root = tmp_path_factory.mktemp("digit_folder")
    digits = data.load_digits(16, val_fraction=0.0)
    for split, s in digits.splits.items():
        for i, (im, label) in enumerate(zip(s.images, s.labels, strict=True)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.repeat(im, 3, axis=-1)).save(folder / f"{i:04d}.png")
    return str(root)


def test_a_streamed_folder_decodes_and_carves_as_the_device_path(digit_folder):
    on_device = data.load_image_folder(digit_folder, image_size=12, val_fraction=0.1, cache_dir="")
    streamed = stream.open_stream("imagefolder", data_dir=digit_folder, image_size=12)
    assert sorted(streamed.splits) == sorted(on_device.splits)
    spec = stream.StreamSpec(num_examples=1, batch_size=1, image_size=12)
    for name, split in on_device.splits.items():
        fn = stream.EvalBatches(streamed.splits[name], 100, spec)
        batches = [fn(k) for k in range(len(fn))]
        images = np.concatenate([b["image"] for b in batches])[: len(split)]
        labels = np.concatenate([b["label"] for b in batches])
        np.testing.assert_array_equal(images, split.images)
        np.testing.assert_array_equal(labels[: len(split)], split.labels)
        assert (labels[len(split) :] == -1).all()  # the last batch's padding is marked


def test_tfds_array_record_source_streams_the_records(tmp_path):
    import tensorflow_datasets as tfds

    class TinyRecords(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {
                "image": tfds.features.Image(shape=(8, 8, 3)),
                "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
            }
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(40), "test": self._generate_examples(9)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((8, 8, 3), 5 * i, np.uint8), "label": i % 3}

    TinyRecords(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    ds = stream.open_stream("tiny_records", data_dir=str(tmp_path), val_fraction=0.25)
    assert ds.num_classes == 3 and ds.class_names == ("a", "b", "c")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 30, "validation": 10, "test": 9}
    # TFDS shuffles records as it writes them: record r holds example keys[r].
    records = tfds.data_source("tiny_records", split="train", data_dir=str(tmp_path))
    keys = [int(records[r]["image"][0, 0, 0]) // 5 for r in range(40)]
    rest, val = data.carve_indices(40, 0.25, 0)
    seen = []
    for name, rows in (("train", rest), ("validation", val)):
        for i, row in enumerate(rows):
            im, label = ds.splits[name].example(i)
            seen.append(int(np.asarray(im)[0, 0, 0]) // 5)
            assert seen[-1] == keys[row] and label == seen[-1] % 3
    assert sorted(seen) == list(range(40))
    with pytest.raises(DataError, match="not prepared"):
        stream.open_stream("tiny_records", data_dir=str(tmp_path / "empty"))


def quick(**overrides):
    config = allcnn.get_config("quick")
    config.update(dict(progress=False, input="stream", input_workers=0, num_devices=1))
    config.update(overrides)
    return config


def test_bad_images_are_named_or_skipped_with_a_count(tmp_path, digit_folder):
    root = tmp_path / "folder"
    shutil.copytree(digit_folder, root)
    corrupt = sorted((root / "train" / "3").iterdir())[0]
    corrupt.write_bytes(b"not a png")
    ds = stream.open_stream("imagefolder", data_dir=str(root), val_fraction=0.0)
    train_split = ds.splits["train"]
    bad = train_split.paths.index(os.path.relpath(corrupt, root))
    spec = stream.StreamSpec(num_examples=len(train_split), batch_size=len(train_split) // 2)
    fn = stream.TrainBatches(train_split, spec)
    step = 0 if bad in fn.order(0)[: spec.batch_size] else 1
    with pytest.raises(DataError, match=rf"cannot decode .*train/3/{corrupt.name}"):
        fn(step)
    skip = stream.TrainBatches(
        train_split, stream.StreamSpec(**{**spec.__dict__, "skip_bad": True})
    )
    assert int(skip(step)["skipped"]) == 1
    # Through a worker process, the error is the same sentence.
    iterator = stream.batches(fn, step, step + 1, workers=1)
    try:
        with pytest.raises(DataError, match=rf"cannot decode .*{corrupt.name}"):
            next(iterator)
    finally:
        iterator.close()


class _Slow:
    def __call__(self, step):
        time.sleep(0.2)
        return {"x": np.zeros(2)}


def test_a_worker_that_dies_is_one_sentence_not_a_hang():
    import multiprocessing

    iterator = stream.batches(_Slow(), 0, 100, workers=1)
    try:
        stream.next_batch(iterator)
        (worker,) = multiprocessing.active_children()
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(DataError, match=r"an input worker process died .*run the same command"):
            for _ in range(10):
                stream.next_batch(iterator)
    finally:
        iterator.close()


def test_auto_streams_over_the_budget_and_says_why(digit_folder):
    config = quick(input="auto", dataset="imagefolder", data_dir=digit_folder, image_size=16)
    kind, why = train.choose_input(config)
    assert kind == "device" and "1.1 MB per device, within `device_data_gb=4`" in why
    config.device_data_gb = 1e-4  # 1,437 images x 768 bytes = 1.1e6 bytes > 1e-4 GiB
    kind, why = train.choose_input(config)
    assert kind == "stream" and "over `device_data_gb=0.0001`" in why
    config.update(dict(device_data_gb=4.0, augment="inception"))
    assert train.choose_input(config)[0] == "stream"
    with pytest.raises(ConfigError, match=r'augment="inception"` crops on the host'):
        train.validate_config(quick(input="device", augment="inception"))
    with pytest.raises(ConfigError, match="gcn_zca"):
        train.validate_config(quick(preprocess="gcn_zca"))


def test_evaluating_a_run_by_stream_equals_the_device_path(digit_folder, tmp_path):
    workdir = str(tmp_path / "run")
    config = quick(
        input="device", dataset="imagefolder", data_dir=digit_folder, num_epochs=1, data_cache=False
    )
    train.train_and_evaluate(config, workdir)
    on_device = train.evaluate_checkpoint(workdir, split="test")
    streamed = train.evaluate_checkpoint(workdir, split="test", input="stream")
    assert on_device["examples"] == streamed["examples"] == 359
    # The same padded batches through the same executable, summed in the same order: equal.
    assert streamed["accuracy"] == on_device["accuracy"]
    assert streamed["loss"] == on_device["loss"]


def _cli(workdir, *extra):
    return [
        sys.executable,
        "-m",
        "experiments.train",
        "--config=experiments/configs/allcnn.py:quick",
        f"--workdir={workdir}",
        "--config.progress=False",
        "--config.num_devices=1",
        "--config.num_epochs=2",
        "--config.batch_size=16",  # 80 steps an epoch: time to be killed in the second
        "--config.input=stream",
        "--config.input_workers=1",
        *extra,
    ]


def _deterministic_rows(workdir):
    """metrics.jsonl without its clock readings."""
    rows = train.read_metrics(workdir)
    clock = ("time", "per_sec", "seconds")
    return [{k: v for k, v in r.items() if not any(c in k for c in clock)} for r in rows]


def _steps_written(path):
    """Steps of the complete rows of a metrics file that is being written."""
    with open(path) as f:
        return [json.loads(line)["step"] for line in f.read().split("\n")[:-1]]


def test_a_streamed_run_killed_at_any_moment_resumes_bit_identically(tmp_path):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    env = {**os.environ, "PYTHONPATH": ROOT}
    run = lambda w: subprocess.run(_cli(w), cwd=ROOT, env=env, capture_output=True, text=True)
    assert run(straight).returncode == 0
    proc = subprocess.Popen(_cli(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    metrics = os.path.join(killed, "metrics.jsonl")
    deadline = time.time() + 300
    # Killed after its first checkpoint (step 80), early in epoch 2.
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and any(step > 80 for step in _steps_written(metrics)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run(killed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at step 80" in resumed.stdout + resumed.stderr
    assert _deterministic_rows(killed) == _deterministic_rows(straight)
    with open(os.path.join(killed, "checkpoints", "160", "input", "metadata")) as f:
        saved = json.load(f)
    # The resumed process continued the saved iterator (steps counted from 0) to step 160.
    assert saved["first"] == 0 and '"next_index": 160' in json.dumps(saved["grain"])


def test_a_sigterm_to_the_whole_process_group_still_saves_a_checkpoint(tmp_path):
    """A scheduler's SIGTERM reaches the input workers too (Ctrl-C's SIGINT as well; workers
    ignore that one): the run still stops with a checkpoint of the step it reached, and
    resumes from it. (On this machine the workers' buffer usually holds the next batch, so the
    loop's fallback for a worker that died of the same signal is rarely needed.)"""
    env = {**os.environ, "PYTHONPATH": ROOT}
    workdir = str(tmp_path / "run")
    proc = subprocess.Popen(
        _cli(workdir),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a scheduler's job step
    )
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.exists(metrics):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]
    assert "received SIGTERM: saved the checkpoint of step" in out
    resumed = subprocess.run(_cli(workdir), cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0 and "resuming at step" in resumed.stdout, resumed.stderr


def test_a_changed_folder_or_input_refuses_to_resume(tmp_path, digit_folder):
    root = tmp_path / "folder"
    shutil.copytree(digit_folder, root)
    common = dict(dataset="imagefolder", data_dir=str(root), num_epochs=1, data_cache=False)
    # "auto" on the device: 1,438 training images x 768 bytes = 1.10e6 bytes fit 1.2e6 bytes.
    device_run, budget = str(tmp_path / "device_run"), 1.2e6 / 2**30
    config = quick(input="auto", device_data_gb=budget, **common)
    train.train_and_evaluate(config, device_run)
    os.remove(os.path.join(device_run, "results.json"))
    for i, image in enumerate(sorted((root / "train" / "3").iterdir())[:200]):
        shutil.copy(image, image.with_name(f"extra{i}.png"))  # 1.26e6 bytes: now it streams
    with pytest.raises(ConfigError, match=r"trained with `input=device`.*--config.input=device"):
        train.train_and_evaluate(config, device_run)
    # A streamed run refuses any change of its files.
    stream_run = str(tmp_path / "stream_run")
    train.train_and_evaluate(quick(**common), stream_run)
    os.remove(os.path.join(stream_run, "results.json"))
    next((root / "train" / "3").iterdir()).unlink()
    with pytest.raises(ConfigError, match="changed since the run started"):
        train.train_and_evaluate(quick(**common), stream_run)


def test_a_split_smaller_than_one_batch_per_process_is_one_sentence(digit_folder):
    config = quick(dataset="imagefolder", data_dir=digit_folder, batch_size=4096)
    with pytest.raises(ConfigError, match=r"`batch_size`=4096 is larger than the training split"):
        train.train_and_evaluate(config, "/tmp/never-written")


def test_two_processes_stream_their_shares_and_resume_a_one_process_run(digit_folder, tmp_path):
    """One process with four devices trains two epochs; two processes with two devices each
    resume its first epoch's checkpoint: the same parameters (GELU: see test_parallel.py)."""
    common = dict(
        dataset="imagefolder",
        data_dir=digit_folder,
        optimizer="sgd",
        learning_rate=0.01,
        dropout=0.0,
        input_dropout=0.0,
        warmup_epochs=0.0,
        activation="gelu",
        num_epochs=2,
        batch_size=256,
    )
    one = str(tmp_path / "one")
    train.train_and_evaluate(quick(num_devices=4, **common), one)
    two = str(tmp_path / "two")
    shutil.copytree(one, two)
    shutil.rmtree(os.path.join(two, "checkpoints", "10"))  # as if stopped after epoch 1
    os.remove(os.path.join(two, "results.json"))
    outs = train_processes(
        [
            "--config=experiments/configs/allcnn.py:quick",
            f"--workdir={two}",
            "--config.progress=False",
            "--config.input=stream",
            "--config.input_workers=0",
            *[f"--config.{k}={v}" for k, v in common.items()],
        ]
    )
    assert "resuming at step 5" in outs[0] and "4 device(s)" in outs[0]
    config = quick(num_devices=4, **common)
    dataset, norm = train.load_data(config, "stream")
    engine = train.build_engine(config, dataset, norm)
    params = []
    for workdir in (one, two):
        with train.Checkpoints(os.path.join(workdir, "checkpoints"), with_input=True) as ckpts:
            assert ckpts.latest_step() == 10
            params.append(jax.device_get(ckpts.restore(engine.init())).params)
    for a, b in zip(*map(jax.tree.leaves, params), strict=True):
        # Two processes sum the gradients in another order than one: the agreement
        # test_parallel.py measures for its loopback job (deriving it from float64 is #27's).
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_streamed_batches_train_alike_under_jit_and_pmap():
    """Four devices, a streamed batch: the mesh and pmap engines compute the same update
    (GELU, SGD: see test_parallel.py), and mirror exactly the images the host marked."""
    config = quick(num_devices=4, optimizer="sgd", learning_rate=0.01, activation="gelu")
    config.update(dict(dropout=0.0, input_dropout=0.0, warmup_epochs=0.0, flip=True))
    dataset, norm = train.load_data(config, "stream")
    spec = train.stream_spec(config, dataset)
    batches = stream.TrainBatches(dataset.splits["train"], spec)
    states = []
    for path in ("jit", "pmap"):
        config.parallel = path
        engine = train.build_engine(config, dataset, norm)
        state = engine.init()
        for step in range(3):
            b = batches(step)
            state, _ = engine.train_batch(
                state, *engine.put_batch(b["image"], b["label"], b["flip"])
            )
        states.append(jax.device_get(engine.saved(state)))
    for a, b in zip(*(jax.tree.leaves(s.params) for s in states), strict=True):
        # Summation order differs between the paths: the agreement test_parallel.py measures
        # for one against four devices (deriving it from float64 is issue #27's work).
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    b = batches(0)
    assert b["flip"].any() and not b["flip"].all()
    x, _ = train.streamed_batch(engine.fns.cfg, b["image"], b["label"], b["flip"])
    want = data.normalize(stream.mirrored(b), norm)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(want))
