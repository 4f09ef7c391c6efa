"""``dataset=image_folder``: image files in class folders, streamed from the host (ImageNet-size data).

The folder holds ``train/<class>/*`` and ``val/<class>/*`` (ImageNet's usual layout; ``val`` is the
reported test split). Nothing is loaded up front: :func:`scan` lists the files, and grain pipelines
decode, augment and batch them on the host while the device trains:

* training: Inception-style random resized crop (area 8-100%, aspect 3/4-4/3, torchvision's ten tries
  then a center crop) to ``image_size``, random horizontal flip;
* evaluation: resize the shorter side to ``resize`` (default ``image_size / 0.875``, 256 for 224),
  center crop ``image_size``.

Pixels become ``(pixel / 255 - mean) / std`` float32 with ImageNet's channel statistics. Each example's
randomness comes from grain's per-record generator seeded by the epoch's seed, so an epoch's crops and
order do not depend on how many threads decode it.
"""

from __future__ import annotations

import math
import pathlib
from typing import NamedTuple

import numpy as np

from dst.data.errors import DataError
from dst.data.errors import DataNotFoundError

NAME = "image_folder"
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


class ImageFolder(NamedTuple):
    """The files of an image folder and how to turn them into model inputs (no pixels held)."""

    root: pathlib.Path
    classes: tuple[str, ...]
    train_files: tuple[str, ...]
    train_y: np.ndarray
    test_files: tuple[str, ...]
    test_y: np.ndarray
    image_size: int
    resize: int
    mean: np.ndarray
    std: np.ndarray
    name: str = NAME

    @property
    def source(self) -> str:
        return str(self.root)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def val_y(self) -> np.ndarray:        # `val/` is the test split; there is no held-out split
        return self.test_y[:0]

    @property
    def example_shape(self) -> tuple[int, ...]:
        return (self.image_size, self.image_size, 3)

    @property
    def pad_value(self) -> np.ndarray:
        return ((0.0 - self.mean) / self.std).astype(np.float32)


def _class_files(folder: pathlib.Path, classes=None):
    if not folder.is_dir():
        raise DataNotFoundError(f"dataset.data_dir must hold train/<class>/ and val/<class>/ folders; "
                                f"{folder} is missing.")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    classes = found if classes is None else classes
    stray = sorted(set(found) - set(classes))
    if stray:
        raise DataError(f"dataset.data_dir: {folder} has class folders that train/ lacks: {', '.join(stray[:5])}.")
    files, labels = [], []
    for label, name in enumerate(classes):
        if not (folder / name).is_dir():
            continue
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() in EXTENSIONS:
                files.append(str(path))
                labels.append(label)
    if not files:
        raise DataError(f"dataset.data_dir: {folder} has no image files ({', '.join(EXTENSIONS)}) in class "
                        f"folders.")
    return classes, tuple(files), np.asarray(labels, np.int32)


def locate(data_dir) -> pathlib.Path:
    """The image folder ``data_dir`` names, or one-sentence :class:`DataNotFoundError`."""
    if not data_dir:
        raise DataNotFoundError("dataset.data_dir must name the image folder (with train/<class>/ and "
                                "val/<class>/ inside) for dataset.name=image_folder; it is not set.")
    root = pathlib.Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"dataset.data_dir={root} is not a folder; it must hold train/<class>/ and "
                                f"val/<class>/ image folders.")
    return root


def scan(root, image_size: int = 224, resize: int | None = None) -> ImageFolder:
    """List ``root/train/<class>/*`` and ``root/val/<class>/*`` (classes sorted by name, as torchvision's
    ``ImageFolder``), and decode one image, so that a folder of unreadable files fails here."""
    root = locate(root)
    if image_size < 8:
        raise DataError(f"dataset.image_size must be at least 8; got {image_size}.")
    resize = resize or int(round(image_size / 0.875))
    if resize < image_size:
        raise DataError(f"dataset.resize must be at least dataset.image_size={image_size}; got {resize}.")
    classes, train_files, train_y = _class_files(root / "train")
    _, test_files, test_y = _class_files(root / "val", classes)
    data = ImageFolder(root, tuple(classes), train_files, train_y, test_files, test_y, image_size, resize,
                       np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32))
    read_image(train_files[0])
    return data


def read_image(path: str):
    """The image at ``path`` as RGB (PIL), or one-sentence :class:`DataError`."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as err:   # PIL raises several kinds (UnidentifiedImageError, OSError, SyntaxError)
        raise DataError(f"dataset.data_dir: cannot read image {path}: {err}.") from None


def crop_box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    """Inception-style random crop ``(left, top, right, bottom)``: torchvision's RandomResizedCrop rule."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    # Fallback: the whole image cut to the nearest allowed aspect ratio, centered.
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def center_box(width: int, height: int, resize: int, size: int) -> tuple[tuple[int, int], tuple]:
    """``((new_w, new_h), box)``: the shorter side resized to ``resize``, then a centered ``size`` crop."""
    scale = resize / min(width, height)
    new_w, new_h = max(size, int(round(width * scale))), max(size, int(round(height * scale)))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return (new_w, new_h), (left, top, left + size, top + size)


