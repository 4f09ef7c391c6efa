// The sparse products' loops for ONE instruction set. CMakeLists.txt compiles this file once per ISA with
// that ISA's flags and these definitions:
//   DST_ISA_TABLE  the KernelTable it defines (kGenericKernels, kAvx2Kernels, kAvx512Kernels)
//   DST_ISA_NAME   its name ("generic", "avx2", "avx512")
//   DST_VEC_BYTES  the width of one vector register (16: SSE2/NEON, 32: AVX2, 64: AVX-512)
//   DST_VEC_REGS   how many vector registers the ISA has (16, or 32 with AVX-512)
//
// Why per ISA, with the vector type at the register's own width: a vector type wider than the machine's
// registers (the 64-byte type these loops once used everywhere) is lowered by GCC through the stack on
// AVX2 -- every broadcast built by 16 scalar stores, the accumulators stored and reloaded for every
// nonzero -- which made the AVX2 build 4.7x slower than the AVX-512 one. Here every accumulator is one
// register, and each loop holds as many as the register file allows.
//
// Everything but the table has internal linkage, and no header with inline functions is included, so the
// linker can never take a function compiled for one ISA in place of another's.

#include <cstdint>
#include <utility>

#include "kernels.h"

#if DST_VEC_BYTES >= 32
#include <immintrin.h>   // gathers: its intrinsics are always inlined, so no code of this ISA is shared
#endif

namespace {

typedef float V __attribute__((vector_size(DST_VEC_BYTES), aligned(4)));   // aligned(4): unaligned loads
constexpr int64_t kLanes = DST_VEC_BYTES / 4;
// Accumulators of the batch held across a row's nonzeros (forward and dx): 8 registers, plus the weight's
// broadcast and a loaded operand, fit the 16 registers of SSE2 and AVX2 and leave AVX-512's half free.
constexpr int kAxpyVecs = 8;
// The fused backward holds a chunk of dx (kFusedVecs registers) and two dot accumulators, and with 32
// registers the chunk of x too; with 16 it reads x's chunk from L1 instead of halving the chunk: each
// chunk walks the row's nonzeros again, and their rows of dy are read in a random order from memory.
constexpr int kFusedVecs = 8;
constexpr bool kFusedHoldsX = DST_VEC_REGS >= 32;
constexpr int64_t kAhead = 4;   // SDDMM: prefetch the activation rows of the next group of nonzeros
constexpr int64_t kFusedAhead = 8;   // fused backward: prefetch the output-gradient row this many nonzeros on

inline V Load(const float* p) { return *reinterpret_cast<const V*>(p); }
inline void Store(float* p, V v) { *reinterpret_cast<V*>(p) = v; }

// The sum of a vector's lanes, halving the width each step (a chain of scalar adds costs more than a dot).
inline float SumLanes(V a) {
  typedef float V4 __attribute__((vector_size(16), aligned(4)));
#if DST_VEC_BYTES == 64
  typedef float V8 __attribute__((vector_size(32), aligned(4)));
  V8 h = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) +
         __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
  V4 q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
#elif DST_VEC_BYTES == 32
  V4 q = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
#else
  V4 q = a;
#endif
  return (q[0] + q[2]) + (q[1] + q[3]);
}

// out[b0 : b0 + kVecs * kLanes] = sum over t in [begin, end) of weight(t) * source(t)[same range], the
// accumulators in registers across all of the row's terms (one load and one FMA per vector and term).
// With `add`, the sums add to what out holds (a later block of a row's inputs, see Spmm).
template <int kVecs, typename Weight, typename Source>
inline void AxpyChunk(float* __restrict__ out, int64_t b0, int64_t begin, int64_t end, Weight weight,
                      Source source, bool add) {
  V acc[kVecs];
#pragma GCC unroll 16
  for (int k = 0; k < kVecs; ++k) acc[k] = add ? Load(out + b0 + k * kLanes) : V{};
  for (int64_t t = begin; t < end; ++t) {
    if (t + kAhead < end) {   // the chunk of a row kAhead terms on, read in a random order
      const char* ahead = reinterpret_cast<const char*>(source(t + kAhead) + b0);
#pragma GCC unroll 16
      for (int k = 0; k < kVecs * kLanes; k += 16) __builtin_prefetch(ahead + 4 * k);
      weight.prefetch(t + 4 * kAhead);
    }
    const float w = weight(t);
    const float* src = source(t) + b0;
#pragma GCC unroll 16
    for (int k = 0; k < kVecs; ++k) acc[k] += w * Load(src + k * kLanes);
  }
#pragma GCC unroll 16
  for (int k = 0; k < kVecs; ++k) Store(out + b0 + k * kLanes, acc[k]);
}

