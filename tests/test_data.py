"""Loaders on tiny files written here in each dataset's real on-disk format (no network)."""

import os
import pickle
import re
import struct
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from bnprivacy.config import Config
from bnprivacy.data import DatasetUnavailable, flip_crop, load_dataset


def write_idx(path, array):
    """An idx file as MNIST distributes it: magic (dtype code 0x08 = uint8, ndim), dims, data."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist_style(root, folder, n_train=12, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_style_loader_reads_idx_files(isolated_store, name, folder):
    write_mnist_style(isolated_store / "data", folder)
    data = load_dataset(Config(dataset=name), download=False)
    assert data.x_train.shape == (12, 1, 28, 28) and data.x_test.shape == (6, 1, 28, 28)
    assert data.y_train.tolist() == [i % 10 for i in range(12)]
    assert data.num_classes == 10 and not data.natural_images
    assert abs(data.x_train.mean().item()) < 1e-5  # normalised with the training split's stats


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_missing_mnist_offline_says_which_files_to_put_where(isolated_store, name):
    with pytest.raises(DatasetUnavailable) as error:
        load_dataset(Config(dataset=name), download=False)
    assert "train-images-idx3-ubyte.gz" in str(error.value)
    assert str(isolated_store / "data") in str(error.value)


def write_cifar10(root, n_per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "labels": list(rng.integers(0, 10, n_per_batch))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return folder


def test_cifar10_loader_reads_pickled_batches(isolated_store):
    folder = write_cifar10(isolated_store / "data")
    data = load_dataset(Config(dataset="cifar10"), download=False)
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    assert data.classes[3] == "c3" and data.natural_images
    # Pixel layout: the row-major 3072 bytes are (channel, row, column).
    first = pickle.loads((folder / "data_batch_1").read_bytes())
    raw = torch.tensor(first["data"][0].reshape(3, 32, 32), dtype=torch.float32) / 255
    restored = data.x_train[0] * data.std.view(3, 1, 1) + data.mean.view(3, 1, 1)
    assert torch.allclose(restored, raw, atol=1e-5)
    assert data.y_train[:4].tolist() == [int(v) for v in first["labels"]]


class _RunsCode:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_crafted_cifar_batch_is_refused_and_runs_nothing(isolated_store):
    folder = write_cifar10(isolated_store / "data")
    witness = isolated_store / "ran"
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": _RunsCode(witness), "labels": [0]}))
    with pytest.raises(ValueError, match=r"data_batch_1 is not a CIFAR batch file \(global posix.system is not allowed"):
        load_dataset(Config(dataset="cifar10"), download=False)
    assert not witness.exists()


def test_cifar100_loader_reads_fine_labels(isolated_store):
    rng = np.random.default_rng(1)
    folder = isolated_store / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", 8), ("test", 3)):
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "fine_labels": list(range(n)), "coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)]}))
    data = load_dataset(Config(dataset="cifar100"), download=False)
    assert data.x_train.shape == (8, 3, 32, 32) and data.num_classes == 100
    assert data.y_test.tolist() == [0, 1, 2]


def test_missing_cifar_offline_names_archive_and_folder(isolated_store):
    with pytest.raises(DatasetUnavailable, match="cifar-10-python.tar.gz.*cifar-10-batches-py"):
        load_dataset(Config(dataset="cifar10"), download=False)


def test_digits_is_embedded_and_normalised():
    data = load_dataset(Config(dataset="digits"))
    assert data.x_train.shape == (1297, 1, 8, 8) and data.x_test.shape == (500, 1, 8, 8)
    assert data.num_classes == 10
    assert abs(data.x_train.mean().item()) < 1e-5 and abs(data.x_train.std().item() - 1) < 1e-3
    assert torch.equal(load_dataset(Config(dataset="digits")).y_train, data.y_train)


def test_train_size_subsamples_and_rejects_too_large():
    assert len(load_dataset(Config(train_size=100)).y_train) == 100
    with pytest.raises(ValueError, match="train_size=5000.*1297"):
        load_dataset(Config(train_size=5000))


def write_imagefolder(root, classes=("cat", "dog"), per_class=3, size=(10, 10), mode="RGB", suffix=".png"):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i}{suffix}")
    return root


def test_imagefolder_loads_and_caches(isolated_store):
    root = write_imagefolder(isolated_store / "images")
    cfg = Config(dataset=f"imagefolder:{root}")
    data = load_dataset(cfg)
    assert data.x_train.shape == (6, 3, 10, 10) and data.classes == ["cat", "dog"]
    assert data.y_train.tolist() == [0, 0, 0, 1, 1, 1] and data.natural_images
    assert list((isolated_store / "data" / "cache").glob("imagefolder-*.pt"))
    assert torch.equal(load_dataset(cfg).x_train, data.x_train)  # from the cache


def test_changing_an_image_under_the_same_path_changes_every_result_key(isolated_store):
    from bnprivacy import imagefolder
    from bnprivacy.runs.spec import RunSpec, run_folder

    root = write_imagefolder(isolated_store / "images")
    cfg = Config(dataset=f"imagefolder:{root}", width=4)
    before_key, before_run = cfg.key(), run_folder(RunSpec(cfg, 2))
    before = load_dataset(cfg).x_train.clone()
    image = root / "train" / "cat" / "0.png"
    Image.fromarray(np.full((10, 10, 3), 7, dtype=np.uint8), "RGB").save(image)  # same name, same count
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 1_000_000_000))
    after = load_dataset(cfg).x_train
    assert not torch.equal(before, after)
    assert cfg.key() != before_key and run_folder(RunSpec(cfg, 2)) != before_run
    imagefolder._FINGERPRINTS.clear()  # a new process lists the folder itself and agrees
    assert cfg.key() == Config(dataset=f"imagefolder:{root}", width=4).key() != before_key


def test_imagefolder_greyscale_stays_one_channel(isolated_store):
    root = write_imagefolder(isolated_store / "grey", mode="L")
    assert load_dataset(Config(dataset=f"imagefolder:{root}")).input_shape == (1, 10, 10)


def test_imagefolder_needs_two_classes(isolated_store):
    root = write_imagefolder(isolated_store / "one", classes=("only",))
    with pytest.raises(ValueError, match="at least two"):
        load_dataset(Config(dataset=f"imagefolder:{root}"))


def test_imagefolder_needs_a_test_split(isolated_store):
    root = write_imagefolder(isolated_store / "img")
    for path in sorted((root / "test").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "test").rmdir()
    with pytest.raises(ValueError, match="no test/ folder"):
        load_dataset(Config(dataset=f"imagefolder:{root}"))


def test_imagefolder_mixed_sizes_need_image_size(isolated_store):
    root = write_imagefolder(isolated_store / "mixed")
    Image.new("RGB", (7, 5)).save(root / "train" / "cat" / "odd.png")
    with pytest.raises(ValueError, match="image_size"):
        load_dataset(Config(dataset=f"imagefolder:{root}"))
    data = load_dataset(Config(dataset=f"imagefolder:{root}", image_size=8))
    assert data.input_shape == (3, 8, 8) and len(data.y_train) == 7


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_an_image_that_does_not_decode_is_named(isolated_store, damage):
    root = write_imagefolder(isolated_store / "broken", size=(64, 64))
    bad = root / "test" / "dog" / "1.png"
    bad.write_bytes(b"not an image" if damage == "garbage" else bad.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"image '{bad}' cannot be decoded.*repair or delete it"):
        load_dataset(Config(dataset=f"imagefolder:{root}"))


def test_a_folder_named_like_an_image_is_not_an_image(isolated_store):
    root = write_imagefolder(isolated_store / "folders")
    (root / "train" / "cat" / "x.png").mkdir()
    assert len(load_dataset(Config(dataset=f"imagefolder:{root}")).y_train) == 6


def test_mixed_colour_modes_take_the_majority_over_both_splits_and_say_so(isolated_store):
    root = write_imagefolder(isolated_store / "modes", mode="L")
    Image.new("RGB", (10, 10), (200, 10, 10)).save(root / "test" / "dog" / "colour.png")
    with pytest.warns(UserWarning, match="12 greyscale and 1 colour images: converting all of them to greyscale"):
        data = load_dataset(Config(dataset=f"imagefolder:{root}"))
    assert data.input_shape == (1, 10, 10) and len(data.y_test) == 7


@pytest.mark.parametrize("dataset", ["imagefolder:", "imagefolder:  "])
def test_an_imagefolder_without_a_folder_is_explained(dataset):
    with pytest.raises(ValueError, match="names no folder; pass the folder of the images as 'imagefolder:ROOT'"):
        Config(dataset=dataset)


def test_flip_crop_is_seeded_and_crops_the_padded_image():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    first = flip_crop(x, torch.Generator().manual_seed(0))
    again = flip_crop(x, torch.Generator().manual_seed(0))
    assert torch.equal(first, again) and first.shape == x.shape
    padded = torch.nn.functional.pad(torch.cat([x, x.flip(3)]), (4, 4, 4, 4), mode="reflect")
    for i in range(2):
        # Every output is some 8x8 window of the reflect-padded image or of its mirror.
        windows = padded.unfold(2, 8, 1).unfold(3, 8, 1)  # [2N, C, 9, 9, 8, 8]
        candidates = windows[[i, i + 2]].permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 8, 8)
        assert any(torch.equal(first[i], c) for c in candidates)


def test_flip_crop_draws_differ_across_images():
    x = torch.randn(64, 3, 8, 8)
    out = flip_crop(x, torch.Generator().manual_seed(1))
    assert not torch.equal(out, x)
    assert sum(torch.equal(out[i], x[i]) for i in range(64)) < 16


# --- integrity: decode cache checksum, content fingerprint, 16-bit images, names, CIFAR labels ------

def only_cache_file(store):
    (cache,) = (store / "data" / "cache").glob("imagefolder-*.pt")
    return cache


def flip_a_bit_of_the_first_tensor(path):
    """torch.save writes an uncompressed zip and torch.load checks no CRC: flip one bit in the
    middle of the first tensor storage's bytes (the ``data/0`` entry)."""
    with zipfile.ZipFile(path) as archive:
        entry = next(info for info in archive.infolist() if info.filename.endswith("/data/0"))
    blob = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", blob[entry.header_offset + 26:entry.header_offset + 30])
    blob[entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2] ^= 0x04
    path.write_bytes(bytes(blob))


