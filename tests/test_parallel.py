"""Data parallelism: jit over a mesh, pmap and one device agree; batches land on the right
devices; two real processes on the loopback interface match one process with four devices."""

import dataclasses
import os
import platform
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import parallel, train
from cnnjax.data import load_dataset, preprocess
from cnnjax.train import loop
from experiments.configs import allcnn
from tests.loopback import train_processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def standard_promotion():
    with jax.numpy_dtype_promotion("standard"):  # optax internals; see test_train.py
        yield


@pytest.fixture(scope="module")
def digits():
    return preprocess(load_dataset("digits", image_size=16), "standardize")


def _config(**overrides):
    # SGD keeps update differences proportional to gradient differences (Adam would amplify
    # rounding noise in near-zero gradients); no dropout, whose masks the paths draw differently.
    # GELU instead of ReLU: the paths sum in different orders, and a ReLU whose input lies
    # within float32 rounding of zero switches on in one path and off in another. Measured on
    # the first batch: one of conv5's 196,608 units has a float64 pre-activation of 1.3e-7 x
    # the layer's maximum; one device computes -3.1e-6 for it, four devices +6.3e-7, and that
    # single unit moves the parameters by up to 3 % of their scale after 3 steps (GELU: 1e-5).
    # Which unit lands on the kink depends on the CPU's kernels, so with ReLU the comparison
    # passed or failed by chance. With ReLU the paths train alike only statistically (README,
    # "Running on accelerators").
    c = allcnn.get_config("quick")
    c.update(
        dict(
            optimizer="sgd",
            learning_rate=0.01,
            dropout=0.0,
            input_dropout=0.0,
            warmup_epochs=0.0,
            progress=False,
            activation="gelu",
        )
    )
    c.update(overrides)
    return c


def _train(config, dataset, norm, steps):
    engine = train.build_engine(config, dataset, norm)
    state = engine.init()
    data = engine.put_dataset(dataset.splits["train"].images, dataset.splits["train"].labels)
    for _ in range(steps):
        state, metrics = engine.train_step(state, *data)
    return engine, jax.device_get(engine.saved(state)), float(metrics["loss"])


def _float64(config, dataset, norm, steps):
    """The run of ``config`` on one device computed in float64 (x64 on, float64 parameters)
    from the float32 run's initial state: what the float32 paths approximate, to 2^-53. The
    batches and augmentation draws are the float32 run's (keyed by (seed, step), drawn as
    int32 and uint32 whatever x64 says)."""
    one = config.copy_and_resolve_references()
    one.num_devices, one.parallel = 1, "jit"
    start = jax.device_get(train.build_engine(one, dataset, norm).init())
    wide = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float64), tree)
    with jax.enable_x64(True):
        one.model_kwargs = dict(param_dtype=jnp.float64)
        engine = train.build_engine(one, dataset, norm)
        init = jax.device_get(engine.init())
        state = engine.restored(
            init.replace(params=wide(start.params), batch_stats=wide(start.batch_stats))
        )
        data = engine.put_dataset(dataset.splits["train"].images, dataset.splits["train"].labels)
        for _ in range(steps):
            state, metrics = engine.train_step(state, *data)
        state, loss = jax.device_get(engine.saved(state)), float(metrics["loss"])
    assert jax.tree.leaves(state.params)[0].dtype == np.float64
    return state, loss


# Two float32 runs of the same steps in other summation orders differ by their rounding, which
# the steps carry forward and which depends on the CPU's kernels. Its size is measured, not
# assumed: `rounding` is the largest error of a float32 run against the float64 run, relative
# to each tensor's scale (max |float64 value|). Two paths differ by at most the sum of their
# errors. The paths' errors are not equal draws: on the AVX2 EPYC after 3 steps the one-device
# run is 2.6e-6 of the scale from float64 and the four-device runs 6.3e-6 and 6.9e-6 (their
# convolutions, at a quarter of the batch, round differently), so one-device and four-device
# runs differ by 2.2x the one-device error. SPREAD = 8 allows 1 + 2.5 with a factor 2 for other
# CPUs' kernels. A path that computes something else is far outside: pmap without the
# gradients' pmean (planted once) put a tensor a whole scale away, 6e4 times the bound.
SPREAD = 8.0