// One output row of `batch` floats: whole chunks of kAxpyVecs vectors, then halves, then scalars.
template <typename Weight, typename Source>
inline void AxpyRow(float* __restrict__ out, int64_t batch, int64_t begin, int64_t end, Weight weight,
                    Source source, bool add = false) {
  int64_t b0 = 0;
  for (; b0 + kAxpyVecs * kLanes <= batch; b0 += kAxpyVecs * kLanes)
    AxpyChunk<kAxpyVecs>(out, b0, begin, end, weight, source, add);
  if (b0 + 4 * kLanes <= batch) { AxpyChunk<4>(out, b0, begin, end, weight, source, add); b0 += 4 * kLanes; }
  if (b0 + 2 * kLanes <= batch) { AxpyChunk<2>(out, b0, begin, end, weight, source, add); b0 += 2 * kLanes; }
  if (b0 + kLanes <= batch) { AxpyChunk<1>(out, b0, begin, end, weight, source, add); b0 += kLanes; }
  if (b0 < batch) {
    if (!add)
      for (int64_t b = b0; b < batch; ++b) out[b] = 0.0f;
    for (int64_t t = begin; t < end; ++t) {
      const float w = weight(t);
      const float* __restrict__ src = source(t);
      for (int64_t b = b0; b < batch; ++b) out[b] += w * src[b];
    }
  }
}

// The weight of term t: values[t] (forward), or values[slots[t]] (dx, over the transposed structure: a
// random read into the values, prefetched a few terms ahead).
struct Direct {
  const float* v;
  float operator()(int64_t t) const { return v[t]; }
  void prefetch(int64_t) const {}
};
struct Indirect {
  const float* v;
  const int32_t* slots;
  int64_t nnz;
  float operator()(int64_t t) const { return v[slots[t]]; }
  void prefetch(int64_t t) const {
    if (t < nnz) __builtin_prefetch(v + slots[t]);
  }
};

// A row's gathered dot product: whole vectors of nonzeros with 8-lane gathers (GCC does not emit gathers
// for this loop by itself), two accumulators, then the rest. AVX-512 takes them too: its 16-lane gather was
// the slower here (4000x4000 at 10%: 0.254-0.261 against 0.217-0.220 ms a product in the same minutes,
// benchmarks/kernel_harness.sh 4000 0.1 1 301). Each index is checked against
// [0, n_in) as it is loaded and an index outside it is neither read nor summed but reported in `bad`: a
// batch of one reads each index once, where a separate check before the product read them all twice
// (a third of a 90%-sparse layer's memory traffic).
inline float GatherDot(const float* v, const int32_t* c, const float* x, int64_t begin, int64_t end,
                       int32_t n_in, bool* bad) {
  int64_t j = begin;
  float acc = 0.0f;
#if DST_VEC_BYTES >= 32
  const __m256i limit = _mm256_set1_epi32(n_in), minus_one = _mm256_set1_epi32(-1);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  __m256i ok = _mm256_set1_epi32(-1);
  auto term = [&](int64_t at, __m256 a) {
    const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + at));
    const __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(limit, idx), _mm256_cmpgt_epi32(idx, minus_one));
    ok = _mm256_and_si256(ok, in);
    const __m256 gathered = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), x, idx, _mm256_castsi256_ps(in), 4);
    return _mm256_fmadd_ps(_mm256_loadu_ps(v + at), gathered, a);
  };
  for (; j + 16 <= end; j += 16) {
    a0 = term(j, a0);
    a1 = term(j + 8, a1);
  }
  for (; j + 8 <= end; j += 8) a0 = term(j, a0);
  const __m256 sum8 = _mm256_add_ps(a0, a1);
  __m128 sum4 = _mm_add_ps(_mm256_castps256_ps128(sum8), _mm256_extractf128_ps(sum8, 1));
  sum4 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
  acc = _mm_cvtss_f32(_mm_add_ss(sum4, _mm_movehdup_ps(sum4)));
  if (_mm256_movemask_ps(_mm256_castsi256_ps(ok)) != 0xFF) *bad = true;
