"""Several training processes on the loopback interface, as a multi-host job runs."""

import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_processes(args: list[str], processes: int = 2, devices: int = 2) -> list[str]:
    """Runs ``python -m experiments.train *args`` as ``processes`` processes of one job with
    ``devices`` CPU devices each (gloo collectives); returns each one's output, and fails
    with the output of any that did not exit 0. Even-numbered processes are told the job by
    flags, odd-numbered ones by the ``CNNJAX_*`` environment variables."""
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "JAX_NUM_CPU_DEVICES": str(devices),
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        "JAX_PLATFORMS": "cpu",
    }
    address = f"127.0.0.1:{_free_port()}"

    def job(i):  # even processes learn the job from flags, odd ones from CNNJAX_* variables
        if i % 2 == 0:
            flags = [f"--coordinator_address={address}", f"--num_processes={processes}"]
            return [*flags, f"--process_id={i}"], env
        variables = {"CNNJAX_COORDINATOR": address, "CNNJAX_NUM_PROCESSES": str(processes)}
        return [], {**env, **variables, "CNNJAX_PROCESS_ID": str(i)}

    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "experiments.train", *args, *job(i)[0]],
            cwd=ROOT,
            env=job(i)[1],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(processes)
    ]
    try:
        outs = [p.communicate(timeout=420)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outs
