"""The compiled kernels of the sparse backends, and whether this install has them.

``dst.kernels._cpu`` is a C++ module built by the package's own install (``CMakeLists.txt``, driven by
scikit-build-core) against the XLA FFI headers of the installed jax. Its handlers are registered with
``jax.ffi`` on first use:

* ``dst_spmm``: ``yT = W xT`` over compressed rows (forward);
* ``dst_spmm_t``: ``dxT = W^T dyT`` over the transposed structure (input gradient; the structure comes
  from :func:`transpose`, built once per topology);
* ``dst_sddmm``: ``dW = dyT xT^T`` at the nonzeros only (value gradient);
* ``dst_spmm_t_sddmm``: the last two in one pass over the transposed structure;
* ``dst_backward``: both gradients of a layer whose input is differentiated, by the fused pass or the two
  kernels, whichever pays on the ISA in use for the layer's shape (:func:`fused_backward_pays`); a
  layer fed by data (its input not differentiated) takes ``dst_sddmm`` alone;
* ``dst_compact``: the positions of a mask's true entries (:func:`compact`), which prune-and-regrow
  updates on stored layers take for every block of a grow score;
* ``dst_top_k``: the exact top-k of :func:`dst.selection.top_k_of_keys` in one O(n) pass
  (:func:`top_k_of_keys`), the drop and grow selections of those updates;
* ``dst_merge``: their kept and grown weights merged into CSR order (:func:`merge_slots`);
* ``dst_transpose``: a topology's structure by input (:func:`transpose`), built with every new topology;
* ``dst_slots_by_unit`` and ``dst_gather_by_unit``: a dense mask's entries as slots in CSR order and any
  dense array read at them, front to back (:func:`slots_by_unit`, :func:`gather_by_unit`): storing a layer.
* ``dst_conv``, ``dst_conv_dx`` and ``dst_conv_dw``: a stored convolution (its kernel's matrix view in CSR over
  the output channels), its input gradient and its value gradient, batch-last and without im2col
  (:func:`csr_conv`, :mod:`dst.kernels.conv`); ``dst_conv_backward``: both gradients in one pass (stride 1).

The loops are compiled once per instruction set (AVX-512, AVX2 with FMA, and the compiler's portable
baseline) and the best one the CPU runs is chosen when the module loads: :func:`isa` names it,
:func:`runnable_isas` lists the others, and the environment variable ``DST_KERNELS_ISA`` (or
:func:`use_isa`, for benchmarks) forces a lower one, so the AVX2 path can be measured and tested on an
AVX-512 machine.

The forward products (``dst_spmm``, ``dst_conv``) and the value gradients (``dst_sddmm``, ``dst_conv_dw``) skip the
weights whose input is zero across the whole batch (a dead ReLU unit, a blank pixel of every image, a convolution's
input channel that is zero everywhere): one pass finds such inputs, the structure handed to the loops leaves their
weights out, and their gradients are written as zeros (:func:`skip_zero_inputs` switches it off for benchmarks,
:func:`zero_input_counts` says how many were skipped). The fused backward pass and a batch of one do not skip.

The products themselves, with their custom VJP and the XLA fallback, are in :mod:`dst.kernels.ops`.
"""

from dst.kernels._loader import ISA_VARIABLE
from dst.kernels._loader import available
from dst.kernels._loader import fused_backward_pays
from dst.kernels._loader import isa
from dst.kernels._loader import register
from dst.kernels._loader import require
from dst.kernels._loader import runnable_isas
from dst.kernels._loader import skip_zero_inputs
from dst.kernels._loader import status
from dst.kernels._loader import use_isa
from dst.kernels._loader import zero_input_counts
from dst.kernels.conv import conv_transpose
from dst.kernels.conv import csr_conv
from dst.kernels.conv import kernel_gradient
from dst.kernels.ops import Merged
from dst.kernels.ops import Transposed
from dst.kernels.ops import compact
from dst.kernels.ops import condensed_matmul
from dst.kernels.ops import condensed_matmul_gather
from dst.kernels.ops import csr_matmul
from dst.kernels.ops import csr_matmul_xla
from dst.kernels.ops import gather_by_unit
from dst.kernels.ops import merge_slots
from dst.kernels.ops import row_ids
from dst.kernels.ops import slots_by_unit
from dst.kernels.ops import top_k_of_keys
from dst.kernels.ops import transpose

__all__ = [
    "ISA_VARIABLE",
    "available",
    "compact",
    "condensed_matmul",
    "condensed_matmul_gather",
    "conv_transpose",
    "csr_matmul",
    "csr_matmul_xla",
    "csr_conv",
    "fused_backward_pays",
    "gather_by_unit",
    "isa",
    "kernel_gradient",
    "merge_slots",
    "row_ids",
    "Merged",
    "register",
    "require",
    "runnable_isas",
    "skip_zero_inputs",
    "slots_by_unit",
    "status",
    "top_k_of_keys",
    "transpose",
    "Transposed",
    "use_isa",
    "zero_input_counts",
]
