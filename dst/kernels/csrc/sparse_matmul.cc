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

#include <cstdint>
#include <type_traits>

#include "nanobind/nanobind.h"
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

// Reject a structure that would read or write out of bounds (O(nnz + n_out), small next to a product).
ffi::Error CheckStructure(ffi::Buffer<ffi::S32>& cols, ffi::Buffer<ffi::S32>& rowptr, int64_t nnz,
                          int64_t n_out, int64_t n_in) {
  if (rowptr.element_count() != n_out + 1)
    return ffi::Error::InvalidArgument("dst sparse kernel: rowptr must have n_out + 1 entries");
  if (cols.element_count() != nnz)
    return ffi::Error::InvalidArgument("dst sparse kernel: cols and values must have the same length");
  const int32_t* p = rowptr.typed_data();
  if (p[0] != 0 || p[n_out] != nnz)
    return ffi::Error::InvalidArgument("dst sparse kernel: rowptr must run from 0 to the number of values");
  for (int64_t o = 0; o < n_out; ++o)
    if (p[o + 1] < p[o]) return ffi::Error::InvalidArgument("dst sparse kernel: rowptr must not decrease");
  const int32_t* c = cols.typed_data();
  for (int64_t j = 0; j < nnz; ++j)
    if (c[j] < 0 || c[j] >= n_in)
      return ffi::Error::InvalidArgument("dst sparse kernel: cols must lie in [0, n_in)");
  return ffi::Error::Success();
}

// Reject transpose slots that would read or write out of bounds.
ffi::Error CheckSlots(ffi::Buffer<ffi::S32>& tslots, int64_t nnz) {
  if (tslots.element_count() != nnz)
    return ffi::Error::InvalidArgument("dst sparse kernel: the transpose's slots must have one entry per value");
  const int32_t* ts = tslots.typed_data();
  for (int64_t t = 0; t < nnz; ++t)
    if (ts[t] < 0 || ts[t] >= nnz)
      return ffi::Error::InvalidArgument("dst sparse kernel: the transpose's slots must lie in [0, nnz)");
  return ffi::Error::Success();
}

// out[:] = sum over t in [begin, end) of weight(t) * source(t)[:], for one output row of `batch` floats.
// The batch is taken in chunks of 64 floats held in four 16-float vector registers across all of the
// row's terms, so a term costs four loads and four FMAs, never a load and store of the output.
// (GCC vector types: plain loops over a local array were left in memory, at a third of the speed.)
typedef float Vec16 __attribute__((vector_size(64), aligned(4)));   // aligned(4): unaligned loads
constexpr int64_t kChunk = 64;
constexpr int64_t kAhead = 4;   // SDDMM: prefetch the activation row of the nonzero this many ahead

template <typename Weight, typename Source>
inline void AxpyRow(float* __restrict__ out, int64_t batch, int64_t begin, int64_t end, Weight weight,
                    Source source) {
  int64_t b0 = 0;
  for (; b0 + kChunk <= batch; b0 += kChunk) {
    Vec16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t t = begin; t < end; ++t) {
      const float w = weight(t);
      const Vec16* src = reinterpret_cast<const Vec16*>(source(t) + b0);
      a0 += w * src[0];
      a1 += w * src[1];
      a2 += w * src[2];
      a3 += w * src[3];
    }
    Vec16* dst = reinterpret_cast<Vec16*>(out + b0);
    dst[0] = a0;
    dst[1] = a1;
    dst[2] = a2;
    dst[3] = a3;
  }
  if (b0 < batch) {   // the batch's remainder (and batches smaller than a chunk)
    for (int64_t b = b0; b < batch; ++b) out[b] = 0.0f;
    for (int64_t t = begin; t < end; ++t) {
      const float w = weight(t);
      const float* __restrict__ src = source(t);
      for (int64_t b = b0; b < batch; ++b) out[b] += w * src[b];
    }
  }
}

// yT[o, :] = sum_j values[j] * xT[cols[j], :] over row o's nonzeros.
ffi::Error SpmmImpl(ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::S32> cols, ffi::Buffer<ffi::S32> rowptr,
                    ffi::Buffer<ffi::F32> xT, ffi::ResultBuffer<ffi::F32> yT) {
  auto [n_in, batch] = RowsAndBatch(xT);
  const int64_t n_out = yT->dimensions().size() ? yT->dimensions()[0] : 1;
  if (auto err = CheckStructure(cols, rowptr, values.element_count(), n_out, n_in); err.failure()) return err;
  const float* v = values.typed_data();
  const int32_t* c = cols.typed_data();
  const int32_t* p = rowptr.typed_data();
  const float* x = xT.typed_data();
  float* y = yT->typed_data();
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t o = 0; o < n_out; ++o) {
    AxpyRow(y + o * batch, batch, p[o], p[o + 1], [v](int64_t j) { return v[j]; },
            [x, c, batch](int64_t j) { return x + static_cast<int64_t>(c[j]) * batch; });
  }
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
  const float* v = values.typed_data();
  const int32_t* ts = tslots.typed_data();
  const int32_t* tp = tptr.typed_data();
  const int32_t* tr = trows.typed_data();
  const float* dy = dyT.typed_data();
  float* dx = dxT->typed_data();
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < n_in; ++i) {
    AxpyRow(dx + i * batch, batch, tp[i], tp[i + 1], [v, ts](int64_t t) { return v[ts[t]]; },
            [dy, tr, batch](int64_t t) { return dy + static_cast<int64_t>(tr[t]) * batch; });
  }
  return ffi::Error::Success();
}