def load_without_warnings(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_dataset(cfg)


def test_a_flipped_bit_in_the_decode_cache_fails_its_checksum_and_is_rebuilt(isolated_store):
    root = write_imagefolder(isolated_store / "images")
    cfg = Config(dataset=f"imagefolder:{root}")
    data = load_dataset(cfg)
    cache = only_cache_file(isolated_store)
    flip_a_bit_of_the_first_tensor(cache)
    with pytest.warns(UserWarning, match=f"cache {re.escape(str(cache))} is damaged .*checksum"):
        again = load_dataset(cfg)
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.x_test, data.x_test)
    assert torch.equal(load_without_warnings(cfg).x_train, data.x_train)  # the rebuilt cache passes


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_an_unreadable_decode_cache_is_rebuilt_with_a_warning_naming_it(isolated_store, damage):
    root = write_imagefolder(isolated_store / "images")
    cfg = Config(dataset=f"imagefolder:{root}")
    data = load_dataset(cfg)
    cache = only_cache_file(isolated_store)
    cache.write_bytes(b"not a cache" if damage == "garbage" else cache.read_bytes()[:300])
    with pytest.warns(UserWarning, match=f"cache {re.escape(str(cache))} is damaged"):
        assert torch.equal(load_dataset(cfg).x_train, data.x_train)
    assert torch.equal(load_without_warnings(cfg).x_train, data.x_train)


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_cache_save_leaves_no_temp_file(isolated_store, monkeypatch, failure):
    root = write_imagefolder(isolated_store / "images")

    def fails(*args):
        raise failure

    monkeypatch.setattr(os, "replace", fails)  # the disk fills up (or a kill comes) as the cache is written
    with pytest.raises(type(failure)):
        load_dataset(Config(dataset=f"imagefolder:{root}"))
    monkeypatch.undo()
    assert list((isolated_store / "data" / "cache").iterdir()) == []


