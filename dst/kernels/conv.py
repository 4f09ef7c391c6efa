"""Sparse convolutions on the compiled kernels, without im2col.

A convolution kernel ``[kh, kw, c_in, n_out]`` is stored over the matrix view the structures already use
(:mod:`dst.structures`: ``kh·kw·c_in`` inputs per output channel, in memory order): compressed rows over the
output channels, ``values [nnz]``, ``cols [nnz]`` (the matrix-view input ``(i * kw + j) * c_in + c`` of
each weight) and ``rowptr [n_out + 1]``, the CSR layout of a stored dense layer. :func:`csr_conv` runs it on
an NHWC input as ``jax.lax.conv_general_dilated`` would run the dense kernel (``HWIO``, no dilation, no
groups), under one custom VJP:

* the input goes batch-last, ``[c_in, height, width, batch]``, and is padded (SAME, or explicit pads) in one
  compiled pass (so is the output gradient; the output and the input gradient come back by XLA), so
  the loops compute VALID convolutions: each weight is one shifted multiply-add of the batch over an output
  row (a contiguous run of ``width * batch`` floats at stride 1), its output channel's accumulators held in
  registers across the channel's weights;
* ``dx`` walks the weights by input channel (:func:`conv_transpose`, keyed by ``(c, i, j)``; a stored
  layer builds it once per topology), one input channel per thread, each input row written once (at stride 1);
* the value gradient is each weight's dot product of its output channel's gradient with the input it read:
  no dense kernel gradient exists. At stride 1, where the input is differentiated, the two gradients are one
  pass (``dst_conv_backward``, SparseProp's fused backward): each weight's row of the output gradient is read
  once for both.

The loops are compiled per instruction set with the dense-layer kernels (:mod:`dst.kernels`). Without the
kernels (or on an accelerator) the same function scatters the values into a dense kernel and calls XLA's
convolution, with the same results to rounding.

References:
  Nikdan, Pegolotti, Iofinova, Kurtic, Alistarh. "SparseProp: Efficient Sparse Backpropagation for
  Faster Training of Neural Networks", ICML 2023 (batch-last activations; each nonzero one shifted
  multiply-add over the output plane; no im2col).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dst.kernels import _loader
from dst.kernels.ops import Transposed
from dst.kernels.ops import row_ids
from dst.kernels.ops import transpose
from dst.kernels.ops import use_kernels


def conv_transpose(cols: jax.Array, rowptr: jax.Array, kernel_shape: Sequence[int]) -> Transposed:
    """The weights of a stored convolution by input channel and kernel offset: the :class:`Transposed`
    structure keyed by ``(c * kh + i) * kw + j`` (``c_in * kh * kw`` keys), which :func:`csr_conv`'s input
    gradient walks: an input row's weights, kernel row by kernel row, are one contiguous range (jit-able)."""
    kh, kw, c_in, _ = kernel_shape
    cols = jnp.asarray(cols, jnp.int32)
    c, ij = cols % c_in, cols // c_in
    return transpose((c * kh + ij // kw) * kw + ij % kw, jnp.asarray(rowptr, jnp.int32), c_in * kh * kw)


def _pads(spatial: Sequence[int], kernel_shape, strides, padding) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(jax.lax.padtype_to_pads(tuple(spatial), tuple(kernel_shape[:2]), tuple(strides), padding))
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(pads) != 2 or min(min(p) for p in pads) < 0:
        raise ValueError(f"csr_conv padding must be SAME, VALID or two (low, high) pairs of pads >= 0; "
                         f"got {padding!r}.")
    return pads


def csr_conv(x: jax.Array, values: jax.Array, cols: jax.Array, rowptr: jax.Array, kernel_shape: Sequence[int],
             strides: Sequence[int] = (1, 1), padding="SAME", transposed: Transposed | None = None) -> jax.Array:
    """``lax.conv_general_dilated(x, W, strides, padding)`` for ``x [B, H, W, c_in]`` (NHWC) and a stored kernel
    ``W [kh, kw, c_in, n_out]`` (HWIO; see the module doc); ``[B, OH, OW, n_out]``.

    ``padding``: ``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``. Differentiable in ``x`` and
    ``values``. ``transposed`` is :func:`conv_transpose` of the structure, built here when not given."""
    kh, kw, c_in, n_out = (int(d) for d in kernel_shape)
    if x.ndim != 4 or x.shape[-1] != c_in:
        raise ValueError(f"csr_conv takes x [batch, height, width, {c_in}] (NHWC); got shape {x.shape}.")
    strides = tuple(int(s) for s in strides)
    pads = _pads(x.shape[1:3], (kh, kw), strides, padding)
    if not use_kernels():
        return _dense_conv(x, values, cols, rowptr, (kh, kw, c_in, n_out), strides, pads)
    if transposed is None:
        transposed = conv_transpose(cols, rowptr, (kh, kw, c_in, n_out))
    geometry = (kh, kw, strides, pads)
    return _conv_kernel(geometry, values.astype(jnp.float32), jnp.asarray(cols, jnp.int32),
                        jnp.asarray(rowptr, jnp.int32), transposed, x)


def kernel_gradient(x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int], strides: Sequence[int] = (1, 1),
                    padding="SAME") -> jax.Array:
    """The dense kernel gradient ``[kh, kw, c_in, n_out]`` of a convolution (``csr_conv``'s geometry) from its input
    ``x`` and output gradient ``dy`` (NHWC): the value gradient of a structure holding every weight, on the
    kernels. A dynamic algorithm's update of a stored convolution needs it, inside ``lax.cond``, where XLA's CPU
    convolution runs far slower (jax#12868): a WRN-22-2 RigL update on 18 stored convolutions took 81 s by XLA's
    convolution (``dst-train experiment=rigl_wrn22_cifar10 sparsity.backend=auto``, 2026-12-06)."""
    kh, kw, c_in, n_out = (int(d) for d in kernel_shape)
    strides = tuple(int(s) for s in strides)
    pads = _pads(x.shape[1:3], (kh, kw), strides, padding)
    if not use_kernels():
        return jax.vjp(lambda w: jax.lax.conv_general_dilated(x.astype(jnp.float32), w, strides, pads,
                                                              dimension_numbers=("NHWC", "HWIO", "NHWC")),
                       jnp.zeros((kh, kw, c_in, n_out), jnp.float32))[1](dy.astype(jnp.float32))[0]
    _loader.register()
    taps = kh * kw * c_in
    cols = jnp.tile(jnp.arange(taps, dtype=jnp.int32), n_out)
    rowptr = jnp.arange(0, taps * (n_out + 1), taps, dtype=jnp.int32)
    gradient = jax.ffi.ffi_call("dst_conv_dw", jax.ShapeDtypeStruct((taps * n_out,), jnp.float32),
                                vmap_method="sequential")(cols, rowptr, _to_batch_last(dy), _to_batch_last(x, pads),
                                                          **_attrs((kh, kw, strides, pads)))
    return gradient.reshape(n_out, taps).T.reshape(kh, kw, c_in, n_out)


def dense_kernel(values, cols, rowptr, kernel_shape) -> jax.Array:
    """The dense ``[kh, kw, c_in, n_out]`` kernel of a stored convolution (zero off its weights)."""
    kh, kw, c_in, n_out = kernel_shape
    units = row_ids(jnp.asarray(rowptr, jnp.int32), values.shape[0])
    flat = jnp.zeros((kh * kw * c_in, n_out + 1), values.dtype).at[cols, units].add(values)
    return flat[:, :n_out].reshape(kh, kw, c_in, n_out)   # column n_out: padding slots past the last row


def _dense_conv(x, values, cols, rowptr, kernel_shape, strides, pads):
    w = dense_kernel(values, cols, rowptr, kernel_shape)
    return jax.lax.conv_general_dilated(x, w.astype(x.dtype), strides, pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _to_batch_last(x, pads=((0, 0), (0, 0))):
    """``x [B, H, W, C]`` as ``[C, H + pads, W + pads, B]`` with a zero border, in one compiled pass (a WRN-22-2
    activation, 128 x 32 x 32 x 32: 3.2-4.9 ms, where XLA's transpose and pad took 11.5-12.0;
    ``benchmarks/conv_parts_time.py``)."""
    (top, bottom), (left, right) = pads
    batch, height, width, channels = x.shape
    out = jax.ShapeDtypeStruct((channels, top + height + bottom, left + width + right, batch), jnp.float32)
    return jax.ffi.ffi_call("dst_to_batch_last", out, vmap_method="sequential")(
        x.astype(jnp.float32), top=np.int64(top), left=np.int64(left))


def _from_batch_last(y, pads=((0, 0), (0, 0))):
    """``y [C, Hp, Wp, B]`` without its border ``pads``, as ``[B, H, W, C]``, in one compiled pass. XLA's slice and
    transpose took about as long alone (3-7 ms on a WRN-22-2 activation against 3-4,
    ``benchmarks/conv_parts_time.py``), but inside a train step, where XLA fuses them into the ops that read
    the result, the whole WRN-22-2 step with every convolution stored took 2.16 s against 1.24 s with this
    pass (``benchmarks/conv_step_time.py``, 95% uniform)."""
    (top, bottom), (left, right) = pads
    channels, hp, wp, batch = y.shape
    out = jax.ShapeDtypeStruct((batch, hp - top - bottom, wp - left - right, channels), jnp.float32)
    return jax.ffi.ffi_call("dst_from_batch_last", out, vmap_method="sequential")(
        y, top=np.int64(top), left=np.int64(left))


def _attrs(geometry) -> dict:
    kh, kw, (sh, sw), _ = geometry
    return {"kh": np.int64(kh), "kw": np.int64(kw), "sh": np.int64(sh), "sw": np.int64(sw)}


def _forward(geometry, values, cols, rowptr, x):
    kh, kw, (sh, sw), pads = geometry
    _loader.register()
    xp = _to_batch_last(x, pads)
    _, hp, wp, batch = xp.shape
    out = jax.ShapeDtypeStruct((rowptr.shape[0] - 1, (hp - kh) // sh + 1, (wp - kw) // sw + 1, batch), jnp.float32)
    y = jax.ffi.ffi_call("dst_conv", out, vmap_method="sequential")(values, cols, rowptr, xp, **_attrs(geometry))
    return _from_batch_last(y), xp


def _conv_kernel_impl(geometry, values, cols, rowptr, transposed, x):
    return _forward(geometry, values, cols, rowptr, x)[0]


_conv_kernel = jax.custom_vjp(_conv_kernel_impl, nondiff_argnums=(0,))


def _conv_fwd(geometry, values, cols, rowptr, transposed, x):
    values, cols, rowptr, transposed, primal_x = jax.tree.map(
        lambda a: a.value, (values, cols, rowptr, transposed, x),
        is_leaf=lambda a: isinstance(a, jax.custom_derivatives.CustomVJPPrimal))
    y, xp = _forward(geometry, values, cols, rowptr, primal_x)
    return y, (values, cols, rowptr, transposed, xp, () if x.perturbed else None)


# Whether a stride-1 convolution whose input is differentiated takes dst_conv_backward (read when a program is
# traced; for benchmarks).
FUSED_BACKWARD = True


def _conv_bwd(geometry, residuals, dy):
    """The value gradient at the weights; the input gradient where the input is differentiated (the padded
    input's gradient, its border cut off)."""
    values, cols, rowptr, transposed, xp, x_perturbed = residuals
    if isinstance(dy, jax.custom_derivatives.SymbolicZero):
        return None, None, None, None, None
    dyT = _to_batch_last(dy)
    attrs = _attrs(geometry)
    gradient = jax.ShapeDtypeStruct(values.shape, jnp.float32)
    if x_perturbed is not None and geometry[2] == (1, 1) and FUSED_BACKWARD:   # both gradients in one pass
        dxp, dvalues = jax.ffi.ffi_call("dst_conv_backward", (jax.ShapeDtypeStruct(xp.shape, jnp.float32), gradient),
                                        vmap_method="sequential")(values, *transposed, dyT, xp, **attrs)
        return dvalues, None, None, None, _from_batch_last(dxp, geometry[3])
    dvalues = jax.ffi.ffi_call("dst_conv_dw", gradient, vmap_method="sequential")(cols, rowptr, dyT, xp, **attrs)
    if x_perturbed is None:
        return dvalues, None, None, None, None
    dxp = jax.ffi.ffi_call("dst_conv_dx", jax.ShapeDtypeStruct(xp.shape, jnp.float32), vmap_method="sequential")(
        values, *transposed, dyT, **attrs)
    return dvalues, None, None, None, _from_batch_last(dxp, geometry[3])


_conv_kernel.defvjp(_conv_fwd, _conv_bwd, symbolic_zeros=True)
