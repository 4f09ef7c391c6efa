// Sparse x dense products for a sparse layer y = x @ W, with W held as compressed rows over its
// OUTPUT units: row o lists the inputs it reads (`cols[rowptr[o]:rowptr[o+1]]`) and their weights.
// A constant fan-in ("condensed") layer is the same format with rowptr[o] = o * k.
//
// Activations come batch-last (xT: [n_in, B], yT: [n_out, B]) so that every nonzero touches one
// contiguous run of B floats: the forward pass and dx are one AXPY of the batch per nonzero, the weight
// gradient is one dot product of two batch rows per nonzero (SparseProp's layout, Nikdan et al. 2023).
// Work is split over output rows (forward, dW) or input rows (dx) with OpenMP, so no two threads write
// the same output and nothing is scatter-added: dx walks the transposed structure, which the caller
// builds once per topology (dst.kernels.transpose) and passes in with it.
//
// This file holds the XLA FFI handlers (argument checks) and the choice of instruction set; the loops
// are in kernels_isa.cc, compiled once per ISA.

#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels.h"
#include "zero_inputs.h"

#include "nanobind/nanobind.h"
#include "nanobind/stl/pair.h"
#include "nanobind/stl/string.h"
#include "xla/ffi/api/c_api.h"
#include "xla/ffi/api/ffi.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace {

// Dimensions of a batch-last activation [n, B] (a 1-D buffer is one column: B = 1).
std::pair<int64_t, int64_t> RowsAndBatch(ffi::Buffer<ffi::F32>& a) {
  auto dims = a.dimensions();
  if (dims.size() == 0) return {1, 1};
  int64_t rows = dims[0];
  return {rows, rows == 0 ? 0 : a.element_count() / rows};
}

// The loops themselves are compiled once per instruction set (kernels_isa.cc); the handlers below check
// their arguments and call the table chosen at load time (dst.kernels picks the best the CPU runs, or the
// one DST_KERNELS_ISA names), read on every call so that a benchmark can switch it between calls.
std::atomic<const dst::KernelTable*> g_kernels{&dst::kGenericKernels};

const dst::KernelTable& Kernels() { return *g_kernels.load(std::memory_order_acquire); }

// The tables this build holds that this CPU (and its operating system) can run, best first.
std::vector<const dst::KernelTable*> RunnableTables() {
  std::vector<const dst::KernelTable*> out;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
#ifdef DST_HAVE_AVX512
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    out.push_back(&dst::kAvx512Kernels);
#endif
#ifdef DST_HAVE_AVX2
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.push_back(&dst::kAvx2Kernels);
#endif
#endif
  out.push_back(&dst::kGenericKernels);
  return out;
}

// Reject a structure that would read or write out of bounds: O(nnz + n_out) in the chosen ISA's
// vectorised loops, small next to a product.
ffi::Error CheckRowPointers(ffi::Buffer<ffi::S32>& cols, ffi::Buffer<ffi::S32>& rowptr, int64_t nnz,
                            int64_t n_out) {
  if (rowptr.element_count() != n_out + 1)
    return ffi::Error::InvalidArgument("dst sparse kernel: rowptr must have n_out + 1 entries");
  if (cols.element_count() != nnz)
    return ffi::Error::InvalidArgument("dst sparse kernel: cols and values must have the same length");
  const int32_t* p = rowptr.typed_data();
  if (p[0] != 0 || p[n_out] != nnz)
    return ffi::Error::InvalidArgument("dst sparse kernel: rowptr must run from 0 to the number of values");
  if (!Kernels().nondecreasing(p, n_out + 1))
    return ffi::Error::InvalidArgument("dst sparse kernel: rowptr must not decrease");
  return ffi::Error::Success();
}

const char kColsOutOfRange[] = "dst sparse kernel: cols must lie in [0, n_in)";

