"""Datasets as normalised tensors on the device, and batched on-device augmentation.

Every dataset becomes a :class:`Dataset`: ``x_train [N, C, H, W]`` float32 normalised with the
training split's per-channel mean and standard deviation, ``y_train [N]`` int64, and the same for
the test split. Sources:

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, shipped with scikit-learn, no
  download), split 1,297 train / 500 test, stratified with a fixed seed.
- ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``: torchvision's downloads into ``data/``.
- ``imagefolder:ROOT``: any class-per-folder image set, ``ROOT/train/<class>/*`` and
  ``ROOT/test/<class>/*``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from .config import IMAGEFOLDER_PREFIX, Config
from .imagefolder import class_folders, image_files, remember_fingerprint
from .runs.disk import env_folder, save_torch
from .canaries import inject_canaries
from .longtail import long_tail_pool

DATA_DIR_ENV = "BNPRIVACY_DATA"
NATURAL_IMAGE_DATASETS = ("cifar10", "cifar100")
DIGITS_TEST_SIZE = 500


class DatasetUnavailable(RuntimeError):
    """A dataset is neither on disk nor downloadable; the message says which files to put where."""


@dataclasses.dataclass
class Dataset:
    """A dataset as tensors: normalised images and integer labels for both splits."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    mean: torch.Tensor
    std: torch.Tensor
    natural_images: bool
    kinds: list[str] | None = None
    x_ref: torch.Tensor | None = None
    y_ref: torch.Tensor | None = None
    ref_kinds: list[str] | None = None
    pool_key: str | None = None  # Config.data_key of the config it was loaded with

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> "Dataset":
        """The same dataset with every tensor moved to ``device``."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
        return Dataset(**moved)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Images back in [0, 1] for display."""
        mean = self.mean.to(x.device).view(1, -1, 1, 1)
        std = self.std.to(x.device).view(1, -1, 1, 1)
        return (x * std + mean).clamp(0, 1)


def data_dir() -> Path:
    """Where downloads and caches live: ``$BNPRIVACY_DATA`` or ``data/`` under the working folder."""
    return env_folder(DATA_DIR_ENV, "data")


def load_dataset(cfg: Config, device: torch.device | str = "cpu", *, download: bool = True) -> Dataset:
    """Load ``cfg.dataset`` as normalised tensors on ``device`` (``cfg.train_size`` honoured; with
    ``cfg.imbalance > 1`` the pool is long-tailed, :func:`longtail.long_tail_pool`, and the test
    split stays balanced, as in the long-tail literature).

    With ``cfg.canaries`` the training split becomes the pool of ``canaries.inject_canaries``:
    ``data.kinds`` flags every training sample (``"typical"`` or its canary kind) and
    ``x_ref``/``y_ref``/``ref_kinds`` hold the never-trained reference candidates. Normalisation
    statistics come from the training split before injection.

    Raises :class:`DatasetUnavailable` with instructions when the files are missing and cannot be
    downloaded, and ``ValueError`` for a malformed image folder.
    """
    raw = _load_raw(cfg, download=download)
    x_train, y_train, x_test, y_test, classes = raw
    if cfg.imbalance > 1:
        x_train, y_train = long_tail_pool(x_train, y_train, len(classes), cfg.imbalance, cfg.train_size, seed=cfg.seed)
    elif cfg.train_size:
        x_train, y_train = _subsample(x_train, y_train, cfg.train_size, seed=cfg.seed)
    mean, std = _channel_stats(x_train)
    natural = cfg.dataset in NATURAL_IMAGE_DATASETS or cfg.dataset.startswith(IMAGEFOLDER_PREFIX)
    extra = {}
    if cfg.canaries:
        _check_canaries_fit(cfg, x_train)
        pool = inject_canaries(x_train, y_train, x_test, y_test, len(classes), cfg.canaries,
                               cfg.canary_references, cfg.canary_seed)
        x_train, y_train = pool.x, pool.y
        extra = dict(kinds=pool.kinds, x_ref=_normalise(pool.x_ref, mean, std), y_ref=pool.y_ref,
                     ref_kinds=pool.ref_kinds)
    data = Dataset(
        name=cfg.dataset,
        x_train=_normalise(x_train, mean, std),
        y_train=y_train,
        x_test=_normalise(x_test, mean, std),
        y_test=y_test,
        classes=classes,
        mean=mean,
        std=std,
        natural_images=natural,
        pool_key=cfg.data_key(),
        **extra,
    )
    return data.to(device)