#endif
  for (; j < end; ++j) {
    if (static_cast<uint32_t>(c[j]) < static_cast<uint32_t>(n_in)) acc += v[j] * x[c[j]];
    else *bad = true;
  }
  return acc;
}

// y[o] = sum over row o's nonzeros of values[j] * x[cols[j]], for a batch of one (online inference): a
// gathered dot product per row. The batched AXPY loops would take one scalar per nonzero here. Returns
// false where an index lies outside [0, n_in) (none is read; the caller reports the error).
bool Spmv(const float* v, const int32_t* c, const int32_t* p, const float* x, float* y, int64_t n_in,
          int64_t n_out) {
  const bool parallel = p[n_out] >= (int64_t{1} << 16);   // below: the threads' start costs more than it saves
  bool bad = false;
#pragma omp parallel for schedule(static) if (parallel) reduction(|| : bad)
  for (int64_t o = 0; o < n_out; ++o) {
    bool here = false;
    y[o] = GatherDot(v, c, x, p[o], p[o + 1], static_cast<int32_t>(n_in), &here);
    bad = bad || here;
  }
  return !bad;
}

// The forward product. Where the activations outgrow L2 (x's rows are read in a random order), the inputs
// are taken in blocks of kBlockFloats floats of x: every row adds its weights in block 0, then in block 1,
// ..., so each block's rows stay in L2 while all output rows read them; `cursor` (n_out entries) keeps
// where each row stopped (fast where its columns are sorted, as stored layers keep them; correct in any
// order: every weight falls in the block its prefix reaches). 4000x4000 at 10%, batch 256: 18.9 -> 10.5 ms; 8000
// wide at 5%, batch 128: 22.9 -> 9.4 ms; 4000 wide at 10%, batch 128: 6.3 -> 5.7 ms (2026-12-05,
// benchmarks/kernel_harness.sh; see benchmarks/README.md).
constexpr int64_t kBlockFloats = int64_t{1} << 18;   // 1 MB of x per block
constexpr int64_t kBlockFromNnzPerRow = 32;

void Spmm(const float* v, const int32_t* c, const int32_t* p, const float* x, float* y, int64_t n_in,
          int64_t n_out, int64_t batch, int32_t* cursor) {
  auto row = [x, c, batch](int64_t j) { return x + static_cast<int64_t>(c[j]) * batch; };
  const int64_t block = kBlockFloats / batch;
  // Each block costs every row a reload of its sums (and the million-neuron layer's y is as large as its
  // x), so a row must find enough of its weights in a block: at least kBlockFromNnzPerRow on average.
  // 4000 wide at 1%, batch 128 (20 a row per block): step 6.9 -> 7.4 ms if blocked, so not blocked.
  const bool blocked = block >= 1 && n_in * batch > kBlockFloats * 3 / 2 &&
                       p[n_out] * block >= kBlockFromNnzPerRow * n_out * n_in;
  if (!blocked) {
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t o = 0; o < n_out; ++o) AxpyRow(y + o * batch, batch, p[o], p[o + 1], Direct{v}, row);
    return;
  }
#pragma omp parallel
  for (int64_t lo = 0; lo < n_in; lo += block) {
    const int64_t hi = lo + block;
#pragma omp for schedule(static, 16)
    for (int64_t o = 0; o < n_out; ++o) {   // static: each row's cursor stays with one thread
      const int64_t begin = lo == 0 ? p[o] : cursor[o], end = p[o + 1];
      int64_t stop = begin;
      while (stop < end && c[stop] < hi) ++stop;
      AxpyRow(y + o * batch, batch, begin, stop, Direct{v}, row, lo > 0);
      cursor[o] = static_cast<int32_t>(stop);
    }
  }
}