ffi::Error CheckStructure(ffi::Buffer<ffi::S32>& cols, ffi::Buffer<ffi::S32>& rowptr, int64_t nnz,
                          int64_t n_out, int64_t n_in) {
  if (auto err = CheckRowPointers(cols, rowptr, nnz, n_out); err.failure()) return err;
  if (!Kernels().all_in_range(cols.typed_data(), nnz, 0, static_cast<int32_t>(n_in)))
    return ffi::Error::InvalidArgument(kColsOutOfRange);
  return ffi::Error::Success();
}

// Reject transpose slots that would read or write out of bounds.
ffi::Error CheckSlots(ffi::Buffer<ffi::S32>& tslots, int64_t nnz) {
  if (tslots.element_count() != nnz)
    return ffi::Error::InvalidArgument("dst sparse kernel: the transpose's slots must have one entry per value");
  if (!Kernels().all_in_range(tslots.typed_data(), nnz, 0, static_cast<int32_t>(nnz)))
    return ffi::Error::InvalidArgument("dst sparse kernel: the transpose's slots must lie in [0, nnz)");
  return ffi::Error::Success();
}

// yT[o, :] = sum_j values[j] * xT[cols[j], :] over row o's nonzeros.
ffi::Error SpmmImpl(ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::S32> cols, ffi::Buffer<ffi::S32> rowptr,
                    ffi::Buffer<ffi::F32> xT, ffi::ResultBuffer<ffi::F32> yT) {
  auto [n_in, batch] = RowsAndBatch(xT);
  const int64_t n_out = yT->dimensions().size() ? yT->dimensions()[0] : 1;
  if (batch == 1) {   // the matrix-vector product checks each input index as it reads it
    if (auto err = CheckRowPointers(cols, rowptr, values.element_count(), n_out); err.failure()) return err;
    if (!Kernels().spmv(values.typed_data(), cols.typed_data(), rowptr.typed_data(), xT.typed_data(),
                        yT->typed_data(), n_in, n_out))
      return ffi::Error::InvalidArgument(kColsOutOfRange);
    return ffi::Error::Success();
  }
  if (auto err = CheckStructure(cols, rowptr, values.element_count(), n_out, n_in); err.failure()) return err;
  std::vector<int32_t> cursor(n_out);
  const float* v = values.typed_data();
  const int32_t *c = cols.typed_data(), *p = rowptr.typed_data();
  dst::NonZeroInputs kept;   // the weights of inputs that are zero across the batch add nothing
  if (dst::ThinZeroInputs(v, c, p, n_out, values.element_count(), xT.typed_data(), n_in, batch, 1, &kept))
    v = kept.values.data(), c = kept.cols.data(), p = kept.rowptr.data();
  Kernels().spmm(v, c, p, xT.typed_data(), yT->typed_data(), n_in, n_out, batch, cursor.data());
  return ffi::Error::Success();
}

// dxT[i, :] = sum over the nonzeros (o, i) of values * dyT[o, :]: the transposed product, computed row by
// row of the transpose, so each thread owns its output rows. Input row i's nonzeros are the entries
// t in [tptr[i], tptr[i+1]) of the transpose: output row trows[t] and stored slot tslots[t].
ffi::Error SpmmTransposedImpl(ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::S32> tptr,
                              ffi::Buffer<ffi::S32> trows, ffi::Buffer<ffi::S32> tslots,
                              ffi::Buffer<ffi::F32> dyT, ffi::ResultBuffer<ffi::F32> dxT) {
  auto [n_out, batch] = RowsAndBatch(dyT);
  const int64_t n_in = dxT->dimensions().size() ? dxT->dimensions()[0] : 1;
  const int64_t nnz = values.element_count();
  if (auto err = CheckStructure(trows, tptr, nnz, n_in, n_out); err.failure()) return err;
  if (auto err = CheckSlots(tslots, nnz); err.failure()) return err;
  Kernels().spmm_t(values.typed_data(), tptr.typed_data(), trows.typed_data(), tslots.typed_data(),
                   dyT.typed_data(), dxT->typed_data(), n_in, batch);
  return ffi::Error::Success();
}

