"""Test-wide JAX settings; they must be applied before the first backend is created."""

import atexit
import os
import shutil
import tempfile

# TensorFlow (pulled in only by the data tests) must never claim accelerators or spam logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

# One compilation cache for the whole session, shared with the programs the tests start: a
# step compiled once (the same model, shapes and options) is loaded, not compiled again, by
# the next test or child process that builds it. A fresh directory each session, so a run of
# the suite never depends on what an earlier one left behind.
_CACHE = tempfile.mkdtemp(prefix="cnnjax-tests-xla-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402  (after the environment it reads)
import pytest  # noqa: E402

# The same settings in this process, had anything imported JAX before the environment was set.
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
# Several fake CPU devices make the multi-device code paths testable on one machine.
jax.config.update("jax_num_cpu_devices", 4)
# Strict promotion: an accidental float64/int mix in library code fails loudly in tests.
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(scope="session", autouse=True)
def one_device_unless_asked():
    """A run in the test process uses one device unless its config names ``num_devices``:
    the four fake devices share this machine's cores, so a step split four ways only adds
    work (a quick digits run: 34 s on four, 23 s on one). Tests about devices name them.
    Session-wide, so that module fixtures (shared trained runs) see it too."""
    from cnnjax import parallel

    make_mesh = parallel.make_mesh
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parallel, "make_mesh", lambda n=None: make_mesh(1 if n is None else n))
        yield
