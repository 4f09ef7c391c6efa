"""Image folders in the layout dataset=image_folder reads, written by the tests."""

import numpy as np
from PIL import Image

CLASSES = ("ant", "bee", "cow")


def write_folder(root, per_class=(12, 4), size=(24, 40), seed=0, fmt="png"):
    """``root/train/<class>/*`` and ``root/val/<class>/*`` random RGB images of random sizes in ``size``."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val"), per_class):
        for c in CLASSES:
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = (int(v) for v in rng.integers(*size, 2))
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.{fmt}")
    return root