def test_an_image_edited_in_place_with_size_and_times_restored_changes_cache_and_key(isolated_store):
    from bnprivacy import imagefolder

    root = write_imagefolder(isolated_store / "images", suffix=".bmp")  # uncompressed: same size
    cfg = Config(dataset=f"imagefolder:{root}", width=4)
    before_key = cfg.key()
    before = load_dataset(cfg).x_train.clone()
    image = root / "train" / "cat" / "0.bmp"
    old = image.stat()
    Image.fromarray(np.full((10, 10, 3), 7, dtype=np.uint8), "RGB").save(image)
    os.utime(image, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert image.stat().st_size == old.st_size and image.stat().st_mtime_ns == old.st_mtime_ns
    after = load_dataset(cfg)
    assert not torch.equal(before, after.x_train)
    assert torch.allclose(after.denormalise(after.x_train[:1]) * 255, torch.full((1, 3, 10, 10), 7.0), atol=1e-3)
    assert cfg.key() != before_key
    imagefolder._FINGERPRINTS.clear()  # a new process hashes the folder itself and agrees
    assert cfg.key() == Config(dataset=f"imagefolder:{root}", width=4).key() != before_key


RAMP_16 = np.linspace(0, 65535, 256).round().reshape(16, 16)


def write_16_bit_imagefolder(root, suffix, dtype):
    """Two classes of 16-bit greyscale images, each a ramp over the whole 0..65535 range."""
    for split in ("train", "test"):
        for name in ("dark", "light"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(RAMP_16.astype(dtype)).save(folder / f"{i}{suffix}")
    return root


@pytest.mark.parametrize("suffix, dtype, modes", [(".png", np.uint16, ("I;16", "I")), (".tif", np.int32, ("I",))])
def test_16_bit_greyscale_is_scaled_to_8_bits_not_clipped(isolated_store, suffix, dtype, modes):
    from bnprivacy.data import load_imagefolder

    root = write_16_bit_imagefolder(isolated_store / "deep", suffix, dtype)
    with Image.open(root / "train" / "dark" / f"0{suffix}") as image:
        assert image.mode in modes
    x_train, _, x_test, _, _ = load_imagefolder(root)
    assert x_train.shape == (4, 1, 16, 16) and x_test.shape == (4, 1, 16, 16)
    assert x_train.min() == 0 and x_train.max() == 1 and len(x_train.unique()) > 200
    expected = torch.from_numpy(np.rint(RAMP_16 * 255 / 65535)).float()
    assert torch.equal((x_train[0, 0] * 255).round(), expected)


@pytest.mark.parametrize("values, what", [(np.full((10, 10), 0.5, np.float32), "floating-point pixels"),
                                          (np.full((10, 10), 70_000, np.int32), "values 70000..70000, outside")])
def test_float_and_32_bit_images_are_refused_with_what_to_do(isolated_store, values, what):
    root = write_imagefolder(isolated_store / "grey", mode="L")
    bad = root / "train" / "cat" / "deep.tif"
    Image.fromarray(values).save(bad)
    with pytest.raises(ValueError, match=f"image '{re.escape(str(bad))}' has {what}.*convert it to 8 or 16 bits"):
        load_dataset(Config(dataset=f"imagefolder:{root}"))


@pytest.mark.parametrize("where", ["image", "class folder"])
def test_a_name_that_is_not_utf8_is_named_with_what_to_do(isolated_store, where):
    root = write_imagefolder(isolated_store / "names")
    png = (root / "train" / "cat" / "0.png").read_bytes()
    if where == "image":
        bad = os.fsencode(root / "train" / "dog") + b"/img\xff.png"
    else:
        bad = os.fsencode(root / "test") + b"/caf\xe9"
        os.mkdir(bad)
        bad_image = bad + b"/0.png"
    target = bad if where == "image" else bad_image
    handle = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(handle, png)
    os.close(handle)
    message = f"{where} {re.escape(repr(bad))} has a name that is not valid UTF-8; rename it to a UTF-8 name"
    cfg = Config(dataset=f"imagefolder:{root}")
    with pytest.raises(ValueError, match=message):
        load_dataset(cfg)
    with pytest.raises(ValueError, match=message):
        cfg.key()


def test_an_imagefolder_under_a_folder_whose_name_is_not_utf8_loads(isolated_store):
    from bnprivacy.data import load_imagefolder

    parent = os.fsencode(isolated_store) + b"/d\xe9j\xe0"
    os.mkdir(parent)
    root = write_imagefolder(isolated_store / os.fsdecode(parent) / "images")
    x_train, y_train, *_ = load_imagefolder(root)
    assert x_train.shape == (6, 3, 10, 10) and y_train.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(load_imagefolder(root)[0], x_train)  # from the cache


@pytest.mark.parametrize("labels, message", [
    ([0, 99, 1, 2], r"holds label 99 \(1 of 4 labels out of range\) but labels must be in 0\.\.9, the dataset's 10 classes"),
    ([-1, 0, 1, -1], r"holds label -1 \(2 of 4 labels out of range\) but labels must be in 0\.\.9"),
    ([0, 1, 2], r"holds 4 images but 3 labels"),
    ([0, 1, 2, 3, 4], r"holds 4 images but 5 labels"),
    ([0.5, 1.0, 2.0, 3.0], r"holds labels of type float64, not integers 0\.\.9"),
])
def test_cifar_labels_out_of_range_or_miscounted_are_refused_naming_the_batch(isolated_store, labels, message):
    folder = write_cifar10(isolated_store / "data")
    batch = pickle.loads((folder / "data_batch_2").read_bytes())
    batch["labels"] = labels
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match=f"{re.escape(str(folder / 'data_batch_2'))} {message}.*download"):
        load_dataset(Config(dataset="cifar10"), download=False)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b.pop("labels"), r"has no 'labels' entry"),
    (lambda b: b.pop("data"), r"does not hold CIFAR images .*found no data"),
    (lambda b: b.update(data=b["data"].reshape(-1)[:-5]), r"does not hold CIFAR images .*values of type uint8"),
    (lambda b: b.update(data=b["data"].astype(np.float32)), r"does not hold CIFAR images .*of type float32"),
])
def test_a_cifar_batch_without_labels_or_whole_images_is_refused_naming_it(isolated_store, damage, message):
    folder = write_cifar10(isolated_store / "data")
    batch = pickle.loads((folder / "data_batch_3").read_bytes())
    damage(batch)
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match=f"{re.escape(str(folder / 'data_batch_3'))} {message}"):
        load_dataset(Config(dataset="cifar10"), download=False)


