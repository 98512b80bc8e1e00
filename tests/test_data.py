"""Datasets, preprocessing and the on-device pipeline."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cnnjax import data


def test_import_cnnjax_does_not_import_tensorflow():
    import subprocess

    code = (
        "import sys, cnnjax, cnnjax.data, cnnjax.train, cnnjax.models, cnnjax.nn, cnnjax.parallel\n"
        "cnnjax.data.load_dataset('digits', image_size=8)\n"
        "w = cnnjax.train.MetricWriter(sys.argv[1]); w.write(1, {'a': 1.0}); w.close()\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-c", code, tmp], check=True, cwd=os.getcwd())


def test_digits_splits():
    ds = data.load_digits(image_size=16, val_fraction=0.1)
    assert set(ds.splits) == {"train", "validation", "test"}
    total = sum(len(s) for s in ds.splits.values())
    assert total == 1797
    assert ds.image_shape == (16, 16, 1)
    assert ds.splits["train"].images.dtype == np.uint8
    assert len(ds.splits["validation"]) == round(0.1 * (1797 - 359))
    again = data.load_digits(image_size=16, val_fraction=0.1)
    np.testing.assert_array_equal(ds.splits["validation"].labels, again.splits["validation"].labels)
    assert set(np.unique(ds.splits["train"].labels)) == set(range(10))


def test_carve_validation_is_disjoint_and_seeded():
    split = data.Split(np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1), np.arange(100))
    a_train, a_val = data.carve_validation(split, 0.2, seed=3)
    _, b_val = data.carve_validation(split, 0.2, seed=3)
    _, c_val = data.carve_validation(split, 0.2, seed=4)
    assert len(a_val) == 20 and len(a_train) == 80
    assert not set(a_val.labels) & set(a_train.labels)
    np.testing.assert_array_equal(a_val.labels, b_val.labels)
    assert set(a_val.labels) != set(c_val.labels)
    with pytest.raises(ValueError, match="`val_fraction` must be in"):
        data.carve_validation(split, 1.5, 0)


def test_tfds_path_under_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=40):
        ds = data.load_tfds("cifar10", data_dir=str(tmp_path), download=True, val_fraction=0.25)
    assert ds.num_classes == 10
    assert ds.image_shape == (32, 32, 3)
    assert len(ds.splits["train"]) == 30 and len(ds.splits["validation"]) == 10
    assert ds.splits["train"].images.dtype == np.uint8


def test_offline_without_data_fails_at_once_with_instructions(tmp_path):
    import time

    start = time.perf_counter()
    with pytest.raises(data.DataError, match=r"not prepared in .*tfds build mnist"):
        data.load_dataset("mnist", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 60  # no download retry loop


def _write_folder(root, sizes=((12, 10), (9, 9))):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6),):
        for c, name in enumerate(["cat", "dog", "eel"]):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                h, w = sizes[i % len(sizes)]
                pixels = np.full((h, w, 3), 40 * c + 20, np.uint8) + rng.integers(
                    0, 5, (h, w, 3), dtype=np.uint8
                )
                ext = "png" if i % 2 else "jpg"
                Image.fromarray(pixels).save(d / f"{i}.{ext}")


def test_image_folder_with_mixed_files_and_validation_carving(tmp_path):
    root = tmp_path / "folder"
    _write_folder(root)
    cache = tmp_path / "cache"
    ds = data.load_image_folder(str(root), image_size=8, val_fraction=1 / 6, cache_dir=str(cache))
    assert ds.num_classes == 3
    assert ds.image_shape == (8, 8, 3)
    assert len(ds.splits["train"]) == 15 and len(ds.splits["validation"]) == 3
    # Labels follow the class folders: mean brightness grows with the class index.
    train = ds.splits["train"]
    means = [train.images[train.labels == c].mean() for c in range(3)]
    assert means[0] < means[1] < means[2]
    assert len(list(cache.glob("*.npz"))) == 1
    again = data.load_image_folder(
        str(root), image_size=8, val_fraction=1 / 6, cache_dir=str(cache)
    )
    np.testing.assert_array_equal(again.splits["train"].images, train.images)
    assert "from the cache" in again.source and "decoded from the image files" in ds.source
    with pytest.raises(data.DataError, match=r"images of different sizes: .* is 10x12 while"):
        data.load_image_folder(str(root), image_size=None, cache_dir=str(tmp_path / "c2"))
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_image_folder(str(tmp_path / "missing"))


def test_image_folder_cache_follows_the_files(tmp_path):
    root, cache = tmp_path / "folder", str(tmp_path / "cache")
    _write_folder(root)
    load = lambda: data.load_image_folder(
        str(root), image_size=8, val_fraction=0.0, cache_dir=cache
    )
    first = load()
    assert first.num_classes == 3 and first.class_names == ("cat", "dog", "eel")
    # Merge class eel into dog: same number of files, other classes. The cache must not answer.
    for f in (root / "train" / "eel").iterdir():
        f.rename(root / "train" / "dog" / f"eel_{f.name}")
    (root / "train" / "eel").rmdir()
    merged = load()
    assert merged.num_classes == 2 and "decoded from the image files" in merged.source
    assert int((merged.splits["train"].labels == 1).sum()) == 12
    assert "from the cache" in load().source
    # Turned off: nothing read from or written to a cache.
    off = data.load_image_folder(str(root), image_size=8, val_fraction=0.0, cache_dir="")
    assert "cache" not in off.source


def test_image_folder_layout_errors_name_the_problem(tmp_path):
    nocache = dict(image_size=8, cache_dir="")
    root = tmp_path / "a"
    _write_folder(root)
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden: ignored, not a class
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"junk")
    assert data.load_image_folder(str(root), **nocache).num_classes == 3
    # ROOT/<class>/ without the split level.
    with pytest.raises(
        data.DataError, match=r"cat holds images directly, so .*train looks like a split"
    ):
        data.load_image_folder(str(root / "train"), **nocache)
    # An empty class folder is refused by name.
    (root / "train" / "fox").mkdir()
    with pytest.raises(data.DataError, match=r"class folder .*fox holds no images"):
        data.load_image_folder(str(root), **nocache)
    (root / "train" / "fox").rmdir()
    # A file that is not an image: named, or skipped with a warning and counted.
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "train" / "dog" / "empty.png").write_bytes(b"")
    with pytest.raises(data.DataError, match=r"cannot decode .*dog/broken\.jpg \(and 1 more\)"):
        data.load_image_folder(str(root), **nocache)
    with pytest.warns(UserWarning, match="skipped 2 image"):
        ds = data.load_image_folder(str(root), skip_bad=True, val_fraction=0.0, **nocache)
    assert len(ds.splits["train"]) == 18 and "2 skipped" in ds.source
    # A single class cannot train a classifier.
    single = tmp_path / "b"
    (single / "train" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(single / "train" / "cat" / "0.png")
    with pytest.raises(data.DataError, match="needs at least two classes"):
        data.load_image_folder(str(single), **nocache)


def test_jpeg_decoding_gives_pillows_pixels(tmp_path):
    """open_image hands plain JPEGs to libjpeg-turbo through simplejpeg; the pixels must be
    those Pillow's own decoder gives, for every layout a JPEG folder holds."""
    rng = np.random.default_rng(0)
    smooth = lambda h, w, c: np.clip(
        np.cumsum(rng.integers(-9, 10, (h, w, c)), axis=1) + 128, 0, 255
    ).astype(np.uint8)
    cases = {
        "420.jpg": (Image.fromarray(smooth(17, 23, 3)), {}),  # odd size, 4:2:0
        "444.jpg": (Image.fromarray(smooth(32, 32, 3)), {"subsampling": 0, "quality": 95}),
        "422.jpg": (Image.fromarray(smooth(31, 40, 3)), {"subsampling": 1}),
        "progressive.jpg": (Image.fromarray(smooth(48, 40, 3)), {"progressive": True}),
        "grey.jpg": (Image.fromarray(smooth(20, 30, 1)[..., 0]), {}),
        "cmyk.jpg": (Image.fromarray(smooth(16, 16, 3)).convert("CMYK"), {}),  # Pillow's
    }
    for name, (im, options) in cases.items():
        im.save(tmp_path / name, **options)
        for channels, mode in ((3, "RGB"), (1, "L")):
            with Image.open(tmp_path / name) as reference:
                want = np.asarray(reference.convert(mode))
            got = np.asarray(data.folders.open_image(str(tmp_path / name), channels))
            np.testing.assert_array_equal(got, want, err_msg=f"{name} as {mode}")
    # A truncated JPEG is refused as Pillow refuses it, not decoded in part.
    whole = (tmp_path / "444.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(OSError, match="truncated"):
        data.folders.open_image(str(tmp_path / "cut.jpg"))


def _luma(rgb):
    """ITU-R 601-2 luma in Pillow's fixed point: what convert("L") computes."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def test_every_accepted_image_mode_reads_as_numpy_says(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    unit = rng.random((5, 7)).astype(np.float32)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    index = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    p_image = Image.fromarray(index, "L").convert("P")
    p_image.putpalette(palette.ravel().tolist())
    cases = {  # file: (image, the RGB pixels it means)
        "rgb.png": (Image.fromarray(rgb), rgb),
        "rgba.png": (Image.fromarray(np.dstack([rgb, index])), rgb),  # alpha dropped
        "grey.png": (Image.fromarray(index), np.repeat(index[..., None], 3, -1)),
        "bilevel.png": (
            Image.fromarray(index > 127),
            np.repeat((index > 127)[..., None] * 255, 3, -1),
        ),
        "palette.png": (p_image, palette[index]),
        "grey16.png": (Image.fromarray(grey16), np.rint(grey16 / 257.0)),
        "grey16.tif": (Image.fromarray(grey16), np.rint(grey16 / 257.0)),
        "int32.tif": (Image.fromarray(grey16.astype(np.int32)), np.rint(grey16 / 257.0)),
        "float.tif": (Image.fromarray(unit), np.rint(unit.astype(np.float64) * 255.0)),
    }
    for name, (image, means) in cases.items():
        image.save(tmp_path / name)
        means = np.asarray(means, np.float64)
        if means.ndim == 2:
            means = np.repeat(means[..., None], 3, -1)
        means = means.astype(np.uint8)
        got = np.asarray(data.folders.open_image(str(tmp_path / name), 3))
        np.testing.assert_array_equal(got, means, err_msg=name)
        grey = np.asarray(data.folders.open_image(str(tmp_path / name), 1))
        np.testing.assert_array_equal(grey, _luma(means), err_msg=f"{name} as grey")
    # A float image outside [0, 1] has no known range: refused, naming its mode and values.
    Image.fromarray(unit * 40 - 3).save(tmp_path / "wide.tif")
    root = tmp_path / "folder"
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        Image.fromarray(rgb).save(root / "train" / c / "0.png")
    os.replace(tmp_path / "wide.tif", root / "train" / "a" / "1.tif")
    with pytest.raises(data.DataError, match=r"cannot decode .*1\.tif: mode F with values in \[-"):
        data.load_image_folder(str(root), cache_dir="")


def test_dangling_links_and_an_empty_train_split_are_named_not_tracebacks(tmp_path):
    root = tmp_path / "folder"
    _write_folder(root)
    os.symlink(tmp_path / "gone.jpg", root / "train" / "cat" / "link.jpg")
    (root / "train" / ".hidden").write_bytes(b"x")
    with pytest.raises(data.DataError, match=r"cat/link\.jpg is a link to a file that does not"):
        data.load_image_folder(str(root), image_size=8, cache_dir=str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match=r"skipped 1 link\(s\) to files that do not exist"):
        ds = data.load_image_folder(
            str(root), image_size=8, cache_dir=str(tmp_path / "cache"), skip_bad=True
        )
    assert len(ds.splits["train"]) + len(ds.splits["validation"]) == 18
    assert "1 skipped" in ds.source
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "test" / "cat").mkdir(parents=True)
    with pytest.raises(data.DataError, match=r"empty/train has 0 class folder\(s\)"):
        data.load_image_folder(str(empty), cache_dir="")


def test_image_folder_test_split_alone_in_the_run_class_order(tmp_path):
    root = tmp_path / "folder"
    _write_folder(root)
    only = tmp_path / "only_test"
    (only / "test").mkdir(parents=True)
    for name in ("dog", "eel"):  # two of the three classes, as a small test set may have
        (root / "train" / name).rename(only / "test" / name)
    ds = data.load_image_folder(
        str(only), image_size=8, splits=["test"], classes=("cat", "dog", "eel"), cache_dir=""
    )
    assert list(ds.splits) == ["test"] and ds.num_classes == 3
    assert sorted(set(ds.splits["test"].labels.tolist())) == [1, 2]  # dog, eel in run order
    with pytest.raises(data.DataError, match=r"class folders \['dog', 'eel'\] that are not among"):
        data.load_image_folder(str(only), splits=["test"], classes=("cat",), cache_dir="")


def test_zca_whitening_gives_identity_covariance():
    rng = np.random.default_rng(1)
    mixing = rng.standard_normal((20, 20))
    x = rng.standard_normal((5000, 20)) @ mixing
    mean, w = data.fit_zca(x, eps=1e-6)
    white = (x - mean) @ w
    np.testing.assert_allclose(np.cov(white, rowvar=False, bias=True), np.eye(20), atol=1e-3)
    # ZCA is the symmetric whitening: W = Wᵀ, closest to the identity of all whitenings.
    np.testing.assert_allclose(w, w.T, atol=1e-8)


def test_gcn_zca_preprocessing_on_digits():
    ds = data.load_digits(image_size=8)
    white, norm = data.preprocess(ds, "gcn_zca")
    x = white.splits["train"].images.reshape(len(white.splits["train"]), -1).astype(np.float64)
    assert white.splits["train"].images.dtype == np.float32 and norm.scale == 1.0
    eig = np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True))
    # Each direction's variance becomes λ / (λ + ε): ~1 where the data varies, shrunk towards 0
    # for near-constant directions (blank corner pixels, GCN's zero-sum constraint); never > 1.
    assert eig.max() <= 1 + 1e-5
    assert np.sum(np.abs(eig - 1) < 0.05) >= 30
    assert eig.min() < 1e-3


def test_standardize_statistics():
    ds = data.load_digits(image_size=8)
    _, norm = data.preprocess(ds, "standardize")
    x = np.asarray(data.normalize(jnp.asarray(ds.splits["train"].images), norm))
    assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-3


def test_batch_indices_visit_every_example_once_per_epoch():
    key = jax.random.key(0)
    seen = np.concatenate(
        [np.asarray(data.batch_indices(key, jnp.int32(s), 50, 10)) for s in range(5)]
    )
    assert sorted(seen) == list(range(50))
    next_epoch = np.asarray(data.batch_indices(key, jnp.int32(5), 50, 10))
    assert not np.array_equal(next_epoch, seen[:10])


def test_augment_crops_and_flips():
    img = np.zeros((64, 6, 6, 1), np.float32)
    img[:, 2, 3] = 1.0
    out = np.asarray(data.augment(jax.random.key(1), jnp.asarray(img), crop_padding=2, flip=True))
    assert out.shape == img.shape
    positions = {tuple(np.argwhere(o[..., 0] == 1.0)[0]) for o in out if o.max() == 1.0}
    assert len(positions) > 5  # shifted around
    assert all(abs(r - 2) <= 2 for r, _ in positions)  # within the padding
    flipped = np.asarray(
        data.augment(jax.random.key(2), jnp.asarray(img), crop_padding=0, flip=True)
    )
    cols = {int(np.argwhere(o[..., 0] == 1.0)[0][1]) for o in flipped}
    assert cols == {3, 2}  # original column 3 or mirrored 6 - 1 - 3 = 2