// The sum of a vector's 16 lanes, as a tree (a chain of 16 scalar adds costs more than the dot product).
inline float SumLanes(Vec16 a) {
  typedef float Vec8 __attribute__((vector_size(32), aligned(4)));
  typedef float Vec4 __attribute__((vector_size(16), aligned(4)));
  Vec8 h = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
  Vec4 q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  return (q[0] + q[2]) + (q[1] + q[3]);
}

// The input gradient and the value gradient in one pass over the transposed structure: for input row i,
// each of its nonzeros t reads the output gradient row dyT[trows[t]] once and uses it twice, for
// dxT[i] += value * dyT[o] and for dvalues[slot] = <dyT[o], xT[i]> (xT[i] stays in registers). Where
// the activations are too large for the caches (a 333k-unit layer), rows read in a random order cost
// most of the time, and the separate SDDMM reads another random row per nonzero.
template <int kVecs>
inline void FusedChunk(float* __restrict__ dx, float* __restrict__ dv, const float* __restrict__ v,
                       const int32_t* __restrict__ ts, const int32_t* __restrict__ tr,
                       const float* __restrict__ dy, const float* __restrict__ xi, int64_t batch, int64_t b0,
                       int64_t begin, int64_t end, bool first) {
  Vec16 xv[kVecs], acc[kVecs] = {};
  for (int k = 0; k < kVecs; ++k) xv[k] = *reinterpret_cast<const Vec16*>(xi + b0 + 16 * k);
  for (int64_t t = begin; t < end; ++t) {
    const int32_t slot = ts[t];
    const float w = v[slot];
    const Vec16* d = reinterpret_cast<const Vec16*>(dy + static_cast<int64_t>(tr[t]) * batch + b0);
    Vec16 dot = {};
    for (int k = 0; k < kVecs; ++k) {
      acc[k] += w * d[k];
      dot += xv[k] * d[k];
    }
    const float partial = SumLanes(dot);
    dv[slot] = first ? partial : dv[slot] + partial;
  }
  for (int k = 0; k < kVecs; ++k) *reinterpret_cast<Vec16*>(dx + b0 + 16 * k) = acc[k];
}

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
  const float* v = values.typed_data();
  const int32_t* ts = tslots.typed_data();
  const int32_t* tp = tptr.typed_data();
  const int32_t* tr = trows.typed_data();
  const float* dy = dyT.typed_data();
  const float* x = xT.typed_data();
  float* dx = dxT->typed_data();
  float* dv = dvalues->typed_data();
  if (batch == 0) {
    for (int64_t j = 0; j < nnz; ++j) dv[j] = 0.0f;
    return ffi::Error::Success();
  }
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < n_in; ++i) {
    float* dxi = dx + i * batch;
    const float* xi = x + i * batch;
    int64_t b0 = 0;
    const int64_t begin = tp[i], end = tp[i + 1];
    for (; b0 + 128 <= batch; b0 += 128) FusedChunk<8>(dxi, dv, v, ts, tr, dy, xi, batch, b0, begin, end, b0 == 0);
    for (; b0 + 64 <= batch; b0 += 64) FusedChunk<4>(dxi, dv, v, ts, tr, dy, xi, batch, b0, begin, end, b0 == 0);
    for (; b0 + 16 <= batch; b0 += 16) FusedChunk<1>(dxi, dv, v, ts, tr, dy, xi, batch, b0, begin, end, b0 == 0);
    if (b0 < batch) {   // the batch's remainder (and batches smaller than a vector)
      for (int64_t b = b0; b < batch; ++b) dxi[b] = 0.0f;
      for (int64_t t = tp[i]; t < tp[i + 1]; ++t) {
        const int32_t slot = ts[t];
        const float* __restrict__ d = dy + static_cast<int64_t>(tr[t]) * batch;
        float dot = 0.0f;
        for (int64_t b = b0; b < batch; ++b) {
          dxi[b] += v[slot] * d[b];
          dot += xi[b] * d[b];
        }
        dv[slot] = b0 == 0 ? dot : dv[slot] + dot;
      }
    }
  }
  return ffi::Error::Success();
}

