"""Sparse convolutions on the compiled kernels (dst.kernels.conv) equal XLA's dense convolution.

Every expectation is ``jax.lax.conv_general_dilated`` on the dense kernel (zeros off the stored weights):
the output, the input gradient, and the kernel gradient read at the stored weights. Shapes cover strides 1
and 2, SAME / VALID / explicit padding, 1x1, 3x3 and 5x5 kernels, uneven heights and widths, batches that
are not a multiple of a vector, empty output channels and input channels that feed nothing; on every
instruction set this CPU runs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dst import kernels
from dst.kernels import conv as kconv
from dst.kernels import ops

ISAS = kernels.runnable_isas() if kernels.available() else ()   # as the `isa` fixture (conftest.py)


def random_conv(rng, kernel_shape, density, empty_out=(), empty_in=()):
    """A random kernel [kh, kw, c_in, n_out] with zeros off a random pattern, and its CSR over the output
    channels of the matrix view (values, cols, rowptr)."""
    kh, kw, c_in, n_out = kernel_shape
    mask = rng.random(kernel_shape) < density
    mask[..., list(empty_out)] = False
    mask[:, :, list(empty_in), :] = False
    w = np.where(mask, rng.normal(size=kernel_shape), 0.0).astype(np.float32)
    view = w.reshape(kh * kw * c_in, n_out)
    units, cols = np.nonzero(mask.reshape(-1, n_out).T)      # by output channel, then input: CSR order
    rowptr = np.concatenate([[0], np.cumsum(mask.reshape(-1, n_out).sum(0))]).astype(np.int32)
    return w, view[cols, units], cols.astype(np.int32), rowptr, (cols, units)


def dense_conv(x, w, strides, padding):
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


CASES = [   # batch, height, width, kernel shape, strides, padding
    (3, 8, 8, (3, 3, 4, 5), (1, 1), "SAME"),
    (2, 9, 7, (3, 3, 3, 6), (2, 2), "SAME"),
    (2, 9, 7, (3, 3, 3, 6), (2, 2), "VALID"),
    (5, 6, 6, (1, 1, 8, 4), (1, 1), "VALID"),
    (4, 7, 7, (1, 1, 8, 4), (2, 2), "SAME"),         # a ResNet's downsampling shortcut
    (17, 10, 11, (5, 5, 3, 7), (1, 1), "SAME"),
    (16, 8, 8, (3, 3, 16, 32), (1, 1), ((1, 1), (1, 1))),
    (33, 6, 5, (3, 2, 4, 3), (1, 2), ((2, 0), (0, 1))),   # uneven kernel, strides and pads
]


@pytest.mark.parametrize("batch,height,width,kernel_shape,strides,padding", CASES)
def test_a_stored_convolution_and_its_gradients_equal_the_dense_convolution(batch, height, width, kernel_shape,
                                                                              strides, padding, isa):
    rng = np.random.default_rng(0)
    w, values, cols, rowptr, (at_in, at_out) = random_conv(rng, kernel_shape, 0.3, empty_out=[0], empty_in=[1])
    x = rng.normal(size=(batch, height, width, kernel_shape[2])).astype(np.float32)
    sparse = lambda x, v: kconv.csr_conv(x, v, cols, rowptr, kernel_shape, strides, padding)
    dense = lambda x, w: dense_conv(x, w, strides, padding)
    y, expected = sparse(x, values), dense(x, w)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    dy = rng.normal(size=expected.shape).astype(np.float32)
    dx, dvalues = jax.vjp(sparse, x, values)[1](dy)
    want_dx, want_dw = jax.vjp(dense, x, w)[1](dy)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dvalues, np.asarray(want_dw).reshape(-1, kernel_shape[3])[at_in, at_out],
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("batch,height,width,kernel_shape,strides,padding", CASES[1:6])
def test_the_dense_kernel_gradient_on_the_kernels_equals_xlas(batch, height, width, kernel_shape, strides, padding,
                                                              isa):
    """What a stored convolution's update ranks (``kernel_gradient``: every weight's gradient, on the kernels)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(batch, height, width, kernel_shape[2])).astype(np.float32)
    dense = lambda w: dense_conv(x, w, strides, padding)
    dy = rng.normal(size=dense(np.zeros(kernel_shape, np.float32)).shape).astype(np.float32)
    expected = jax.vjp(dense, np.zeros(kernel_shape, np.float32))[1](dy)[0]
    got = jax.jit(lambda x, dy: kconv.kernel_gradient(x, dy, kernel_shape, strides, padding))(x, dy)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_the_input_gradient_is_computed_only_where_the_input_is_differentiated(isa):
    """A convolution fed by data (its input not differentiated) takes the value gradient alone."""
    rng = np.random.default_rng(1)
    kernel_shape = (3, 3, 4, 6)
    w, values, cols, rowptr, (at_in, at_out) = random_conv(rng, kernel_shape, 0.4)
    x = rng.normal(size=(8, 6, 6, 4)).astype(np.float32)
    grad = jax.jit(jax.grad(lambda v: jnp.sum(kconv.csr_conv(x, v, cols, rowptr, kernel_shape) ** 2)))
    text = grad.lower(jnp.asarray(values)).as_text()
    assert "dst_conv_dw" in text and "dst_conv_dx" not in text
    want = jax.grad(lambda w: jnp.sum(dense_conv(x, w, (1, 1), "SAME") ** 2))(w)
    np.testing.assert_allclose(grad(jnp.asarray(values)), np.asarray(want).reshape(-1, 6)[at_in, at_out],
                               rtol=1e-5, atol=1e-4)