void SpmmTransposed(const float* v, const int32_t* tp, const int32_t* tr, const int32_t* ts, const float* dy,
                    float* dx, int64_t n_in, int64_t batch) {
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < n_in; ++i)
    AxpyRow(dx + i * batch, batch, tp[i], tp[i + 1], Indirect{v, ts, tp[n_in]},
            [dy, tr, batch](int64_t t) { return dy + static_cast<int64_t>(tr[t]) * batch; });
}

inline float Dot(const float* __restrict__ a, const float* __restrict__ b, int64_t batch) {
  V s0 = {}, s1 = {};
  int64_t k = 0;
  for (; k + 2 * kLanes <= batch; k += 2 * kLanes) {
    s0 += Load(a + k) * Load(b + k);
    s1 += Load(a + k + kLanes) * Load(b + k + kLanes);
  }
  if (k + kLanes <= batch) { s0 += Load(a + k) * Load(b + k); k += kLanes; }
  float s = SumLanes(s0 + s1);
  for (; k < batch; ++k) s += a[k] * b[k];
  return s;
}

// Four dot products against one output-gradient row, sharing its loads: two vectors per iteration, so
// eight independent FMA chains hide the FMA latency.
inline void Dot4(const float* __restrict__ d, const float* x0, const float* x1, const float* x2,
                 const float* x3, int64_t batch, float* out) {
  V a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
  int64_t k = 0;
  for (; k + 2 * kLanes <= batch; k += 2 * kLanes) {
    const V d0 = Load(d + k), d1 = Load(d + k + kLanes);
    a0 += d0 * Load(x0 + k); b0 += d1 * Load(x0 + k + kLanes);
    a1 += d0 * Load(x1 + k); b1 += d1 * Load(x1 + k + kLanes);
    a2 += d0 * Load(x2 + k); b2 += d1 * Load(x2 + k + kLanes);
    a3 += d0 * Load(x3 + k); b3 += d1 * Load(x3 + k + kLanes);
  }
  if (k + kLanes <= batch) {
    const V d0 = Load(d + k);
    a0 += d0 * Load(x0 + k); a1 += d0 * Load(x1 + k); a2 += d0 * Load(x2 + k); a3 += d0 * Load(x3 + k);
    k += kLanes;
  }
  float s0 = SumLanes(a0 + b0), s1 = SumLanes(a1 + b1), s2 = SumLanes(a2 + b2), s3 = SumLanes(a3 + b3);
  for (; k < batch; ++k) {
    s0 += d[k] * x0[k]; s1 += d[k] * x1[k]; s2 += d[k] * x2[k]; s3 += d[k] * x3[k];
  }
  out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

inline void Prefetch(const float* row, int64_t batch) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < batch; b += 16) __builtin_prefetch(bytes + 4 * b);
}

// dvalues at the nonzeros of each output row, four nonzeros at a time; the rows of xT are read in a random
// order, so the next group's rows are prefetched while this one is reduced.
void Sddmm(const int32_t* c, const int32_t* p, const float* dy, const float* x, float* dv, int64_t n_out,
           int64_t batch) {
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t o = 0; o < n_out; ++o) {
    const float* __restrict__ dyo = dy + o * batch;
    const int64_t end = p[o + 1];
    auto row = [x, c, batch](int64_t j) { return x + static_cast<int64_t>(c[j]) * batch; };
    int64_t j = p[o];
    for (; j + 4 <= end; j += 4) {
      for (int64_t a = j + kAhead; a < j + 2 * kAhead && a < end; ++a) Prefetch(row(a), batch);
      Dot4(dyo, row(j), row(j + 1), row(j + 2), row(j + 3), batch, dv + j);
    }
    for (; j < end; ++j) dv[j] = Dot(dyo, row(j), batch);
  }
}