def test_cifar100_label_range_comes_from_the_meta_file(isolated_store):
    folder = isolated_store / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, labels in (("train", [0, 99, 5]), ("test", [100, 0, 1])):
        entry = {"data": np.zeros((3, 3072), dtype=np.uint8), "fine_labels": labels, "coarse_labels": [0] * 3}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)]}))
    with pytest.raises(ValueError, match=r"test holds label 100 .*must be in 0\.\.99, the dataset's 100 classes"):
        load_dataset(Config(dataset="cifar100"), download=False)


# --- issue 38: bounds, memory, unreachable class folders, greyscale with alpha ---------------------

@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_a_class_folder_that_cannot_be_reached_is_an_error_naming_it(isolated_store, link):
    # An unmounted disk left a dangling link; the dataset trained on the other classes without a word.
    root = write_imagefolder(isolated_store / "images", classes=("cat", "dog", "eel"))
    for split in ("train", "test"):
        eel = root / split / "eel"
        for path in eel.iterdir():
            path.unlink()
        eel.rmdir()
        eel.symlink_to(isolated_store / "unmounted" / "eel" if link == "dangling" else eel)
    with pytest.raises(ValueError, match=r"class folder '.*train/eel' is a symbolic link whose target cannot be reached"):
        load_dataset(Config(dataset=f"imagefolder:{root}"))


