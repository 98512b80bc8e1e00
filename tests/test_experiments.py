"""The study driver and the figure programs, on tiny runs."""

import csv
import os
import subprocess
import sys

import jax
import pytest
from PIL import Image

from experiments import feature_maps, pool_vs_stride
from experiments.configs import pool_vs_stride as study_configs

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


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    config = study_configs.get_config("quick")
    config.out_dir = str(tmp_path_factory.mktemp("study"))
    config.variants = "model_c,all_cnn_c"
    config.seeds = 1
    config.learning_rates = "0.003,0.001"
    config.train.update(dict(num_epochs=1, batch_size=256, progress=False, warmup_epochs=0.0))
    records = pool_vs_stride.run_study(config)
    return config, records, pool_vs_stride.write_outputs(config, records)


def test_study_writes_table_and_plots(study):
    config, records, out = study
    assert len(records) == 4  # 2 variants x 2 learning rates x 1 seed
    lines = out["table"].splitlines()
    assert lines[0].startswith("| model | error (%) |")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["model_c", "all_cnn_c"]
    with open(os.path.join(config.out_dir, "table.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["model_c", "all_cnn_c"]
    for r in rows:
        assert r["learning rate"] in ("0.003", "0.001")
        assert r["parameters"].replace(",", "").isdigit()
        assert "(test)" in r["error (%)"]
        assert r["paper CIFAR-10 error (%)"] in ("9.74", "9.08")
    best = {r["variant"]: r for r in pool_vs_stride.summarize(records)}
    for variant in ("model_c", "all_cnn_c"):
        accs = {r["lr"]: r["results"]["val_accuracy"] for r in records if r["variant"] == variant}
        assert best[variant]["lr"] == max(accs, key=accs.get)
    for name in ("error_vs_epoch.png", "error_vs_time.png", "error_vs_params.png"):
        assert _png_ok(os.path.join(config.out_dir, name))


def test_study_reuses_finished_runs(study, capsys):
    config, records, _ = study
    again = pool_vs_stride.run_study(config)
    assert "==" not in capsys.readouterr().out  # nothing was trained again
    assert [r["results"] for r in again] == [r["results"] for r in records]


def test_feature_maps_side_by_side(study, tmp_path):
    _, records, _ = study
    pool, stride = (r["workdir"] for r in records if r["lr"] == 0.003)
    runs = [feature_maps.run_features(w, 2) for w in (pool, stride)]
    name, kernel, _, stages = runs[1]
    assert name == "all_cnn_c" and kernel.shape[:2] == (3, 3)
    assert list(stages) == ["conv1", "down1", "down2"]
    assert stages["down1"].shape[1:3] == (8, 8) and stages["down2"].shape[1:3] == (4, 4)
    path = str(tmp_path / "maps.png")
    feature_maps.draw(runs, path, channels=4)
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