def test_without_the_kernels_the_same_function_runs_xla_with_the_same_results(monkeypatch):
    rng = np.random.default_rng(2)
    kernel_shape = (3, 3, 5, 4)
    w, values, cols, rowptr, _ = random_conv(rng, kernel_shape, 0.3)
    x = rng.normal(size=(6, 7, 7, 5)).astype(np.float32)
    f = lambda x, v: jnp.sum(kconv.csr_conv(x, v, cols, rowptr, kernel_shape, (2, 2), "SAME") ** 2)
    with_kernels = jax.grad(f, argnums=(0, 1))(x, values) if ISAS else None
    monkeypatch.setattr(ops, "use_kernels", lambda: False)
    monkeypatch.setattr(kconv, "use_kernels", lambda: False)
    jaxpr = str(jax.make_jaxpr(f)(x, values))
    assert "dst_conv" not in jaxpr and "conv_general_dilated" in jaxpr
    fallback = jax.grad(f, argnums=(0, 1))(x, values)
    if with_kernels is not None:
        for a, b in zip(with_kernels, fallback):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_the_transposed_structure_lists_each_input_channel_and_offset_in_output_order():
    """``conv_transpose`` keys each weight by (c * kh + i) * kw + j, within a key in output-channel order."""
    rng = np.random.default_rng(3)
    kh, kw, c_in, n_out = kernel_shape = (3, 2, 4, 5)
    _, _, cols, rowptr, (at_in, at_out) = random_conv(rng, kernel_shape, 0.5)
    t = kconv.conv_transpose(cols, rowptr, kernel_shape)
    i, j, c = at_in // (kw * c_in), at_in // c_in % kw, at_in % c_in
    keys = (c * kh + i) * kw + j
    order = np.lexsort((at_out, keys))
    np.testing.assert_array_equal(t.slots, order)
    np.testing.assert_array_equal(t.rows, at_out[order])
    per_key = np.bincount(keys, minlength=c_in * kw * kh)
    np.testing.assert_array_equal(t.rowptr, np.concatenate([[0], np.cumsum(per_key)]))


@pytest.mark.skipif(not ISAS, reason="the compiled kernels are not built")
@pytest.mark.parametrize("batch,channels", [(1, 3), (4, 4), (7, 5), (16, 32), (33, 6)])
def test_the_layout_passes_are_a_transpose_with_a_zero_border_and_its_inverse(batch, channels):
    """``[B, H, W, C]`` to ``[C, top + H + bottom, left + W + right, B]`` with zeros around it, and back with the
    border cut off, whatever the batch and channels (4 x 4 register blocks and the scalar edges)."""
    kernels.register()
    rng = np.random.default_rng(batch)
    x = rng.normal(size=(batch, 5, 6, channels)).astype(np.float32)
    pads = ((2, 1), (0, 3))
    expected = np.pad(x.transpose(3, 1, 2, 0), ((0, 0), *pads, (0, 0)))
    bl = jax.jit(kconv._to_batch_last, static_argnums=1)(x, pads)
    np.testing.assert_array_equal(bl, expected)
    y = rng.normal(size=expected.shape).astype(np.float32)
    back = jax.jit(kconv._from_batch_last, static_argnums=1)(y, pads)
    np.testing.assert_array_equal(back, y[:, 2:-1, :-3].transpose(3, 1, 2, 0))


@pytest.mark.skipif(not ISAS, reason="the compiled kernels are not built")
def test_a_malformed_structure_is_an_error_not_a_wrong_answer():
    with pytest.raises(ValueError, match="padding must be SAME, VALID or two"):
        kconv.csr_conv(jnp.ones((1, 5, 5, 3)), jnp.ones(1), np.zeros(1, np.int32), np.array([0, 1], np.int32),
                       (3, 3, 3, 1), padding=((-1, 0), (0, 0)))
    x = jnp.ones((2, 5, 5, 3))
    cols = np.array([0, 27], np.int32)                 # 3 x 3 x 3 = 27 inputs: 27 is outside the kernel
    with pytest.raises(Exception, match=r"cols must lie in \[0, kh \* kw \* c_in\)"):
        jax.block_until_ready(kconv.csr_conv(x, jnp.ones(2), cols, np.array([0, 1, 2], np.int32), (3, 3, 3, 2)))
