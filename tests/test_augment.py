"""On-device crop-and-flip against a numpy reference that applies the same offsets and flips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dst.data import DataError
from dst.data import make_augment
from dst.data import random_crop_flip
from dst.data.augment import crop_flip_params


def reference(images, offsets, flips, padding, pad_value=None):
    """Plain numpy: pad every side with pad_value (per channel) or zeros, take the window, maybe mirror it."""
    b, h, w, c = images.shape
    fill = np.zeros(c, images.dtype) if pad_value is None else np.asarray(pad_value, images.dtype)
    padded = np.empty((b, h + 2 * padding, w + 2 * padding, c), images.dtype)
    padded[:] = fill
    padded[:, padding:padding + h, padding:padding + w] = images
    out = np.stack([padded[i, r:r + h, s:s + w] for i, (r, s) in enumerate(offsets)])
    return np.where(np.asarray(flips)[:, None, None, None], out[:, :, ::-1], out)


crop_flip = jax.jit(random_crop_flip, static_argnums=2)


def _images(b=64, h=8, w=8, c=3, seed=0):
    return np.random.default_rng(seed).normal(size=(b, h, w, c)).astype(np.float32)


@pytest.mark.parametrize("padding, pad_value", [(4, None), (2, [-1.9, -2.0, -1.7]), (0, None)])
def test_equals_the_numpy_reference_with_the_same_offsets_and_flips(padding, pad_value):
    images, key = _images(), jax.random.key(3)
    out = crop_flip(key, images, padding, pad_value)
    offsets, flips = crop_flip_params(key, len(images), padding)
    assert out.shape == images.shape and out.dtype == images.dtype
    np.testing.assert_array_equal(np.asarray(out), reference(images, np.asarray(offsets), flips, padding, pad_value))


def test_offsets_cover_the_range_and_flips_are_half():
    offsets, flips = crop_flip_params(jax.random.key(0), 4000, padding=4)
    offsets, flips = np.asarray(offsets), np.asarray(flips)
    assert offsets.min() == 0 and offsets.max() == 8
    for axis in range(2):
        counts = np.bincount(offsets[:, axis], minlength=9)
        assert counts.min() > 4000 / 9 * 0.75                          # every offset 0..8 occurs, roughly evenly
    assert abs(flips.mean() - 0.5) < 0.03
    assert abs(np.corrcoef(offsets[:, 0], offsets[:, 1])[0, 1]) < 0.05    # rows and columns drawn independently


def test_keys_decide_the_result():
    images = _images(16)
    a = crop_flip(jax.random.key(1), images)
    b = crop_flip(jax.random.key(1), images)
    c = crop_flip(jax.random.key(2), images)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # per-example keys: an example's result does not depend on the other examples' contents
    same = crop_flip(jax.random.key(1), np.concatenate([images[:8], -images[8:]]))
    np.testing.assert_array_equal(same[:8], a[:8])


def test_black_padding_and_one_channel_images():
    images = np.ones((1, 4, 4, 3), np.float32)
    pad_value = np.array([-1.0, -2.0, -3.0], np.float32)
    out = np.asarray(reference(images, [(0, 0)], [False], 2, pad_value))
    np.testing.assert_array_equal(out[0, 0, 0], pad_value)
    gray = _images(c=1)[..., 0]                                          # NHW, as the IDX loaders return
    out = random_crop_flip(jax.random.key(5), gray, 2)
    offsets, flips = crop_flip_params(jax.random.key(5), len(gray), 2)
    assert out.shape == gray.shape
    np.testing.assert_array_equal(out, reference(gray[..., None], np.asarray(offsets), flips, 2)[..., 0])


def test_make_augment_works_under_jit_vmap_and_scan():
    assert make_augment("none") is None
    augment = make_augment("crop_flip", padding=4, pad_value=[0.5, 0.5, 0.5])
    images = _images(8, 12, 12, 3)
    keys = jax.random.split(jax.random.key(0), 3)
    direct = jnp.stack([jax.jit(augment)(k, images) for k in keys])
    vmapped = jax.jit(jax.vmap(augment, in_axes=(0, None)))(keys, images)       # seeds as replicas
    np.testing.assert_array_equal(vmapped, direct)

    def body(carry, key):
        return carry, augment(key, images).sum()

    _, sums = jax.lax.scan(body, 0, keys)
    np.testing.assert_allclose(sums, direct.sum(axis=(1, 2, 3, 4)), rtol=1e-5)
    offsets, flips = crop_flip_params(keys[0], 8, 4)
    expected = reference(images, np.asarray(offsets), flips, 4, [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(direct[0], expected)


def test_make_augment_refuses_unknown_names_and_options():
    with pytest.raises(DataError, match="dataset.augment must be one of none, crop_flip; got 'mixup'"):
        make_augment("mixup")
    with pytest.raises(DataError, match="augment 'crop_flip' takes padding, pad_value; got flip_p"):
        make_augment("crop_flip", flip_p=0.3)
    with pytest.raises(DataError, match="augment 'none' takes no options; got padding"):
        make_augment("none", padding=4)
    with pytest.raises(DataError, match="padding must be >= 0"):
        make_augment("crop_flip", padding=-1)