// The input gradient and the value gradient in one pass over the transposed structure: for input row i,
// each of its nonzeros reads the output gradient row once and uses it for both. Where the activations
// are too large for the caches (a 333k-unit layer), rows read in a random order cost most of the time,
// and the separate SDDMM reads another random row per nonzero.
ffi::Error SpmmTransposedSddmmImpl(ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::S32> tptr,
                                   ffi::Buffer<ffi::S32> trows, ffi::Buffer<ffi::S32> tslots,
                                   ffi::Buffer<ffi::F32> dyT, ffi::Buffer<ffi::F32> xT,
                                   ffi::ResultBuffer<ffi::F32> dxT, ffi::ResultBuffer<ffi::F32> dvalues) {
  auto [n_out, batch] = RowsAndBatch(dyT);
  auto [n_in, x_batch] = RowsAndBatch(xT);
  const int64_t nnz = values.element_count();
  if (x_batch != batch) return ffi::Error::InvalidArgument("dst sparse kernel: x and dy batches differ");
  if (auto err = CheckStructure(trows, tptr, nnz, n_in, n_out); err.failure()) return err;
  if (auto err = CheckSlots(tslots, nnz); err.failure()) return err;
  float* dv = dvalues->typed_data();
  if (batch == 0) {
    for (int64_t j = 0; j < nnz; ++j) dv[j] = 0.0f;
    return ffi::Error::Success();
  }
  Kernels().spmm_t_sddmm(values.typed_data(), tptr.typed_data(), trows.typed_data(), tslots.typed_data(),
                         dyT.typed_data(), xT.typed_data(), dxT->typed_data(), dv, n_in, batch);
  return ffi::Error::Success();
}

// dvalues[j] = <dyT[o, :], xT[cols[j], :]> for the nonzero j of row o: the weight gradient at the
// nonzeros only (a sampled dense-dense product), never the dense [n_in, n_out] gradient.
ffi::Error SddmmImpl(ffi::Buffer<ffi::S32> cols, ffi::Buffer<ffi::S32> rowptr, ffi::Buffer<ffi::F32> dyT,
                     ffi::Buffer<ffi::F32> xT, ffi::ResultBuffer<ffi::F32> dvalues) {
  auto [n_out, batch] = RowsAndBatch(dyT);
  const int64_t nnz = dvalues->element_count();
  const int64_t n_in = xT.dimensions().size() ? xT.dimensions()[0] : 1;
  if (auto err = CheckStructure(cols, rowptr, nnz, n_out, n_in); err.failure()) return err;
  // The weights of inputs that are zero across the batch have a zero gradient: the rest are computed.
  dst::ValueGradientSkipping(cols.typed_data(), rowptr.typed_data(), n_out, nnz, xT.typed_data(), n_in, batch, 1,
                             dvalues->typed_data(), [&](const int32_t* c, const int32_t* p, float* out) {
                               Kernels().sddmm(c, p, dyT.typed_data(), xT.typed_data(), out, n_out, batch);
                             });
  return ffi::Error::Success();
}

// Where the fused pass pays. Below 1 MB of activations both kernels read their rows from the caches and
// the separate ones win (their row-order walks are friendlier than the fused pass's random reads and writes
// of the values). Above it, rows read in a random order cost most of the time and the fused pass saves one
// per weight: with 32 vector registers (its loop holds x's chunk) unless a layer still inside L2 is dense
// (over 2M weights: the values' random walk dominates), with 16 (it reads x again per weight) only for
// sparse layers (at most 100 weights per input on average). Measured with
// `benchmarks/fused_backward_time.py --sweep` (square layers 300 to 8000 wide at 1/10/30%, batch 128,
// 2026-12-05, this AVX-512 machine and its AVX2 loops): see benchmarks/README.md.
constexpr int64_t kFusedFromActivationBytes = int64_t{1} << 20;
constexpr int64_t kFusedBeyondL2Bytes = int64_t{3} << 20;
constexpr int64_t kFusedInL2UpToNnz = int64_t{2} << 20;
constexpr int64_t kFusedUpToNnzPerInputWithout32Registers = 100;

