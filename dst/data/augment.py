"""On-device augmentation: pure JAX, jit- and vmap-able, for use inside the scanned epoch.

``random_crop_flip`` is the CIFAR recipe (pad 4, random 32x32 crop, horizontal flip with probability 1/2)
on NHWC batches (NHW is taken as one channel). Each example draws its own crop offset and flip from a key
split off ``key``, so the result depends only on ``key`` and the batch. The padding is the normalised
black pixel (``Dataset.pad_value``) when ``pad_value`` is given, else zeros.

    augment = make_augment("crop_flip", padding=4, pad_value=data.pad_value)   # None for "none"
    x = augment(key, x)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from dst.data.errors import DataError

AUGMENTATIONS = ("none", "crop_flip")
Augment = Callable[[jax.Array, jax.Array], jax.Array]


def crop_flip_params(key: jax.Array, batch_size: int, padding: int = 4) -> tuple[jax.Array, jax.Array]:
    """Per-example crop offsets ``(B, 2)`` (row, column) in ``[0, 2 * padding]`` and flips ``(B,)`` bool."""

    def one(k):
        k_offset, k_flip = jax.random.split(k)
        return jax.random.randint(k_offset, (2,), 0, 2 * padding + 1), jax.random.bernoulli(k_flip)

    return jax.vmap(one)(jax.random.split(key, batch_size))


def pad_images(images: jax.Array, padding: int, pad_value=None) -> jax.Array:
    """``(B, H + 2p, W + 2p, C)``: each side padded with ``pad_value`` (per channel) or zeros."""
    b, h, w, c = images.shape
    if pad_value is None:
        return jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    fill = jnp.broadcast_to(jnp.asarray(pad_value, images.dtype).reshape(-1), (c,))
    canvas = jnp.broadcast_to(fill, (b, h + 2 * padding, w + 2 * padding, c))
    return jax.lax.dynamic_update_slice(canvas, images, (0, padding, padding, 0))


def crop_flip(images: jax.Array, offsets: jax.Array, flips: jax.Array, padding: int = 4,
              pad_value=None) -> jax.Array:
    """Apply given crop offsets and flips (see :func:`crop_flip_params`) to an NHWC batch."""
    b, h, w, c = images.shape
    padded = pad_images(images, padding, pad_value)
    crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
    out = jax.vmap(crop)(padded, offsets)
    return jnp.where(flips[:, None, None, None], out[:, :, ::-1, :], out)


def random_crop_flip(key: jax.Array, images: jax.Array, padding: int = 4, pad_value=None) -> jax.Array:
    """Random crop of the original size from the padded image, then a horizontal flip with probability 1/2.

    ``images``: ``(B, H, W, C)`` or ``(B, H, W)``; shape and dtype are kept.
    """
    squeeze = images.ndim == 3
    if squeeze:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"random_crop_flip takes NHWC or NHW images; got shape {images.shape}.")
    offsets, flips = crop_flip_params(key, images.shape[0], padding)
    out = crop_flip(images, offsets, flips, padding, pad_value)
    return out[..., 0] if squeeze else out


def make_augment(name: str, **options) -> Augment | None:
    """``augment(key, x) -> x`` for ``name`` in :data:`AUGMENTATIONS`, or None for ``"none"``.

    ``crop_flip`` options: ``padding`` (default 4), ``pad_value`` (per-channel, e.g. ``Dataset.pad_value``).
    """
    allowed = {"none": (), "crop_flip": ("padding", "pad_value")}
    if name not in allowed:
        raise DataError(f"dataset.augment must be one of {', '.join(AUGMENTATIONS)}; got {name!r}.")
    unknown = sorted(set(options) - set(allowed[name]))
    if unknown:
        takes = ", ".join(allowed[name]) or "no options"
        raise DataError(f"augment {name!r} takes {takes}; got {', '.join(unknown)}.")
    if name == "none":
        return None
    padding = int(options.get("padding", 4))
    if padding < 0:
        raise DataError(f"augment padding must be >= 0; got {padding}.")
    pad_value = options.get("pad_value")
    pad_value = None if pad_value is None else jnp.asarray(pad_value, jnp.float32)

    def augment(key: jax.Array, x: jax.Array) -> jax.Array:
        return random_crop_flip(key, x, padding, pad_value)

    return augment