def _rounding(run32, run64) -> float:
    """max over tensors of max |float32 - float64| / max |float64| (params and batch stats)."""
    trees = ((run32.params, run64.params), (run32.batch_stats, run64.batch_stats))
    return max(
        float(np.max(np.abs(np.float64(a) - b)) / np.max(np.abs(b)))
        for t32, t64 in trees
        for a, b in zip(jax.tree.leaves(t32), jax.tree.leaves(t64), strict=True)
    )


def _assert_same_run(a_run, b_run, run64, rounding):
    """Every tensor of two float32 runs within SPREAD x ``rounding`` of its scale."""
    for tree in ("params", "batch_stats"):
        pairs = zip(
            jax.tree.leaves(getattr(a_run, tree)),
            jax.tree.leaves(getattr(b_run, tree)),
            jax.tree.leaves(getattr(run64, tree)),
            strict=True,
        )
        for a, b, exact in pairs:
            bound = SPREAD * rounding * np.max(np.abs(exact))
            assert np.max(np.abs(np.float64(a) - b)) <= bound, (tree, bound)


def test_mesh_pmap_and_one_device_agree(digits):
    dataset, norm = digits
    steps = 3
    run64, loss64 = _float64(_config(num_devices=1), dataset, norm, steps)
    _, one, loss_one = _train(_config(num_devices=1), dataset, norm, steps)
    rounding = _rounding(one, run64)
    # The reference must be the same run: a float32 run of other batches, or a float32 step
    # inside the float64 one, would be off by far more than float32's rounding carried through
    # three steps (a few 1e-6 of the scale).
    assert 0 < rounding < 1e-4
    mesh_engine, mesh, loss_mesh = _train(_config(num_devices=4), dataset, norm, steps)
    pmap_engine, pm, loss_pmap = _train(
        _config(num_devices=4, parallel="pmap"), dataset, norm, steps
    )
    assert mesh_engine.num_devices == pmap_engine.num_devices == 4
    assert int(one.step) == int(mesh.step) == int(pm.step) == steps
    for other in (mesh, pm):
        _assert_same_run(one, other, run64, rounding)
    # The last step's loss, a mean over the batch: against float64 as the one-device run is,
    # within the same spread (plus float32's own rounding of the mean, where that run's error
    # happens to be smaller).
    error = abs(loss_one - loss64) + 2.0**-24 * abs(loss64)
    for loss in (loss_mesh, loss_pmap):
        assert abs(loss - loss64) <= SPREAD * error


def _restored(workdir, config, dataset, norm):
    """The run's checkpoint on the devices of ``config``'s layout, and that engine."""
    engine = train.build_engine(config, dataset, norm)
    with train.Checkpoints(os.path.join(workdir, "checkpoints")) as ckpts:
        return engine, engine.restored(ckpts.restore(engine.saved(engine.init())))


def test_a_pmap_run_evaluates_stops_on_sigterm_resumes_and_restores_on_one_device(
    digits, tmp_path, monkeypatch
):
    dataset, norm = digits
    workdir = str(tmp_path / "pmap")
    # A constant rate: the schedule then does not depend on the run's length, so one epoch
    # resumed to two retrace two trained straight.
    steady = dict(batch_size=128, schedule="constant")
    pmap2 = _config(num_devices=2, parallel="pmap", num_epochs=1, **steady)
    results = train.train_and_evaluate(pmap2, workdir)  # 10 steps, then evaluated
    test = dataset.splits["test"]
    jit1 = _config(num_devices=1, num_epochs=1, **steady)
    engine, state = _restored(workdir, jit1, dataset, norm)
    one = train.evaluate(engine, state, test.images, test.labels, batch_size=500)
    # The same weights on one device and on two: per-image logits equal up to the float32
    # summation order, so at most an image whose two best classes are that close may differ;
    # the mean loss, a float32 sum of n per-image losses, to n 2^-24 relative (Higham).
    n = len(test.labels)
    assert abs(one["accuracy"] - results["test_accuracy"]) <= 1 / n
    assert one["loss"] == pytest.approx(results["test_loss"], rel=n * 2.0**-24)

    # Resumed under jit on one device: the second epoch continues from step 10.
    longer = _config(num_devices=1, num_epochs=2, allow_config_change=True, **steady)
    train.train_and_evaluate(longer, workdir)
    epochs = [r["epoch"] for r in train.read_metrics(workdir) if "epoch" in r]
    assert epochs == [1, 2]
    _, resumed = _restored(workdir, jit1, dataset, norm)

    # Under pmap from the start, stopped by SIGTERM at step 13 and resumed under pmap.
    stopped = str(tmp_path / "sigterm")
    pmap_two = _config(num_devices=2, parallel="pmap", num_epochs=2, **steady)
    build = loop.build_engine

    def terminated_at_step_13(*args, **kwargs):
        engine, calls = build(*args, **kwargs), []

        def step(state, images, labels):
            calls.append(1)
            if len(calls) == 13:
                os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler takes it
            return engine.train_step(state, images, labels)

        return dataclasses.replace(engine, train_step=step)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "build_engine", terminated_at_step_13)
        assert train.train_and_evaluate(pmap_two, stopped) == {"stopped_at_step": 13}
    with train.Checkpoints(os.path.join(stopped, "checkpoints")) as ckpts:
        assert ckpts.latest_step() == 13
    train.train_and_evaluate(pmap_two, stopped)
    _, interrupted = _restored(stopped, jit1, dataset, norm)
    assert int(resumed.step) == int(interrupted.step) == 20
    # The same 20 steps in other summation orders: within their rounding, measured against
    # the float64 run as in test_mesh_pmap_and_one_device_agree.
    run64, _ = _float64(_config(num_devices=1, num_epochs=2, **steady), dataset, norm, 20)
    rounding = _rounding(resumed, run64)
    assert 0 < rounding < 1e-4  # the reference is the same run (see the first test)
    _assert_same_run(resumed, interrupted, run64, rounding)