// One chunk of kVecs vectors of input row i in the fused backward: for each of the row's nonzeros t, the
// output-gradient chunk (source(t): the row of dy it reads) is loaded once and used twice, for
// dx[i] += value * dy[o] and for the partial dot <dy[o], x[i]> that accumulates into dvalues[slot].
template <int kVecs, typename Source>
inline void FusedChunk(float* __restrict__ dx, float* __restrict__ dv, const float* __restrict__ v,
                       const int32_t* __restrict__ ts, Source source, const float* __restrict__ xi, int64_t b0,
                       int64_t begin, int64_t end, bool first) {
  V xv[kVecs], acc[kVecs];
#pragma GCC unroll 16
  for (int k = 0; k < kVecs; ++k) {
    if (kFusedHoldsX) xv[k] = Load(xi + b0 + k * kLanes);
    acc[k] = V{};
  }
  for (int64_t t = begin; t < end; ++t) {
    if (t + kFusedAhead < end) {   // this chunk of a row of dy kFusedAhead nonzeros on (a random order)
      const char* ahead = reinterpret_cast<const char*>(source(t + kFusedAhead) + b0);
#pragma GCC unroll 16
      for (int k = 0; k < kVecs * kLanes; k += 16) __builtin_prefetch(ahead + 4 * k);
    }
    const int32_t slot = ts[t];
    const float w = v[slot];
    const float* d = source(t) + b0;
    V dot0 = {}, dot1 = {};
    if constexpr (kFusedHoldsX) {
#pragma GCC unroll 16
      for (int k = 0; k < kVecs; k += 2) {
        const V d0 = Load(d + k * kLanes);
        acc[k] += w * d0;
        dot0 += xv[k] * d0;
        if (k + 1 < kVecs) {
          const V d1 = Load(d + (k + 1) * kLanes);
          acc[k + 1] += w * d1;
          dot1 += xv[k + 1] * d1;
        }
      }
    } else {   // one dot accumulator: eight of dx, one of the dot, the weight and a loaded chunk fit 16
#pragma GCC unroll 16
      for (int k = 0; k < kVecs; ++k) {
        const V dk = Load(d + k * kLanes);
        acc[k] += w * dk;
        dot0 += Load(xi + b0 + k * kLanes) * dk;
      }
    }
    const float partial = SumLanes(dot0 + dot1);
    dv[slot] = first ? partial : dv[slot] + partial;
  }
#pragma GCC unroll 16
  for (int k = 0; k < kVecs; ++k) Store(dx + b0 + k * kLanes, acc[k]);
}

// One input row of `length` floats in the fused backward: whole chunks, single vectors, then scalars. With
// `first`, each weight's gradient starts at this row's partial dot; otherwise it adds to it.
template <typename Source>
inline void FusedRow(float* __restrict__ dxi, float* __restrict__ dv, const float* __restrict__ v,
                     const int32_t* __restrict__ ts, Source source, const float* __restrict__ xi, int64_t length,
                     int64_t begin, int64_t end, bool first) {
  int64_t b0 = 0;
  for (; b0 + kFusedVecs * kLanes <= length; b0 += kFusedVecs * kLanes)
    FusedChunk<kFusedVecs>(dxi, dv, v, ts, source, xi, b0, begin, end, first && b0 == 0);
  for (; b0 + kLanes <= length; b0 += kLanes)
    FusedChunk<1>(dxi, dv, v, ts, source, xi, b0, begin, end, first && b0 == 0);
  if (b0 < length) {   // the row's remainder (and rows shorter than a vector)
    for (int64_t b = b0; b < length; ++b) dxi[b] = 0.0f;
    for (int64_t t = begin; t < end; ++t) {
      const int32_t slot = ts[t];
      const float* __restrict__ d = source(t);
      float dot = 0.0f;
      for (int64_t b = b0; b < length; ++b) {
        dxi[b] += v[slot] * d[b];
        dot += xi[b] * d[b];
      }
      dv[slot] = first && b0 == 0 ? dot : dv[slot] + dot;
    }
  }
}