def test_a_class_folder_that_cannot_be_listed_is_an_error_naming_it(isolated_store, monkeypatch):
    from pathlib import Path

    root = write_imagefolder(isolated_store / "images")
    real = Path.iterdir

    def refuse(self):
        if self.name == "dog":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", refuse)  # root reads every folder, so chmod cannot show this
    with pytest.raises(ValueError, match=r"class folder '.*dog' cannot be listed \(Permission denied\)"):
        load_dataset(Config(dataset=f"imagefolder:{root}"))


def test_plain_files_beside_the_class_folders_are_not_classes(isolated_store):
    root = write_imagefolder(isolated_store / "images")
    (root / "train" / "README.txt").write_text("not a class")
    (root / "test" / "README.txt").write_text("not a class")
    assert load_dataset(Config(dataset=f"imagefolder:{root}")).classes == ["cat", "dog"]


def test_greyscale_with_alpha_loads_as_one_channel(isolated_store):
    root = isolated_store / "la"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                grey = Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8), "L")
                image = Image.merge("LA", (grey, Image.new("L", (10, 10), 200)))
                image.save(root / split / name / f"{i}.png")
    data = load_dataset(Config(dataset=f"imagefolder:{root}"))
    assert data.input_shape == (1, 10, 10)


def test_an_image_size_past_its_bound_is_refused_before_any_work():
    with pytest.raises(ValueError, match=r"Config.image_size=4000 is not allowed; allowed values: \[0, 512\]"):
        Config(image_size=4000)
    assert Config(image_size=512).image_size == 512