bool FusedBackwardPays(const dst::KernelTable& k, int64_t n_in, int64_t nnz, int64_t batch) {
  const int64_t activation_bytes = n_in * batch * 4;
  if (activation_bytes < kFusedFromActivationBytes) return false;
  if (k.fused_backward_holds_x) return nnz <= kFusedInL2UpToNnz || activation_bytes >= kFusedBeyondL2Bytes;
  return nnz <= kFusedUpToNnzPerInputWithout32Registers * n_in;
}

// Both gradients of a layer whose input is differentiated: the fused pass or the two separate kernels,
// whichever FusedBackwardPays picks for this ISA and shape (the results agree to rounding).
ffi::Error BackwardImpl(ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::S32> cols, ffi::Buffer<ffi::S32> rowptr,
                        ffi::Buffer<ffi::S32> tptr, ffi::Buffer<ffi::S32> trows, ffi::Buffer<ffi::S32> tslots,
                        ffi::Buffer<ffi::F32> dyT, ffi::Buffer<ffi::F32> xT, ffi::ResultBuffer<ffi::F32> dxT,
                        ffi::ResultBuffer<ffi::F32> dvalues) {
  const int64_t batch = RowsAndBatch(dyT).second;
  auto [n_in, x_batch] = RowsAndBatch(xT);
  const int64_t nnz = values.element_count();
  if (!FusedBackwardPays(Kernels(), n_in, nnz, batch) || batch == 0) {
    if (x_batch != batch) return ffi::Error::InvalidArgument("dst sparse kernel: x and dy batches differ");
    if (auto err = SpmmTransposedImpl(values, tptr, trows, tslots, dyT, dxT); err.failure()) return err;
    return SddmmImpl(cols, rowptr, dyT, xT, dvalues);
  }
  return SpmmTransposedSddmmImpl(values, tptr, trows, tslots, dyT, xT, dxT, dvalues);   // reads no cols, rowptr
}

}  // namespace

const dst::KernelTable& dst::ActiveKernels() { return Kernels(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstSpmm, SpmmImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // values [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // cols [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // rowptr [n_out + 1]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // xT [n_in, B]
                                  .Ret<ffi::Buffer<ffi::F32>>()); // yT [n_out, B]

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstSpmmTransposed, SpmmTransposedImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // values [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // tptr [n_in + 1]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // trows [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // tslots [nnz]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dyT [n_out, B]
                                  .Ret<ffi::Buffer<ffi::F32>>()); // dxT [n_in, B]

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstSpmmTransposedSddmm, SpmmTransposedSddmmImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // values [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // tptr [n_in + 1]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // trows [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // tslots [nnz]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dyT [n_out, B]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // xT [n_in, B]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dxT [n_in, B]
                                  .Ret<ffi::Buffer<ffi::F32>>()); // dvalues [nnz]

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // values [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // cols [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // rowptr [n_out + 1]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // tptr [n_in + 1]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // trows [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // tslots [nnz]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dyT [n_out, B]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // xT [n_in, B]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dxT [n_in, B]
                                  .Ret<ffi::Buffer<ffi::F32>>()); // dvalues [nnz]

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstSddmm, SddmmImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()   // cols [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // rowptr [n_out + 1]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dyT [n_out, B]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // xT [n_in, B]
                                  .Ret<ffi::Buffer<ffi::F32>>()); // dvalues [nnz]