void SpmmTransposedSddmm(const float* v, const int32_t* tp, const int32_t* tr, const int32_t* ts,
                         const float* dy, const float* x, float* dx, float* dv, int64_t n_in, int64_t batch) {
  auto row = [dy, tr, batch](int64_t t) { return dy + static_cast<int64_t>(tr[t]) * batch; };
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < n_in; ++i)
    FusedRow(dx + i * batch, dv, v, ts, row, x + i * batch, batch, tp[i], tp[i + 1], true);
}

// Convolutions (SparseProp's layout, Nikdan et al. 2023, without im2col): activations batch-last, each
// weight one shifted multiply-add of the batch. With a stride of 1 along the width, an output row
// y[o, oh, :, :] is one contiguous run of ow * batch floats, and so is what each weight reads of x
// (x[c, oh * sh + i, j : j + ow, :]): the row is one AxpyRow over the channel's weights, its accumulators in
// registers across all of them. With a wider stride each output position is its own run of batch floats.
struct ConvRuns {
  int64_t length, count;   // floats per run, runs per output row
};
inline ConvRuns RunsOf(const dst::ConvShape& s) {
  return s.sw == 1 ? ConvRuns{s.ow * s.batch, 1} : ConvRuns{s.batch, s.ow};
}

// Kernel offset (i, j) and input channel of the weight at matrix-view column k.
struct ConvTap {
  int64_t c, i, j;
};
inline ConvTap TapOf(int64_t k, const dst::ConvShape& s) {
  const int64_t ij = k / s.c_in;
  return {k % s.c_in, ij / s.kw, ij % s.kw};
}

void Conv(const float* v, const int32_t* c, const int32_t* p, const float* x, float* y, const dst::ConvShape& s,
          int64_t* offsets) {
  const int64_t nnz = p[s.n_out];
#pragma omp parallel for schedule(static) if (nnz >= (int64_t{1} << 16))
  for (int64_t t = 0; t < nnz; ++t) {   // where each weight reads x for output position (0, 0)
    const ConvTap tap = TapOf(c[t], s);
    offsets[t] = ((tap.c * s.hp + tap.i) * s.wp + tap.j) * s.batch;
  }
  const ConvRuns runs = RunsOf(s);
#pragma omp parallel for collapse(2) schedule(dynamic, 4)
  for (int64_t o = 0; o < s.n_out; ++o)
    for (int64_t oh = 0; oh < s.oh; ++oh)
      for (int64_t r = 0; r < runs.count; ++r) {
        const int64_t shift = (oh * s.sh * s.wp + r * s.sw) * s.batch;
        AxpyRow(y + ((o * s.oh + oh) * s.ow + r) * s.batch, runs.length, p[o], p[o + 1], Direct{v},
                [x, offsets, shift](int64_t t) { return x + (offsets[t] + shift); });
      }
}

// The input gradient, one input channel per thread. At stride 1 each padded input row (c, h) is one
// AxpyRow over the channel's weights whose kernel row i reaches it from an output row (a contiguous range of
// the transposed structure, keyed (c, i, j)): weight (o, i, j) adds dy[o, h - i] shifted right by j, which
// reads a copy of dy padded by kw - 1 zeros on both sides of each row, so every weight covers the whole input
// row and the row's accumulators stay in registers across all of its weights (written once, not once per
// kernel offset). At wider strides each (row, offset, output position) is its own run of the batch.
void ConvDxStrided(const float* v, const int32_t* tp, const int32_t* tr, const int32_t* ts, const float* dy,
                   float* dx, const dst::ConvShape& s) {
  const int64_t nnz = tp[s.c_in * s.kh * s.kw];
  const int64_t plane = s.hp * s.wp * s.batch, out_plane = s.oh * s.ow * s.batch;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < s.c_in; ++c) {
    float* dxc = dx + c * plane;
    for (int64_t k = 0; k < plane; ++k) dxc[k] = 0.0f;
    for (int64_t h = 0; h < s.hp; ++h)
      for (int64_t i = 0; i < s.kh && i <= h; ++i) {
        if ((h - i) % s.sh != 0 || (h - i) / s.sh >= s.oh) continue;
        const int64_t oh = (h - i) / s.sh;
        for (int64_t j = 0; j < s.kw; ++j) {
          const int64_t key = (c * s.kh + i) * s.kw + j;
          if (tp[key] == tp[key + 1]) continue;
          for (int64_t ow = 0; ow < s.ow; ++ow) {
            const int64_t at = (oh * s.ow + ow) * s.batch;
            AxpyRow(dxc + (h * s.wp + ow * s.sw + j) * s.batch, s.batch, tp[key], tp[key + 1],
                    Indirect{v, ts, nnz}, [dy, tr, out_plane, at](int64_t t) { return dy + (tr[t] * out_plane + at); },
                    true);
          }
        }
      }
  }
}