def available_memory_bytes() -> int:
    """The memory this process can still take: the system's ``MemAvailable``, lowered to what is left
    of the container's limit (cgroup v2 ``memory.max``) where there is one."""
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit.isdigit():
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(free, 0)


def check_fits_in_memory(what: str, needed: int, advice: str) -> None:
    """ValueError, before any of it is allocated, when ``needed`` bytes for ``what`` exceed the free
    memory (:func:`available_memory_bytes`): a one-line reason instead of a ``MemoryError`` or the
    out-of-memory killer on a shared machine."""
    free = available_memory_bytes()
    if needed > free:
        raise ValueError(f"{what} would take about {_bytes(needed)}, more than the {_bytes(free)} "
                         f"of memory free here; {advice}")


def _bytes(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def _check_canaries_fit(cfg: Config, x_train: torch.Tensor) -> None:
    """The pool with its canaries and reference candidates, as floats, must fit in memory."""
    from .config import parse_canaries

    counts = parse_canaries(cfg.canaries)
    images = len(x_train) + sum(counts.values()) + cfg.canary_references * len(counts)
    check_fits_in_memory(f"Config.canaries={cfg.canaries!r} with canary_references={cfg.canary_references}",
                         images * x_train[0].numel() * 4, "use fewer canaries or reference candidates")


def _load_raw(cfg: Config, *, download: bool):
    """Images as float tensors in [0, 1], ``[N, C, H, W]``, labels int64, class names."""
    name = cfg.dataset
    if name == "digits":
        return _load_digits()
    if name in ("mnist", "fashion-mnist"):
        return _load_mnist_style(name, data_dir(), download=download)
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, data_dir(), download=download)
    if name.startswith(IMAGEFOLDER_PREFIX):
        root = Path(name[len(IMAGEFOLDER_PREFIX):]).expanduser()
        return load_imagefolder(root, image_size=cfg.image_size)
    raise ValueError(f"unknown dataset {name!r}")  # Config validation makes this unreachable