def test_each_device_holds_its_slice_of_the_batch(digits):
    dataset, norm = digits
    engine = train.build_engine(_config(num_devices=4, crop_padding=0), dataset, norm)
    images, labels = engine.put_dataset(
        dataset.splits["train"].images, dataset.splits["train"].labels
    )
    cfg, mesh = engine.fns.cfg, parallel.make_mesh(4)
    x, _ = jax.jit(train.mesh_batch, static_argnums=(0, 1))(
        cfg, parallel.batch_sharded(mesh), np.int32(3), images, labels
    )
    assert x.shape[0] == 64
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
    assert [s.data.shape[0] for s in shards] == [16] * 4
    assert len({s.device for s in shards}) == 4
    full = np.asarray(x)
    for i, s in enumerate(shards):
        np.testing.assert_array_equal(np.asarray(s.data), full[16 * i : 16 * (i + 1)])
    # The pmap path's share for device i is the same rows.
    share = train.batch_share(train.batch_plan(cfg, np.int32(3)), 2, 4)
    xi, _ = train.assemble_batch(cfg, images, labels, share)
    np.testing.assert_allclose(np.asarray(xi), full[32:48], rtol=1e-6, atol=1e-6)


def test_indivisible_global_batch_is_a_clear_error(digits):
    dataset, norm = digits
    with pytest.raises(
        ValueError, match=r"`batch_size`=30 must be divisible by the number of devices \(4\)"
    ):
        train.build_engine(_config(num_devices=4, batch_size=30), dataset, norm)
    with pytest.raises(ValueError, match="`num_devices` must be between 1 and 4"):
        parallel.make_mesh(9)


def test_two_processes_on_loopback_match_one_process_with_four_devices(digits, tmp_path):
    dataset, norm = digits
    workdir = str(tmp_path / "multihost")
    outs = train_processes(
        [
            "--config=experiments/configs/allcnn.py:quick",
            f"--workdir={workdir}",
            "--config.optimizer=sgd",
            "--config.learning_rate=0.01",
            "--config.dropout=0.0",
            "--config.input_dropout=0.0",
            "--config.warmup_epochs=0.0",
            "--config.activation=gelu",
            "--config.num_epochs=1",
            "--config.batch_size=256",
            "--config.progress=False",
        ]
    )
    assert "4 device(s)" in outs[0]  # 2 processes x 2 devices form one mesh
    assert "epoch 1/1" in outs[0] and "epoch 1/1" not in outs[1]  # only process 0 logs

    config = _config(num_devices=4, num_epochs=1, batch_size=256)
    engine, reference, _ = _train(config, dataset, norm, 5)
    with train.Checkpoints(os.path.join(workdir, "checkpoints")) as ckpts:
        assert ckpts.latest_step() == 5  # 1,294 training images // 256
        restored = jax.device_get(ckpts.restore(engine.init()))
    # Four devices in one process and two in each of two: within the rounding of the
    # in-process run against float64 (test_mesh_pmap_and_one_device_agree).
    run64, _ = _float64(config, dataset, norm, 5)
    rounding = _rounding(reference, run64)
    assert 0 < rounding < 1e-4  # the reference is the same run
    _assert_same_run(reference, restored, run64, rounding)