// dy's rows with kw - 1 zero columns on each side (n_out * oh rows of ow + 2 (kw - 1) positions), and where
// each weight of the transposed structure reads that padded dy for input row 0 (stride 1).
void PadOutputGradient(const int32_t* tp, const int32_t* tr, const float* dy, const dst::ConvShape& s,
                       float* padded, int64_t* offsets) {
  const int64_t pad = s.kw - 1, owp = s.ow + 2 * pad, b = s.batch;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < s.n_out * s.oh; ++r) {
    float* out = padded + r * owp * b;
    for (int64_t k = 0; k < pad * b; ++k) out[k] = out[(pad + s.ow) * b + k] = 0.0f;
    const float* in = dy + r * s.ow * b;
    for (int64_t k = 0; k < s.ow * b; ++k) out[pad * b + k] = in[k];
  }
  const int64_t keys = s.c_in * s.kh * s.kw;
#pragma omp parallel for schedule(static)
  for (int64_t key = 0; key < keys; ++key) {
    const int64_t i = key / s.kw % s.kh, j = key % s.kw;
    for (int64_t t = tp[key]; t < tp[key + 1]; ++t) offsets[t] = ((tr[t] * s.oh - i) * owp + (pad - j)) * b;
  }
}

// The weights of input channel c whose kernel row reaches padded input row h from an output row: one
// contiguous range [begin, end) of the transposed structure (keyed (c, i, j)).
inline std::pair<int64_t, int64_t> RowWeights(const int32_t* tp, const dst::ConvShape& s, int64_t c, int64_t h) {
  const int64_t i_lo = h - s.oh + 1 > 0 ? h - s.oh + 1 : 0, i_hi = h < s.kh - 1 ? h : s.kh - 1;
  if (i_lo > i_hi) return {0, 0};
  return {tp[(c * s.kh + i_lo) * s.kw], tp[(c * s.kh + i_hi + 1) * s.kw]};
}

void ConvDx(const float* v, const int32_t* tp, const int32_t* tr, const int32_t* ts, const float* dy, float* dx,
            const dst::ConvShape& s, float* padded, int64_t* offsets) {
  if (s.sh != 1 || s.sw != 1) return ConvDxStrided(v, tp, tr, ts, dy, dx, s);
  PadOutputGradient(tp, tr, dy, s, padded, offsets);
  const int64_t nnz = tp[s.c_in * s.kh * s.kw], row = (s.ow + 2 * (s.kw - 1)) * s.batch;
#pragma omp parallel for collapse(2) schedule(dynamic, 4)
  for (int64_t c = 0; c < s.c_in; ++c)
    for (int64_t h = 0; h < s.hp; ++h) {
      const auto [begin, end] = RowWeights(tp, s, c, h);
      const int64_t shift = h * row;
      AxpyRow(dx + (c * s.hp + h) * s.wp * s.batch, s.wp * s.batch, begin, end, Indirect{v, ts, nnz},
              [padded, offsets, shift](int64_t t) { return padded + (offsets[t] + shift); });
    }
}

