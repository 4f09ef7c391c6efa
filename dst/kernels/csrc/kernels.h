// The loops of dst's sparse products, compiled once per instruction set (kernels_isa.cc is built several
// times with different flags: see CMakeLists.txt) and chosen at load time by the FFI handlers in
// sparse_matmul.cc. Only plain pointers cross this boundary: the ISA-specific objects include no header
// with inline functions, so no code compiled for a higher ISA can be picked by the linker for a lower one.
//
// Activations are batch-last ([rows, batch], row-major). A layer's weights are compressed rows over its
// output units (values, cols, rowptr); the transposed structure lists, for each input unit, its nonzeros'
// output units (trows) and stored slots (tslots), between tptr[i] and tptr[i + 1].

#pragma once

#include <cstdint>

namespace dst {

// A convolution's shape for the conv loops: batch-last, VALID over an input the caller has padded, x [c_in,
// hp, wp, batch] and y [n_out, oh, ow, batch]. The weights are compressed rows over the output channels of
// the kernel's matrix view: a weight at col = (i * kw + j) * c_in + c joins input channel c at kernel
// offset (i, j), the memory order of a [kh, kw, c_in, n_out] kernel.
struct ConvShape {
  int64_t c_in, hp, wp, batch, kh, kw, sh, sw, n_out, oh, ow;
};

struct KernelTable {
  const char* isa;   // "avx512", "avx2" or "generic"
  // yT[o, :] = sum over row o's nonzeros j of values[j] * xT[cols[j], :] (any column order; fastest with
  // each row's cols sorted, as stored layers keep them; cursor: n_out ints of scratch)
  void (*spmm)(const float* values, const int32_t* cols, const int32_t* rowptr, const float* xT, float* yT,
               int64_t n_in, int64_t n_out, int64_t batch, int32_t* cursor);
  // the same for a batch of one, each index checked as it is read: false if one lies outside [0, n_in)
  bool (*spmv)(const float* values, const int32_t* cols, const int32_t* rowptr, const float* x, float* y,
               int64_t n_in, int64_t n_out);
  // dxT[i, :] = sum over input i's nonzeros t of values[tslots[t]] * dyT[trows[t], :]
  void (*spmm_t)(const float* values, const int32_t* tptr, const int32_t* trows, const int32_t* tslots,
                 const float* dyT, float* dxT, int64_t n_in, int64_t batch);
  // dvalues[j] = <dyT[o, :], xT[cols[j], :]> for each nonzero j of row o
  void (*sddmm)(const int32_t* cols, const int32_t* rowptr, const float* dyT, const float* xT, float* dvalues,
                int64_t n_out, int64_t batch);
  // spmm_t and sddmm in one pass over the transposed structure
  void (*spmm_t_sddmm)(const float* values, const int32_t* tptr, const int32_t* trows, const int32_t* tslots,
                       const float* dyT, const float* xT, float* dxT, float* dvalues, int64_t n_in, int64_t batch);
  // Whether the fused backward's loop holds x's chunk in registers (32 of them), or reads it again per
  // nonzero (16): the choice between it and spmm_t + sddmm depends on it (FusedBackwardPays).
  bool fused_backward_holds_x;
  // y[o] = sum over output channel o's nonzeros (c, i, j) of value * x[c] shifted by (i, j), strided
  // (offsets: nnz int64 of scratch, each weight's place in x)
  void (*conv)(const float* values, const int32_t* cols, const int32_t* rowptr, const float* x, float* y,
               const ConvShape& s, int64_t* offsets);
  // dx[c] = sum over input channel c's nonzeros (o, i, j) of value * dy[o] scattered back to (i, j); the
  // transposed structure is keyed by (c * kh + i) * kw + j, so each thread owns an input channel (scratch:
  // n_out * oh * (ow + 2 (kw - 1)) * batch floats and nnz int64, for the stride-1 path)
  void (*conv_dx)(const float* values, const int32_t* tptr, const int32_t* trows, const int32_t* tslots,
                  const float* dy, float* dx, const ConvShape& s, float* padded_dy, int64_t* offsets);
  // dvalues[t] = <dy[o], x[c] shifted by (i, j)> for each nonzero t of output channel o
  void (*conv_dw)(const int32_t* cols, const int32_t* rowptr, const float* dy, const float* x, float* dvalues,
                  const ConvShape& s);
  // conv_dx and conv_dw in one pass at stride 1 (each weight's row of dy loaded once for both; x: the padded
  // input, shaped as dx; the same scratch as conv_dx)
  void (*conv_dx_dw)(const float* values, const int32_t* tptr, const int32_t* trows, const int32_t* tslots,
                     const float* dy, const float* x, float* dx, float* dvalues, const ConvShape& s,
                     float* padded_dy, int64_t* offsets);
  // every a[j] in [lo, hi); and a[j - 1] <= a[j] throughout (the checks of the handlers' arguments)
  bool (*all_in_range)(const int32_t* a, int64_t n, int32_t lo, int32_t hi);
  bool (*nondecreasing)(const int32_t* a, int64_t n);
};

extern const KernelTable kGenericKernels;
#ifdef DST_HAVE_AVX2
extern const KernelTable kAvx2Kernels;
#endif
#ifdef DST_HAVE_AVX512
extern const KernelTable kAvx512Kernels;
#endif

// The table in use (sparse_matmul.cc: the best this CPU runs, or the one dst.kernels.use_isa chose).
const KernelTable& ActiveKernels();

}  // namespace dst