// The selection ops (selection.cc).
XLA_FFI_DECLARE_HANDLER_SYMBOL(DstCompact);
XLA_FFI_DECLARE_HANDLER_SYMBOL(DstTopK);
XLA_FFI_DECLARE_HANDLER_SYMBOL(DstTopKHashed);
XLA_FFI_DECLARE_HANDLER_SYMBOL(DstMerge);
XLA_FFI_DECLARE_HANDLER_SYMBOL(DstTranspose);
XLA_FFI_DECLARE_HANDLER_SYMBOL(DstSlotsByUnit);
XLA_FFI_DECLARE_HANDLER_SYMBOL(DstGatherByUnit);
// The convolution ops (conv.cc).
XLA_FFI_DECLARE_HANDLER_SYMBOL(DstConv);
XLA_FFI_DECLARE_HANDLER_SYMBOL(DstConvDx);
XLA_FFI_DECLARE_HANDLER_SYMBOL(DstConvDw);
XLA_FFI_DECLARE_HANDLER_SYMBOL(DstConvBackward);
XLA_FFI_DECLARE_HANDLER_SYMBOL(DstToBatchLast);
XLA_FFI_DECLARE_HANDLER_SYMBOL(DstFromBatchLast);

template <typename T>
nb::capsule Encapsulate(T* fn) {
  static_assert(std::is_invocable_r_v<XLA_FFI_Error*, T, XLA_FFI_CallFrame*>, "not an XLA FFI handler");
  return nb::capsule(reinterpret_cast<void*>(fn));
}

NB_MODULE(_cpu, m) {
  g_kernels.store(RunnableTables().front(), std::memory_order_release);   // the best this CPU runs
  m.def("registrations", []() {
    nb::dict out;
    out["dst_spmm"] = Encapsulate(DstSpmm);
    out["dst_spmm_t"] = Encapsulate(DstSpmmTransposed);
    out["dst_sddmm"] = Encapsulate(DstSddmm);
    out["dst_spmm_t_sddmm"] = Encapsulate(DstSpmmTransposedSddmm);
    out["dst_backward"] = Encapsulate(DstBackward);
    out["dst_compact"] = Encapsulate(DstCompact);
    out["dst_top_k"] = Encapsulate(DstTopK);
    out["dst_top_k_hashed"] = Encapsulate(DstTopKHashed);
    out["dst_merge"] = Encapsulate(DstMerge);
    out["dst_transpose"] = Encapsulate(DstTranspose);
    out["dst_slots_by_unit"] = Encapsulate(DstSlotsByUnit);
    out["dst_gather_by_unit"] = Encapsulate(DstGatherByUnit);
    out["dst_conv"] = Encapsulate(DstConv);
    out["dst_conv_dx"] = Encapsulate(DstConvDx);
    out["dst_conv_dw"] = Encapsulate(DstConvDw);
    out["dst_conv_backward"] = Encapsulate(DstConvBackward);
    out["dst_to_batch_last"] = Encapsulate(DstToBatchLast);
    out["dst_from_batch_last"] = Encapsulate(DstFromBatchLast);
    return out;
  });
  // The instruction sets this build can run on this CPU, best first; the one in use; and a switch to
  // another of them (dst.kernels.use_isa checks the name first).
  m.def("runnable_isas", []() {
    nb::list out;
    for (const dst::KernelTable* t : RunnableTables()) out.append(t->isa);
    return out;
  });
  m.def("isa", []() { return std::string(Kernels().isa); });
  m.def("fused_backward_pays", [](int64_t n_in, int64_t nnz, int64_t batch) {
    return FusedBackwardPays(Kernels(), n_in, nnz, batch);
  });
  m.def("use_isa", [](const std::string& name) {
    for (const dst::KernelTable* t : RunnableTables())
      if (name == t->isa) {
        g_kernels.store(t, std::memory_order_release);
        return true;
      }
    return false;
  });
  // Skipping the weights of inputs that are zero across the batch (zero_inputs.h), and what it skipped.
  m.def("skip_zero_inputs", [](bool on) { return dst::SetSkipZeroInputs(on); });
  m.def("zero_input_counts", []() { return dst::TakeZeroInputCounts(); });
  m.def("num_threads", []() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
}