def test_decoding_that_cannot_fit_in_memory_is_refused_before_any_image_is_read(isolated_store, monkeypatch):
    from bnprivacy import data as data_module

    root = write_imagefolder(isolated_store / "images")
    monkeypatch.setattr(data_module, "available_memory_bytes", lambda: 10 * 2**20)  # a 10 MiB machine
    monkeypatch.setattr(data_module, "_open_image", lambda *a: pytest.fail("an image was decoded"))
    with pytest.raises(ValueError, match=r"decoding 12 images at image_size=512 would take about 45 MiB, "
                                         r"more than the 10 MiB of memory free here; pass a smaller image_size"):
        load_dataset(Config(dataset=f"imagefolder:{root}", image_size=512))


def test_free_memory_is_read_from_this_machine():
    from bnprivacy.data import available_memory_bytes

    assert 0 < available_memory_bytes() < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 1.01


@pytest.mark.parametrize("spec, message", [
    ("noise:²", "positive count in digits 0-9"),
    ("noise:١٢", "positive count in digits 0-9"),
    ("noise:999999999", "more than 50,000 canaries of one kind"),
])
def test_canary_counts_are_ascii_digits_within_a_stated_bound(spec, message):
    with pytest.raises(ValueError, match=rf"Config.canaries='{spec}'.*{message}"):
        Config(canaries=spec)


def test_canary_references_past_their_bound_are_refused_naming_the_parameter():
    with pytest.raises(ValueError, match=r"Config.canary_references=999999999 is not allowed; allowed values: \[0, 50000\]"):
        Config(canary_references=999999999)


def test_canaries_that_cannot_fit_in_memory_are_refused_before_they_are_made(isolated_store, monkeypatch):
    from bnprivacy import data as data_module

    monkeypatch.setattr(data_module, "available_memory_bytes", lambda: 2**20)
    monkeypatch.setattr(data_module, "inject_canaries", lambda *a, **k: pytest.fail("canaries were made"))
    with pytest.raises(ValueError, match=r"Config.canaries='noise:50000' with canary_references=50000 would take"):
        load_dataset(Config(canaries="noise:50000", canary_references=50000))