// dvalues[j] = <dyT[o, :], xT[cols[j], :]> for the nonzero j of row o: the weight gradient at the
// nonzeros only (a sampled dense-dense product), never the dense [n_in, n_out] gradient. The rows of xT
// are read in a random order: the next ones are prefetched while this one is reduced.
ffi::Error SddmmImpl(ffi::Buffer<ffi::S32> cols, ffi::Buffer<ffi::S32> rowptr, ffi::Buffer<ffi::F32> dyT,
                     ffi::Buffer<ffi::F32> xT, ffi::ResultBuffer<ffi::F32> dvalues) {
  auto [n_out, batch] = RowsAndBatch(dyT);
  const int64_t nnz = dvalues->element_count();
  const int64_t n_in = xT.dimensions().size() ? xT.dimensions()[0] : 1;
  if (auto err = CheckStructure(cols, rowptr, nnz, n_out, n_in); err.failure()) return err;
  const int32_t* c = cols.typed_data();
  const int32_t* p = rowptr.typed_data();
  const float* dy = dyT.typed_data();
  const float* x = xT.typed_data();
  float* dv = dvalues->typed_data();
  const int64_t whole = batch - batch % 16;   // the part of the batch taken 16 floats at a time
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t o = 0; o < n_out; ++o) {
    const float* __restrict__ dyo = dy + o * batch;
    const int64_t end = p[o + 1];
    for (int64_t j = p[o]; j < end; ++j) {
      if (j + kAhead < end) {
        const char* ahead = reinterpret_cast<const char*>(x + static_cast<int64_t>(c[j + kAhead]) * batch);
        for (int64_t b = 0; b < batch; b += 16) __builtin_prefetch(ahead + 4 * b);
      }
      const float* __restrict__ xc = x + static_cast<int64_t>(c[j]) * batch;
      Vec16 a0 = {}, a1 = {};
      int64_t b = 0;
      for (; b + 32 <= whole; b += 32) {
        a0 += *reinterpret_cast<const Vec16*>(dyo + b) * *reinterpret_cast<const Vec16*>(xc + b);
        a1 += *reinterpret_cast<const Vec16*>(dyo + b + 16) * *reinterpret_cast<const Vec16*>(xc + b + 16);
      }
      if (b < whole) a0 += *reinterpret_cast<const Vec16*>(dyo + b) * *reinterpret_cast<const Vec16*>(xc + b);
      float acc = SumLanes(a0 + a1);
      for (b = whole; b < batch; ++b) acc += dyo[b] * xc[b];
      dv[j] = acc;
    }
  }
  return ffi::Error::Success();
}

// index[:] = the positions of the first `size` true entries of `mask`, in order, then zeros;
// count = the number of true entries (it may exceed `size`). jnp.nonzero(mask, size=size) in one pass:
// XLA's cumsum on the CPU costs about 10 ns per element, and a prune-and-regrow update compacts
// every block of a wide layer's grow score (dst.train.stored_update).
ffi::Error CompactImpl(ffi::Buffer<ffi::PRED> mask, ffi::ResultBuffer<ffi::S32> index,
                       ffi::ResultBuffer<ffi::S32> count) {
  const bool* m = mask.typed_data();
  const int64_t n = mask.element_count();
  const int64_t size = index->element_count();
  int32_t* out = index->typed_data();
  int64_t found = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (m[i]) {
      if (found < size) out[found] = static_cast<int32_t>(i);
      ++found;
    }
  }
  for (int64_t j = found; j < size; ++j) out[j] = 0;
  *count->typed_data() = static_cast<int32_t>(found);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstCompact, CompactImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // mask [n]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // index [size]
                                  .Ret<ffi::Buffer<ffi::S32>>()); // count []

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

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstSddmm, SddmmImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()   // cols [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // rowptr [n_out + 1]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dyT [n_out, B]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // xT [n_in, B]
                                  .Ret<ffi::Buffer<ffi::F32>>()); // dvalues [nnz]

template <typename T>
nb::capsule Encapsulate(T* fn) {
  static_assert(std::is_invocable_r_v<XLA_FFI_Error*, T, XLA_FFI_CallFrame*>, "not an XLA FFI handler");
  return nb::capsule(reinterpret_cast<void*>(fn));
}

NB_MODULE(_cpu, m) {
  m.def("registrations", []() {
    nb::dict out;
    out["dst_spmm"] = Encapsulate(DstSpmm);
    out["dst_spmm_t"] = Encapsulate(DstSpmmTransposed);
    out["dst_sddmm"] = Encapsulate(DstSddmm);
    out["dst_spmm_t_sddmm"] = Encapsulate(DstSpmmTransposedSddmm);
    out["dst_compact"] = Encapsulate(DstCompact);
    return out;
  });
  m.def("num_threads", []() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
}