def _normalize(img, data: ImageFolder) -> np.ndarray:
    x = np.asarray(img, np.float32) * np.float32(1 / 255)
    return (x - data.mean) / data.std


def train_example(data: ImageFolder, index: int, rng: np.random.Generator):
    """``(image, label)`` of training example ``index``: random resized crop, random flip, normalised."""
    from PIL import Image

    img = read_image(data.train_files[index])
    box = crop_box(rng, *img.size)
    img = img.resize((data.image_size, data.image_size), Image.BILINEAR, box=box)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return _normalize(img, data), data.train_y[index]


def eval_example(data: ImageFolder, index: int):
    """``(image, label)`` of validation example ``index``: resize, center crop, normalised."""
    from PIL import Image

    img = read_image(data.test_files[index])
    size, box = center_box(*img.size, data.resize, data.image_size)
    img = img.resize(size, Image.BILINEAR).crop(box)
    return _normalize(img, data), data.test_y[index]


def train_chunks(data: ImageFolder, seed: int, batch_size: int, steps: int, chunk: int, threads: int = 4,
                 prefetch: int = 2, shard: tuple[int, int] = (0, 1)):
    """An iterator of ``(images[k, b, H, W, 3], labels[k, b])`` chunks covering ``steps`` batches of one
    epoch (``k = chunk`` except in a shorter last chunk), in an order and with crops fixed by ``seed``.
    ``threads`` decode in parallel; ``prefetch`` chunks are made ahead of the consumer.

    ``shard = (i, n)`` (multi-host: ``(jax.process_index(), jax.process_count())``) yields only host
    ``i``'s ``b = batch_size / n`` consecutive rows of every global batch, so each host decodes its own
    part; the ``n`` hosts' parts side by side are exactly the single-host chunk (same images, same crops).
    """
    import grain

    n = len(data.train_files)
    index, count = shard
    if steps * batch_size > n:
        raise ValueError(f"{steps} batches of {batch_size} need more than the {n} training images.")
    if batch_size % count or not 0 <= index < count:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count and count dividing the batch "
                         f"size {batch_size}; got {shard}.")
    local = batch_size // count
    # Crops are drawn per position of the global epoch order, so they do not depend on how it is split.
    # The map dataset is lazy: a host decodes only the positions it reads.
    epoch = (grain.MapDataset.range(n).shuffle(seed=seed)
             .slice(slice(0, steps * batch_size))
             .random_map(lambda i, rng: train_example(data, int(i), rng), seed=seed))
    mine = grain.MapDataset.range(steps * local).map(
        lambda j: epoch[(j // local) * batch_size + index * local + j % local])
    # Threads decode single examples (the records of the map dataset); batching comes after, so one chunk
    # is decoded by all threads rather than one.
    ds = (mine.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * local))
          .batch(local, drop_remainder=True)
          .batch(chunk))
    return iter(grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch))


def eval_batches(data: ImageFolder, batch_size: int, threads: int = 4, shard: tuple[int, int] = (0, 1)):
    """An iterator of ``(images[B, H, W, 3], labels[B])`` over the validation images, in order (the last
    batch may be smaller).

    ``shard = (i, n)`` with ``n > 1`` (several processes, as :func:`train_chunks`) yields host ``i``'s
    ``b = batch_size / n`` rows of every batch instead, as ``(images[b, ...], labels[b], valid[b])``:
    rows past the last image are zeros with ``valid`` False, so every host yields the same number of
    batches of the same shape, and each decodes only its own images."""
    import grain

    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * batch_size)
    n = len(data.test_files)
    index, count = shard
    if count == 1:
        return iter(grain.MapDataset.range(n).map(lambda i: eval_example(data, int(i)))
                    .to_iter_dataset(options).batch(batch_size))
    if batch_size % count or not 0 <= index < count:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count and count dividing the batch "
                         f"size {batch_size}; got {shard}.")
    local = batch_size // count
    blank = (np.zeros(data.example_shape, np.float32), np.int32(0), False)

    def example(j):
        batch, row = divmod(int(j), local)
        i = batch * batch_size + index * local + row
        if i >= n:
            return blank
        x, y = eval_example(data, i)
        return x, np.int32(y), True

    return iter(grain.MapDataset.range(-(-n // batch_size) * local).map(example).to_iter_dataset(options)
                .batch(local))