// Both gradients of a stride-1 convolution in one pass (SparseProp's fused backward): for input row (c, h)
// each weight's shifted row of the padded dy is loaded once, for dx[c, h] += value * dy and for the partial
// dot <dy, x[c, h]> of its gradient (the padding is zero where the weight reads outside the output, so the
// dot over the whole input row is that row's term). One input channel per thread, so each weight's
// gradient has one writer.
void ConvDxDw(const float* v, const int32_t* tp, const int32_t* tr, const int32_t* ts, const float* dy,
              const float* x, float* dx, float* dv, const dst::ConvShape& s, float* padded, int64_t* offsets) {
  PadOutputGradient(tp, tr, dy, s, padded, offsets);
  const int64_t row = (s.ow + 2 * (s.kw - 1)) * s.batch, length = s.wp * s.batch;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < s.c_in; ++c) {
    for (int64_t t = tp[c * s.kh * s.kw]; t < tp[(c + 1) * s.kh * s.kw]; ++t) dv[ts[t]] = 0.0f;
    for (int64_t h = 0; h < s.hp; ++h) {
      const auto [begin, end] = RowWeights(tp, s, c, h);
      const int64_t shift = h * row, at = (c * s.hp + h) * length;
      FusedRow(dx + at, dv, v, ts, [padded, offsets, shift](int64_t t) { return padded + (offsets[t] + shift); },
               x + at, length, begin, end, false);
    }
  }
}

// The value gradient at the nonzeros: each weight's dot product of its output channel's gradient with the
// input it read, over every output row. Output row by output row, the channel's weights four at a time share
// each load of the gradient row (Dot4), which stays in L1 across all of them.
void ConvDw(const int32_t* c, const int32_t* p, const float* dy, const float* x, float* dv,
            const dst::ConvShape& s) {
  const ConvRuns runs = RunsOf(s);
  auto input = [c, x, &s](int64_t t, int64_t oh, int64_t r) {
    const ConvTap tap = TapOf(c[t], s);
    return x + ((tap.c * s.hp + oh * s.sh + tap.i) * s.wp + r * s.sw + tap.j) * s.batch;
  };
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t o = 0; o < s.n_out; ++o) {
    const int64_t begin = p[o], end = p[o + 1];
    for (int64_t t = begin; t < end; ++t) dv[t] = 0.0f;
    for (int64_t oh = 0; oh < s.oh; ++oh)
      for (int64_t r = 0; r < runs.count; ++r) {
        const float* d = dy + ((o * s.oh + oh) * s.ow + r) * s.batch;
        int64_t t = begin;
        float four[4];
        for (; t + 4 <= end; t += 4) {
          Dot4(d, input(t, oh, r), input(t + 1, oh, r), input(t + 2, oh, r), input(t + 3, oh, r), runs.length,
               four);
          for (int k = 0; k < 4; ++k) dv[t + k] += four[k];
        }
        for (; t < end; ++t) dv[t] += Dot(d, input(t, oh, r), runs.length);
      }
  }
}

// The argument checks of every call, vectorised (a min/max reduction) and, for long arrays, on every
// core: a serial loop with an early exit cost as much as a batch-of-one product.
bool AllInRange(const int32_t* a, int64_t n, int32_t lo, int32_t hi) {
  int32_t low = INT32_MAX, high = INT32_MIN;
#pragma omp parallel for reduction(min : low) reduction(max : high) schedule(static) if (n >= (int64_t{1} << 20))
  for (int64_t j = 0; j < n; ++j) {
    low = a[j] < low ? a[j] : low;
    high = a[j] > high ? a[j] : high;
  }
  return n == 0 || (low >= lo && high < hi);
}

bool NonDecreasing(const int32_t* a, int64_t n) {
  int bad = 0;
#pragma omp parallel for reduction(| : bad) schedule(static) if (n >= (int64_t{1} << 20))
  for (int64_t j = 1; j < n; ++j) bad |= a[j] < a[j - 1];
  return bad == 0;
}

}  // namespace

namespace dst {
extern const KernelTable DST_ISA_TABLE = {DST_ISA_NAME, Spmm, Spmv, SpmmTransposed, Sddmm, SpmmTransposedSddmm,
                                         kFusedHoldsX, Conv, ConvDx, ConvDw, ConvDxDw, AllInRange,
                                         NonDecreasing};
}  // namespace dst
