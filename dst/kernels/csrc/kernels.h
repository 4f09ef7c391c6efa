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

}  // namespace dst