def _subsample(x: torch.Tensor, y: torch.Tensor, size: int, *, seed: int):
    if size > len(y):
        raise ValueError(
            f"Config.train_size={size} is larger than the training split ({len(y)} images); "
            "use 0 for the whole split or a smaller number"
        )
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(y), generator=generator)[:size].sort().values
    return x[keep], y[keep]


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return mean, std


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return ((x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).contiguous()


def _uint8_images_to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` or ``[N, H, W, C]`` uint8 -> ``[N, C, H, W]`` float in [0, 1]."""
    tensor = torch.as_tensor(np.asarray(images))
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(-1)
    return tensor.permute(0, 3, 1, 2).float().div(255.0).contiguous()


# --- digits ---------------------------------------------------------------------------------------

def _load_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_SIZE, stratify=labels, random_state=0
    )
    as_x = lambda idx: torch.from_numpy(images[np.sort(idx)]).unsqueeze(1).contiguous()  # noqa: E731
    as_y = lambda idx: torch.from_numpy(labels[np.sort(idx)])  # noqa: E731
    classes = [str(c) for c in range(10)]
    return as_x(idx_train), as_y(idx_train), as_x(idx_test), as_y(idx_test), classes


# --- MNIST and Fashion-MNIST (idx files) -----------------------------------------------------------

def _load_mnist_style(name: str, root: Path, *, download: bool):
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    splits = []
    for train in (True, False):
        try:
            ds = cls(root=str(root), train=train, download=False)
        except RuntimeError:
            if not download:
                raise DatasetUnavailable(_mnist_help(name, cls, root)) from None
            ds = _download_or_explain(lambda: cls(root=str(root), train=train, download=True),
                                      _mnist_help(name, cls, root))
        splits.append((_uint8_images_to_float(ds.data), ds.targets.long().clone()))
    (x_train, y_train), (x_test, y_test) = splits
    return x_train, y_train, x_test, y_test, list(cls.classes)


def _mnist_help(name: str, cls, root: Path) -> str:
    folder = root / cls.__name__ / "raw"
    files = ", ".join(Path(url).name for url, _ in cls.resources)
    mirror = cls.mirrors[0]
    return (
        f"dataset {name!r} is not in {folder} and could not be downloaded (offline?). Download "
        f"{files} from {mirror} (or another mirror) on a connected machine and put them, gzipped "
        f"or not, into {folder}/ ; or set ${DATA_DIR_ENV} to a folder that already holds "
        f"{cls.__name__}/raw/."
    )


# --- CIFAR-10 / CIFAR-100 (pickled batches) -------------------------------------------------------

_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta=("batches.meta", "label_names"),
                    label_key="labels", archive="cifar-10-python.tar.gz"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"],
                     meta=("meta", "fine_label_names"), label_key="fine_labels",
                     archive="cifar-100-python.tar.gz"),
}


def _load_cifar(name: str, root: Path, *, download: bool):
    spec = _CIFAR[name]
    folder = root / spec["folder"]
    needed = spec["train"] + spec["test"] + [spec["meta"][0]]
    if not all((folder / f).is_file() for f in needed):
        if not download:
            raise DatasetUnavailable(_cifar_help(name, root))
        _download_cifar(name, root)
    meta_file, meta_key = spec["meta"]
    classes = list(_unpickle(folder / meta_file)[meta_key])
    x_train, y_train = _read_cifar_batches(folder, spec["train"], spec["label_key"], len(classes))
    x_test, y_test = _read_cifar_batches(folder, spec["test"], spec["label_key"], len(classes))
    return x_train, y_train, x_test, y_test, classes


def _download_cifar(name: str, root: Path) -> None:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    _download_or_explain(lambda: cls(root=str(root), train=True, download=True),
                         _cifar_help(name, root))


def _read_cifar_batches(folder: Path, files: list[str], label_key: str, num_classes: int):
    images, labels = [], []
    for file in files:
        entry = _unpickle(folder / file)
        batch = _cifar_images(folder / file, entry)
        if label_key not in entry:
            raise ValueError(f"{folder / file} has no {label_key!r} entry; the file is damaged: delete it and let "
                             "torchvision download the dataset again, or extract the official archive there")
        labels.append(_checked_cifar_labels(folder / file, entry[label_key], len(batch), num_classes))
        images.append(batch)
    x = torch.from_numpy(np.concatenate(images)).float().div(255.0)
    return x.contiguous(), torch.from_numpy(np.concatenate(labels))


def _cifar_images(path: Path, entry: dict) -> np.ndarray:
    """A batch's images ``[n, 3, 32, 32]`` uint8; a batch without ``data``, or whose pixels are not
    whole 3x32x32 images of bytes, raises ValueError naming the file."""
    try:
        data = np.asarray(entry["data"])
        if data.dtype != np.uint8 or data.size % 3072:
            raise ValueError(f"{data.size} values of type {data.dtype}")
        return data.reshape(-1, 3, 32, 32)
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{path} does not hold CIFAR images (a 'data' array of bytes, 3,072 per image; found "
                         f"{'no data' if isinstance(error, KeyError) else error}); the file is damaged: delete it "
                         "and let torchvision download the dataset again, or extract the official archive there") from None


def _checked_cifar_labels(path: Path, labels, count: int, num_classes: int) -> np.ndarray:
    """A batch's labels as int64, checked here: one integer per image, each in ``0..num_classes-1``.
    A damaged batch would otherwise load and fail much later, inside training, without naming itself."""
    labels = np.asarray(labels)
    redo = ("the file is damaged; delete it and let torchvision download the dataset again, or extract "
            "the official archive there")
    if labels.ndim != 1 or len(labels) != count:
        raise ValueError(f"{path} holds {count} images but {labels.size} labels, one per image expected; "
                         f"{redo}")
    if count and labels.dtype.kind not in "iu":
        raise ValueError(f"{path} holds labels of type {labels.dtype}, not integers 0..{num_classes - 1}; "
                         f"{redo}")
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        raise ValueError(
            f"{path} holds label {labels[outside][0]} ({outside.sum()} of {count} labels out of range) but "
            f"labels must be in 0..{num_classes - 1}, the dataset's {num_classes} classes; {redo}"
        )
    return labels.astype(np.int64)


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, dicts, lists, numbers and strings, and refuses
    every other global: a crafted batch file could otherwise run any code while loading."""

    ALLOWED = {(f"numpy{core}.multiarray", name) for core in (".core", "._core") for name in ("_reconstruct", "scalar")}
    ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """A CIFAR batch file (the distribution's format is Python pickles), loaded with
    :class:`_ArraysOnly`, so nothing in it is executed."""
    try:
        with open(path, "rb") as handle:
            entry = _ArraysOnly(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a CIFAR batch file ({error}); delete it and let torchvision "
                         "download the dataset again, or extract the official archive there") from None
    if not isinstance(entry, dict):
        raise ValueError(f"{path} is not a CIFAR batch file (it holds a {type(entry).__name__}, not a dict)")
    return entry


def _cifar_help(name: str, root: Path) -> str:
    spec = _CIFAR[name]
    url = f"https://www.cs.toronto.edu/~kriz/{spec['archive']}"
    return (
        f"dataset {name!r} is not in {root / spec['folder']} and could not be downloaded "
        f"(offline?). Download {url} on a connected machine and extract it into {root}/ so that "
        f"{root / spec['folder'] / spec['train'][0]} exists; or use a class-per-folder copy "
        "with dataset='imagefolder:ROOT'."
    )


def _download_or_explain(fetch, help_text: str):
    try:
        return fetch()
    except Exception as error:  # network errors come as URLError, OSError, RuntimeError, ...
        raise DatasetUnavailable(f"{help_text} (download error: {error})") from error


# --- imagefolder ----------------------------------------------------------------------------------

def load_imagefolder(root: Path, *, image_size: int = 0):
    """Read ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` into tensors in [0, 1].

    Images are converted to the colour mode most of them have (greyscale or RGB), with a warning
    when they are mixed. ``image_size > 0`` resizes every
    image to a square of that side; otherwise all images must share one size. 16-bit greyscale
    images are scaled to 8 bits. The decoded tensors are cached in ``data/cache/`` keyed by the
    files' names, classes and content (:func:`imagefolder.imagefolder_fingerprint`), with a checksum: a cache
    that fails it is rebuilt, with a warning.
    """
    root = Path(root)
    train_dir, test_dir = root / "train", root / "test"
    for split in (train_dir, test_dir):
        if not split.is_dir():
            raise ValueError(
                f"imagefolder dataset {str(root)!r} has no {split.name}/ folder; expected "
                f"{root}/train/<class>/<image> and {root}/test/<class>/<image>"
            )
    classes = class_folders(train_dir)
    test_classes = class_folders(test_dir)
    if test_classes != classes:
        raise ValueError(
            f"imagefolder dataset {str(root)!r}: train/ has classes {classes} but test/ has "
            f"{test_classes}; both splits need the same class folders"
        )
    train_files = image_files(train_dir, classes)
    test_files = image_files(test_dir, classes)
    cache = _imagefolder_cache_path(root, remember_fingerprint(root, train_files + test_files), image_size)
    tensors = _load_cache(cache)
    if tensors is None:
        # Both splits in one pass: one colour mode and one size for all of them.
        x, y = _decode_images(train_files + test_files, image_size)
        n = len(train_files)
        tensors = {"x_train": x[:n], "y_train": y[:n], "x_test": x[n:], "y_test": y[n:]}
        save_torch(cache, {**tensors, "sha256": _tensors_digest(tensors)})
    return tensors["x_train"], tensors["y_train"], tensors["x_test"], tensors["y_test"], classes








# 16-bit greyscale is "L" by then (_to_8_bits); greyscale with alpha ("LA", premultiplied "La") is
# greyscale too: its alpha is dropped as RGBA's is.
GREYSCALE_MODES = ("L", "1", "LA", "La")


def _decode_images(files: list[tuple[Path, int]], image_size: int):
    """Decode every image into one uint8-backed float tensor, in the colour mode most images have
    (greyscale stays one channel); raises ValueError naming any file that does not decode."""
    from tqdm.auto import tqdm

    _check_decode_fits(files, image_size)
    opened = [_to_8_bits(_open_image(path), path)
              for path, _ in tqdm(files, desc="reading images", leave=False, disable=len(files) < 5000)]
    mode = _majority_mode([image.mode for image in opened])
    arrays, shape = [], None
    for (path, _), image in zip(files, opened):
        image = image.convert(mode)
        if image_size:
            image = image.resize((image_size, image_size), _bilinear())
        array = np.asarray(image, dtype=np.uint8)
        if shape is None:
            shape = array.shape
        elif array.shape != shape:
            raise ValueError(
                f"image {str(path)!r} is {array.shape[:2]} but earlier images are {shape[:2]}; "
                "images of different sizes need Config.image_size (e.g. -p image_size 32)"
            )
        arrays.append(array)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return _uint8_images_to_float(np.stack(arrays)), labels


def _check_decode_fits(files: list[tuple[Path, int]], image_size: int) -> None:
    """Decoding holds every image at its own size, then as uint8 and float32 arrays of the target size
    (the first image's, without ``image_size``): refuse, before reading, what cannot fit in memory."""
    from PIL import Image

    if not files:
        return
    try:
        with Image.open(files[0][0]) as first:  # the header only: no pixel is decoded
            own = first.size[0] * first.size[1] * max(len(first.getbands()), 3)
    except (OSError, ValueError, Image.DecompressionBombError):
        return  # decoding names the file
    target = 3 * image_size * image_size if image_size else own
    check_fits_in_memory(f"decoding {len(files):,} images" + (f" at image_size={image_size}" if image_size else ""),
                         len(files) * (own + 5 * target),
                         "pass a smaller image_size (e.g. -p image_size 32), or fewer images")


def _bilinear():
    from PIL import Image

    return Image.BILINEAR


def _open_image(path: Path):
    """The decoded image at ``path``; a file Pillow cannot read (corrupt, truncated, not an image)
    raises ValueError naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"image {str(path)!r} cannot be decoded ({error}); repair or delete it") from None


def _to_8_bits(image, path: Path):
    """16-bit greyscale (Pillow modes "I;16*" and "I") scaled to 8-bit "L", ``value * 255 / 65535``
    rounded: ``convert("L")`` would clip it to 0 and 255. Other images are returned as they are;
    32-bit values and floating-point images have no agreed range and are refused, named."""
    from PIL import Image

    if image.mode == "F":
        raise ValueError(f"image {str(path)!r} has floating-point pixels (Pillow mode F); "
                         "convert it to 8 or 16 bits")
    if not (image.mode == "I" or image.mode.startswith("I;16")):
        return image
    values = np.asarray(image)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"image {str(path)!r} has values {values.min()}..{values.max()}, outside the "
                         "16-bit range 0..65535; convert it to 8 or 16 bits")
    return Image.fromarray(np.rint(values.astype(np.float64) * (255 / 65535)).astype(np.uint8), "L")


def _majority_mode(modes: list[str]) -> str:
    """"L" when most images are greyscale, else "RGB"; a mix is converted, with a warning."""
    grey = sum(mode in GREYSCALE_MODES for mode in modes)
    colour = len(modes) - grey
    chosen = "L" if grey > colour else "RGB"
    if grey and colour:
        warnings.warn(f"{grey} greyscale and {colour} colour images: converting all of them to "
                      f"{'greyscale' if chosen == 'L' else 'RGB'}, the mode most of them have", stacklevel=3)
    return chosen










def _imagefolder_cache_path(root: Path, fingerprint: str, image_size: int) -> Path:
    """The decode cache of one folder's content (its fingerprint) at one image size."""
    # v3: checksummed, 16-bit images scaled. fsencode: the root's name need not be UTF-8.
    key = b"v3 %s %s size=%d" % (os.fsencode(root.resolve()), fingerprint.encode(), image_size)
    return data_dir() / "cache" / f"imagefolder-{hashlib.sha256(key).hexdigest()[:16]}.pt"


def _load_cache(cache: Path) -> dict[str, torch.Tensor] | None:
    """The decoded tensors in ``cache``; None when there is none, or when it is unreadable or fails
    its checksum (torn by a kill, a flipped bit): then it is deleted, with a warning, to be rebuilt."""
    if not cache.is_file():
        return None
    try:
        blob = torch.load(cache, weights_only=True)
        tensors = {key: blob[key] for key in ("x_train", "y_train", "x_test", "y_test")}
        if blob.get("sha256") != _tensors_digest(tensors):
            raise ValueError("its SHA-256 checksum does not match its content")
        return tensors
    except Exception as error:  # never trusted: any damage means decoding the images again
        warnings.warn(f"image decode cache {cache} is damaged ({error}); deleting it and decoding the "
                      "images again", stacklevel=3)
        cache.unlink(missing_ok=True)
        return None


def _tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256(b"decode cache v3\n")
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}\n".encode())
        digest.update(tensor.numpy())
    return digest.hexdigest()


def _save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:  # a full disk or a kill midway must not leave a half-written file behind
        tmp.unlink(missing_ok=True)
        raise


# --- augmentation ---------------------------------------------------------------------------------

def augmentation_enabled(cfg: Config, data: Dataset) -> bool:
    """Whether training draws flip-and-crop augmentations: ``auto`` means natural images only."""
    if cfg.augment == "auto":
        return data.natural_images
    return cfg.augment == "flip-crop"


def draw_flip_crop(n: int, generator: torch.Generator, height: int, width: int,
                   padding: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image augmentation draws on ``generator``'s device: flip coins and crop offsets."""
    pad = crop_padding(height, width, padding)
    device = generator.device
    flips = torch.rand(n, generator=generator, device=device) < 0.5
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=device)
    return flips, dy, dx


def crop_padding(height: int, width: int, padding: int = 4) -> int:
    """Reflection padding used for crops; reflection needs it smaller than the image."""
    return max(0, min(padding, height - 1, width - 1))


def apply_flip_crop(x: torch.Tensor, flips: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                    padding: int = 4) -> torch.Tensor:
    """Flip the images where ``flips`` is set, then crop each at its offset from the padded image."""
    n, channels, h, w = x.shape
    pad = crop_padding(h, w, padding)
    x = torch.where(flips.view(n, 1, 1, 1), x.flip(3), x)
    if pad == 0:
        return x
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(channels, device=x.device).view(1, -1, 1, 1)
    return padded[batch, channel, rows, cols]


def flip_crop(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random horizontal flip and pad-and-crop of a batch, drawn per image, on ``x``'s device.

    Padding is by reflection; each image gets its own crop offset in ``[0, 2*padding]`` and its
    own coin for the flip, all from ``generator`` (which must live on ``x``'s device).
    """
    draws = draw_flip_crop(len(x), generator, x.shape[2], x.shape[3], padding)
    return apply_flip_crop(x, *draws, padding=padding)