def test_the_job_comes_from_arguments_or_cnnjax_variables(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a: calls.append(a))
    for name in (
        "CNNJAX_COORDINATOR",
        "CNNJAX_NUM_PROCESSES",
        "CNNJAX_PROCESS_ID",
        "CNNJAX_DISTRIBUTED",
    ):
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize_distributed() is False and calls == []  # one host: nothing
    monkeypatch.setenv("CNNJAX_COORDINATOR", "10.0.0.1:1234")
    monkeypatch.setenv("CNNJAX_NUM_PROCESSES", "8")
    with pytest.raises(ValueError, match=r"this process's id; got .*process_id=None"):
        parallel.initialize_distributed()
    monkeypatch.setenv("CNNJAX_PROCESS_ID", "3")
    assert parallel.initialize_distributed() is True
    assert parallel.initialize_distributed(process_id=5) is True  # an argument wins
    assert calls == [("10.0.0.1:1234", 8, 3), ("10.0.0.1:1234", 8, 5)]
    for name in ("CNNJAX_COORDINATOR", "CNNJAX_NUM_PROCESSES", "CNNJAX_PROCESS_ID"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("CNNJAX_DISTRIBUTED", "auto")  # a managed cluster: JAX finds the job
    assert parallel.initialize_distributed() is True and calls[-1] == ()


def test_cpu_compiler_options_reach_every_compiled_step(digits, monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert parallel.compiler_options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
    assert parallel.compiler_options("gpu") == {}
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
    assert parallel.compiler_options("cpu") == {}  # the user's own setting wins
    monkeypatch.delenv("XLA_FLAGS")

    # Whether XLA then keeps convolutions away from YNNPACK is XLA's behaviour (measured in
    # perf_notes.md); what is ours is that every step is compiled with the options. An option
    # XLA does not know makes compiling fail, naming it: each step must fail that way.
    dataset, norm = digits
    split = dataset.splits["validation"]
    images, labels = split.images[:64], split.labels[:64].astype(np.int32)
    for layout in ("jit", "pmap"):
        config = _config(num_devices=2, parallel=layout)
        plain = train.build_engine(config, dataset, norm)  # a state and data to call with
        state = plain.init()
        data = plain.put_dataset(dataset.splits["train"].images, dataset.splits["train"].labels)
        with monkeypatch.context() as patch:
            patch.setattr(parallel, "compiler_options", lambda _: {"xla_cnnjax_probe": ""})
            probed = train.build_engine(config, dataset, norm)
        calls = [
            (probed.init, ()),
            (probed.train_step, (state, *data)),
            (probed.eval_batch, (state, images, labels)),
            (probed.eval_batch, (state, images, labels, True)),
        ]
        for call, args in calls:
            with pytest.raises(jax.errors.JaxRuntimeError, match="xla_cnnjax_probe"):
                call(*args)


# Run in a child process: the setting is process-wide and must not leak into later tests.
_ALLOCATOR_CHECK = """
import ctypes
from cnnjax import parallel

class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2

def heap_growth():
    before = libc.mallinfo2().fordblks
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
    return libc.mallinfo2().fordblks - before

default = heap_growth()
assert parallel.keep_freed_host_memory() is True
print(default, heap_growth())
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)
def test_keep_freed_host_memory_in_a_child_process():
    # With glibc's defaults a freed 64 MiB block is unmapped (it is above the 32 MiB cap of the
    # dynamic mmap threshold): the free heap does not grow. After the call it stays in the heap
    # as free space (part of it may reuse old free space).
    out = subprocess.run(
        [sys.executable, "-c", _ALLOCATOR_CHECK],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    default, kept = map(int, out.stdout.split()[-2:])
    assert default < 1 << 20
    assert kept >= 60 << 20


def test_keep_freed_host_memory_rejects_bad_limits():
    for bad in (0, 2**31, 1.5, True):
        with pytest.raises(ValueError, match="limit_bytes"):
            parallel.keep_freed_host_memory(bad)
