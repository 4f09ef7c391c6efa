"""Streaming input against the on-device path, on the same small data.

A folder of ``--images`` random 32x32 PNGs in 10 classes is written once; both paths train the same
model (an MLP 3072-300-100-10, RigL at 90% ERK, batch 128) for one epoch:

* on-device: the decoded images as one array on the device, an epoch = one jitted ``lax.scan``
  (``dst.train_epoch_fn``), augmentation off;
* streaming: ``dataset=image_folder``'s pipeline, grain threads decoding PNGs and cropping on the host
  (``dst.data.image_folder.train_chunks``), chunks of ``--chunk`` steps into ``dst.train.stream.StreamEpoch``.

It also times the host pipeline alone (decode + crop + batch, no training), which bounds streaming's
throughput on this machine. Rounds are interleaved; medians reported.

Run: ``.venv/bin/python benchmarks/streaming.py [--images 4096] [--rounds 5] [--chunk 16] [--threads 2]``
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

import dst
from dst.data import image_folder
from dst.models import MLP
from dst.train.stream import StreamEpoch

BATCH = 128


def write_images(root: pathlib.Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", 10)):
        for i in range(n):
            folder = root / split / f"c{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        write_images(root, args.images)
        data = image_folder.scan(root, image_size=32, resize=32)
        steps = len(data.train_files) // BATCH
        x_all = np.stack([np.asarray(image_folder.read_image(f), np.float32) / 255 for f in data.train_files])
        x_dev, y_dev = jnp.asarray(x_all), jnp.asarray(data.train_y)

        model = MLP(hidden=(300, 100), num_classes=10)
        tx = optax.sgd(0.05, momentum=0.9)
        algo = dst.algorithms.make("rigl", update_every=100, end_step=10**6, drop_fraction=0.3)
        step = dst.make_train_step(dst.flax_apply(model), tx, algo)
        params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
        masks = dst.init_masks(jax.random.key(1), params, dst.layer_densities(params, 0.9, "erk"))
        state = dst.create_train_state(jax.random.key(2), params, masks, tx, algo)

        on_device = dst.train_epoch_fn(step, BATCH)
        on_device = on_device.lower(state, x_dev, y_dev, jax.random.key(3)).compile()
        streamed = StreamEpoch(step)
        streamed.compile(state, (args.chunk, BATCH, 32, 32, 3))
        if steps % args.chunk:
            streamed.compile(state, (steps % args.chunk, BATCH, 32, 32, 3))

        def run_on_device(r):
            t = time.perf_counter()
            jax.block_until_ready(on_device(state, x_dev, y_dev, jax.random.key(r)))
            return time.perf_counter() - t

        def run_streamed(r):
            t = time.perf_counter()
            chunks = image_folder.train_chunks(data, r, BATCH, steps, args.chunk, args.threads)
            jax.block_until_ready(streamed(state, chunks))
            return time.perf_counter() - t

        def run_pipeline(r):
            t = time.perf_counter()
            for _ in image_folder.train_chunks(data, r, BATCH, steps, args.chunk, args.threads):
                pass
            return time.perf_counter() - t

        run_on_device(0), run_streamed(0), run_pipeline(0)      # warm caches and thread pools
        times = {"on-device": [], "streaming": [], "host pipeline alone": []}
        for r in range(1, args.rounds + 1):
            times["on-device"].append(run_on_device(r))
            times["streaming"].append(run_streamed(r))
            times["host pipeline alone"].append(run_pipeline(r))

    print(f"machine: {platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s), "
          f"jax {jax.__version__}; {len(data.train_files)} images of 32x32, {steps} steps of {BATCH}, "
          f"chunks of {args.chunk}, {args.threads} decode threads, {args.rounds} rounds")
    base = statistics.median(times["on-device"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:>20}: {med:7.3f} s/epoch  {steps * BATCH / med:9.0f} images/s  "
              f"{med / base:6.2f}x on-device time")


if __name__ == "__main__":
    main()
