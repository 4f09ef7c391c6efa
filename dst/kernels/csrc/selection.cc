// The topology ops of prune-and-regrow on stored layers (dst.train.stored_update): the positions of a
// mask's true entries, an exact top-k by (key, priority), the merge of kept and grown weights into CSR
// order, the transposed structure of a topology, and a dense mask's slots in CSR order with any dense array
// read at them (compress, without transposing the mask). Written as XLA programs they are loops of counting
// passes, searches and sorts that XLA compiles anew for every layer of every update (the selections alone
// were 1.7 s of the default experiment's 5.2 s epoch compile on csr); here each is one O(n) call that
// compiles to nothing.

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <functional>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/c_api.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// index[:] = the positions of the first `size` true entries of `mask`, in order, then zeros;
// count = the number of true entries (it may exceed `size`). jnp.nonzero(mask, size=size) in one pass:
// XLA's cumsum on the CPU costs about 10 ns per element, and a prune-and-regrow update compacts
// every block of a wide layer's grow score.
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

// An element's rank: its key, then its priority, then a last tie-break word (0 unless the caller gives one:
// the input of a weight whose 32-bit flat position, and so priority, another weight of a layer of 2^32+
// positions shares). prio(i) returns the priority in its high and the tie-break in its low 32 bits.
using Rank = unsigned __int128;
inline Rank RankOf(uint32_t key, uint64_t prio) { return (Rank{key} << 64) | prio; }

// TopK (below) when a sample does not bracket the k-th key: a histogram of the keys' top 16
// bits finds the bin that holds it; only that bin's elements are ranked exactly (nth_element on
// their ranks), so the memory is the bin's, not the array's, and prio is called for them only.
template <typename Priority>
void TopKByHistogram(const uint32_t* key, int64_t n, int64_t want, Priority prio, bool* out) {
  std::vector<int32_t> histogram(1 << 16, 0);   // int32: 256 KiB stays in the L2 cache
  int64_t eligible = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (key[i] != 0) {
      ++histogram[key[i] >> 16];
      ++eligible;
    }
  }
  want = std::min(want, eligible);
  if (want == 0 || want == eligible) {
    for (int64_t i = 0; i < n; ++i) out[i] = want > 0 && key[i] != 0;
    return;
  }
  int64_t bin = (1 << 16) - 1, above = 0;     // elements in bins above `bin`
  while (above + histogram[bin] < want) above += histogram[bin--];
  std::vector<Rank> ranked;
  ranked.reserve(histogram[bin]);
  for (int64_t i = 0; i < n; ++i)
    if (key[i] != 0 && (key[i] >> 16) == bin) ranked.push_back(RankOf(key[i], prio(i)));
  std::vector<Rank> order(ranked);            // ranked keeps the bin's elements in index order
  const int64_t need = want - above;          // 1 <= need <= the bin's count
  std::nth_element(order.begin(), order.begin() + (need - 1), order.end(), std::greater<Rank>());
  const Rank threshold = order[need - 1];
  int64_t next = 0;                            // the next bin element
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = key[i] >> 16;
    bool take = key[i] != 0 && b > bin;
    if (key[i] != 0 && b == bin) take = ranked[next++] >= threshold;
    out[i] = take;
  }
}

// chosen[i] = whether element i is among the min(k, eligible) largest by (keys[i], prio(i)), keys[i] = 0
// marking an ineligible element: dst.selection.top_k_of_keys's selection (priorities are unique, so exactly
// that many are chosen). A strided sample of 2^16 keys brackets the k-th largest key in [lo, hi] (its
// expected sample rank +- 3 sigma); one pass then takes every key above hi and collects the keys inside the
// bracket, of which only the missing number is ranked exactly by (key, priority). Exactness never rests on
// the sample: when the pass's counts show the k-th key outside the bracket, the histogram way decides.
// One pass instead of the histogram's three, whose random bin increments cost most of a large call.
template <typename Priority>
ffi::Error TopK(const uint32_t* key, int64_t n, int32_t k, Priority prio, bool* out) {
  const int64_t want = std::max<int32_t>(k, 0);
  constexpr int64_t kSample = 1 << 16;
  if (want == 0 || n < 4 * kSample) {
    TopKByHistogram(key, n, want, prio, out);
    return ffi::Error::Success();
  }
  const int64_t stride = n / kSample;
  std::vector<uint32_t> sample;                 // the sampled eligible keys
  sample.reserve(kSample);
  for (int64_t j = 0; j < kSample; ++j)
    if (key[j * stride] != 0) sample.push_back(key[j * stride]);
  const double expect = static_cast<double>(want) * kSample / n;   // the k-th key's rank in the sample
  const double margin = 3.0 * std::sqrt(std::max(expect, 1.0)) + 8.0;
  const int64_t rank_hi = static_cast<int64_t>(std::floor(expect - margin));   // above the k-th key
  const int64_t rank_lo = static_cast<int64_t>(std::ceil(expect + margin));    // below it
  const int64_t m = static_cast<int64_t>(sample.size());
  if (rank_lo >= m) {   // the k-th key may be among the lowest: the sample cannot bracket it
    TopKByHistogram(key, n, want, prio, out);
    return ffi::Error::Success();
  }
  std::sort(sample.begin(), sample.end(), std::greater<uint32_t>());
  const uint32_t lo = sample[rank_lo];
  const uint32_t hi = rank_hi >= 0 ? sample[rank_hi] : UINT32_MAX;
  int64_t above = 0;
  std::vector<int64_t> inside;                  // the eligible elements with lo <= key <= hi
  inside.reserve(static_cast<size_t>(4 * margin * stride) + 16);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t v = key[i];
    out[i] = v > hi;
    above += v > hi;
    if (v >= lo && v <= hi && v != 0) inside.push_back(i);
  }
  const int64_t need = want - above;
  if (need < 1 || need > static_cast<int64_t>(inside.size())) {   // the k-th key lies outside [lo, hi]
    TopKByHistogram(key, n, want, prio, out);
    return ffi::Error::Success();
  }
  std::vector<Rank> ranked(inside.size());
  for (size_t c = 0; c < inside.size(); ++c) ranked[c] = RankOf(key[inside[c]], prio(inside[c]));
  std::vector<Rank> order(ranked);
  std::nth_element(order.begin(), order.begin() + (need - 1), order.end(), std::greater<Rank>());
  const Rank threshold = order[need - 1];
  for (size_t c = 0; c < inside.size(); ++c) out[inside[c]] = ranked[c] >= threshold;
  return ffi::Error::Success();
}

ffi::Error TopKImpl(ffi::Buffer<ffi::U32> keys, ffi::Buffer<ffi::U32> priorities, ffi::Buffer<ffi::S32> k,
                    ffi::ResultBuffer<ffi::PRED> chosen) {
  const int64_t n = keys.element_count();
  if (priorities.element_count() != n || chosen->element_count() != n)
    return ffi::Error::InvalidArgument("dst_top_k: keys, priorities and the result differ in size");
  const uint32_t* prio = priorities.typed_data();
  return TopK(keys.typed_data(), n, *k.typed_data(), [prio](int64_t i) { return uint64_t{prio[i]} << 32; },
              chosen->typed_data());
}

// dst.selection.priorities_at's keyed hash of a position (change both or neither).
inline uint32_t Priority(uint32_t position, const uint32_t* seeds) {
  uint32_t h = position ^ seeds[0];
  h *= seeds[1] | 1u;
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h ^ seeds[2];
}

// dst_top_k with the priorities of dst.selection.Priorities: the hash of each element's position
// (positions[i], or i when positions is empty) under seeds, computed for the ranked elements only; then, where
// tiebreak is given (not empty), tiebreak[i] among equal priorities.
ffi::Error TopKHashedImpl(ffi::Buffer<ffi::U32> keys, ffi::Buffer<ffi::S32> positions, ffi::Buffer<ffi::U32> seeds,
                          ffi::Buffer<ffi::S32> tiebreak, ffi::Buffer<ffi::S32> k, ffi::ResultBuffer<ffi::PRED> chosen) {
  const int64_t n = keys.element_count();
  const int64_t n_positions = positions.element_count(), n_tiebreak = tiebreak.element_count();
  if ((n_positions != 0 && n_positions != n) || (n_tiebreak != 0 && n_tiebreak != n) ||
      chosen->element_count() != n || seeds.element_count() != 3)
    return ffi::Error::InvalidArgument("dst_top_k_hashed: keys, positions, tiebreak and the result differ in size");
  const uint32_t* seed = seeds.typed_data();
  const int32_t* at = positions.typed_data();
  const int32_t* last = tiebreak.typed_data();
  const auto position = [&](int64_t i) { return static_cast<uint32_t>(n_positions == 0 ? i : at[i]); };
  const auto word = [&](int64_t i) { return n_tiebreak == 0 ? 0u : static_cast<uint32_t>(last[i]); };
  return TopK(keys.typed_data(), n, *k.typed_data(),
              [&](int64_t i) { return (uint64_t{Priority(position(i), seed)} << 32) | word(i); }, chosen->typed_data());
}

// The kept slots `a` (CSR order: by unit, then input; holes where a_live is false) and the grown weights
// `b` (CSR order, live ones first) merged into CSR order: cols, units (n_out for an unused slot),
// source (a's slot of each kept weight; -1 for a grown or unused one) and rowptr (unused slots belong
// to the last unit, rowptr[n_out] = capacity). Kept and grown positions are distinct.
ffi::Error MergeImpl(ffi::Buffer<ffi::S32> a_cols, ffi::Buffer<ffi::S32> a_units, ffi::Buffer<ffi::PRED> a_live,
                     ffi::Buffer<ffi::S32> b_cols, ffi::Buffer<ffi::S32> b_units, ffi::Buffer<ffi::PRED> b_live,
                     ffi::ResultBuffer<ffi::S32> cols, ffi::ResultBuffer<ffi::S32> units,
                     ffi::ResultBuffer<ffi::S32> source, ffi::ResultBuffer<ffi::S32> rowptr) {
  const int64_t na = a_cols.element_count(), nb = b_cols.element_count(), cap = cols->element_count();
  const int64_t n_out = rowptr->element_count() - 1;
  if (a_units.element_count() != na || a_live.element_count() != na || b_units.element_count() != nb ||
      b_live.element_count() != nb || units->element_count() != cap || source->element_count() != cap)
    return ffi::Error::InvalidArgument("dst_merge: the slot arrays differ in size");
  const int32_t *ac = a_cols.typed_data(), *au = a_units.typed_data(), *bc = b_cols.typed_data(),
                *bu = b_units.typed_data();
  const bool *al = a_live.typed_data(), *bl = b_live.typed_data();
  int32_t *oc = cols->typed_data(), *ou = units->typed_data(), *os = source->typed_data(), *rp = rowptr->typed_data();
  int64_t i = 0, j = 0, out = 0;
  for (;;) {
    while (i < na && !al[i]) ++i;
    while (j < nb && !bl[j]) ++j;
    if (i == na && j == nb) break;
    if (out == cap) return ffi::Error::InvalidArgument("dst_merge: more live weights than slots");
    const bool take_a = j == nb || (i < na && (au[i] < bu[j] || (au[i] == bu[j] && ac[i] < bc[j])));
    const int32_t unit = take_a ? au[i] : bu[j];
    if (unit < 0 || unit >= n_out) return ffi::Error::InvalidArgument("dst_merge: a live weight's unit is out of range");
    oc[out] = take_a ? ac[i] : bc[j];
    ou[out] = unit;
    os[out] = take_a ? static_cast<int32_t>(i) : -1;
    ++out;
    take_a ? ++i : ++j;
  }
  for (int64_t s = out; s < cap; ++s) {
    oc[s] = 0;
    ou[s] = static_cast<int32_t>(n_out);
    os[s] = -1;
  }
  int64_t s = 0;   // rowptr[o] = the first slot of a unit >= o
  for (int64_t o = 0; o < n_out; ++o) {
    while (s < out && ou[s] < o) ++s;
    rp[o] = static_cast<int32_t>(s);
  }
  rp[n_out] = static_cast<int32_t>(cap);
  return ffi::Error::Success();
}

// The structure of a topology by input (dst.kernels.Transposed): a stable counting sort of the slots by
// their input, each with its output unit (n_out for a slot past rowptr[n_out]).
ffi::Error TransposeImpl(ffi::Buffer<ffi::S32> cols, ffi::Buffer<ffi::S32> rowptr,
                         ffi::ResultBuffer<ffi::S32> t_rowptr, ffi::ResultBuffer<ffi::S32> t_rows,
                         ffi::ResultBuffer<ffi::S32> t_slots) {
  const int64_t nnz = cols.element_count(), n_out = rowptr.element_count() - 1;
  const int64_t n_in = t_rowptr->element_count() - 1;
  if (t_rows->element_count() != nnz || t_slots->element_count() != nnz)
    return ffi::Error::InvalidArgument("dst_transpose: the transposed arrays differ in size from cols");
  const int32_t *c = cols.typed_data(), *rp = rowptr.typed_data();
  int32_t *tp = t_rowptr->typed_data(), *tr = t_rows->typed_data(), *ts = t_slots->typed_data();
  std::vector<int32_t> row(nnz, static_cast<int32_t>(n_out));
  for (int64_t o = 0; o < n_out; ++o)
    for (int64_t s = std::max<int64_t>(rp[o], 0); s < std::min<int64_t>(rp[o + 1], nnz); ++s) row[s] = o;
  std::vector<int64_t> next(n_in + 1, 0);
  for (int64_t s = 0; s < nnz; ++s) {
    if (c[s] < 0 || c[s] >= n_in) return ffi::Error::InvalidArgument("dst_transpose: cols must lie in [0, n_in)");
    ++next[c[s] + 1];
  }
  for (int64_t i = 0; i < n_in; ++i) next[i + 1] += next[i];
  for (int64_t i = 0; i <= n_in; ++i) tp[i] = static_cast<int32_t>(next[i]);
  for (int64_t s = 0; s < nnz; ++s) {
    const int64_t at = next[c[s]]++;
    ts[at] = static_cast<int32_t>(s);
    tr[at] = row[s];
  }
  return ffi::Error::Success();
}

// The first slot of each output unit of a dense row-major (n_in, n_out) mask in CSR order, clamped at
// `capacity` (rowptr[o] = min(true entries of units < o, capacity), rowptr[n_out] = capacity): one
// row-major pass of per-unit counts, vectorised, where a column-major walk would miss the cache at
// every entry.
int64_t UnitStarts(const bool* m, int64_t n_in, int64_t n_out, int64_t capacity, int32_t* rowptr) {
  std::vector<int32_t> per_unit(n_out, 0);
  for (int64_t i = 0; i < n_in; ++i) {
    const bool* row = m + i * n_out;
    for (int64_t o = 0; o < n_out; ++o) per_unit[o] += row[o];
  }
  int64_t total = 0;
  for (int64_t o = 0; o < n_out; ++o) {
    rowptr[o] = static_cast<int32_t>(std::min(total, capacity));
    total += per_unit[o];
  }
  rowptr[n_out] = static_cast<int32_t>(capacity);
  return total;
}

// Calls put(slot, i, o) for every true entry (i, o) of the mask that has a slot, in row-major order:
// each unit writes at its own cursor, from rowptr[o] up to rowptr[o + 1], so the slots come out in CSR
// order (by unit, then input) while the dense arrays are read front to back. The last unit ends at the
// capacity: a mask with more entries than slots keeps its first ones in CSR order.
// Calls visit(o) for every true entry o of a row of bools, in order: 64 entries become one bit word (8 at a
// time by a multiply that gathers each byte's low bit), so a sparse row costs a pass over its words, not a
// mispredicted branch per entry.
template <typename Visit>
void ForEachTrue(const bool* row, int64_t n, Visit visit) {
  for (int64_t start = 0; start < n; start += 64) {
    const int64_t width = std::min<int64_t>(64, n - start);
    uint64_t bits = 0;
    int64_t k = 0;
    for (; k + 8 <= width; k += 8) {
      uint64_t bytes;
      std::memcpy(&bytes, row + start + k, 8);   // eight bools, 0 or 1 each
      bits |= ((bytes * 0x0102040810204080ULL) >> 56) << k;
    }
    for (; k < width; ++k) bits |= uint64_t{row[start + k]} << k;
    while (bits) {
      visit(start + __builtin_ctzll(bits));
      bits &= bits - 1;
    }
  }
}

// Calls put(slot, i, o) for every true entry (i, o) of the mask that has a slot, in row-major order:
// each unit writes at its own cursor, from rowptr[o] up to rowptr[o + 1], so the slots come out in CSR
// order (by unit, then input) while the dense arrays are read front to back. The last unit ends at the
// capacity: a mask with more entries than slots keeps its first ones in CSR order.
template <typename Put>
void ForEachSlot(const bool* m, int64_t n_in, int64_t n_out, const int32_t* rowptr, Put put) {
  std::vector<int64_t> cursor(rowptr, rowptr + n_out);
  for (int64_t i = 0; i < n_in; ++i) {
    ForEachTrue(m + i * n_out, n_out, [&](int64_t o) {
      if (cursor[o] < rowptr[o + 1]) put(cursor[o]++, i, o);
    });
  }
}

// A dense (n_in, n_out) mask's entries as slots in CSR order (dst.backends' compress): cols (the input
// of each slot; 0 for padding), rowptr and count, the number of true entries (it may exceed the slots).
ffi::Error SlotsByUnitImpl(ffi::Buffer<ffi::PRED> mask, ffi::ResultBuffer<ffi::S32> cols,
                           ffi::ResultBuffer<ffi::S32> rowptr, ffi::ResultBuffer<ffi::S32> count) {
  const auto dims = mask.dimensions();
  if (dims.size() != 2 || rowptr->element_count() != dims[1] + 1)
    return ffi::Error::InvalidArgument("dst_slots_by_unit: the mask must be [n_in, n_out] and rowptr [n_out + 1]");
  const int64_t n_in = dims[0], n_out = dims[1], capacity = cols->element_count();
  int32_t* c = cols->typed_data();
  int32_t* rp = rowptr->typed_data();
  const int64_t total = UnitStarts(mask.typed_data(), n_in, n_out, capacity, rp);
  std::fill(c, c + capacity, 0);
  ForEachSlot(mask.typed_data(), n_in, n_out, rp, [&](int64_t slot, int64_t i, int64_t) {
    c[slot] = static_cast<int32_t>(i);
  });
  *count->typed_data() = static_cast<int32_t>(std::min<int64_t>(total, INT32_MAX));
  return ffi::Error::Success();
}

template <typename T>
void GatherByUnit(const bool* m, int64_t n_in, int64_t n_out, const int32_t* rowptr, const void* x, void* out,
                  int64_t capacity) {
  const T* in = static_cast<const T*>(x);
  T* o = static_cast<T*>(out);
  std::fill(o, o + capacity, T{});
  ForEachSlot(m, n_in, n_out, rowptr, [&](int64_t slot, int64_t i, int64_t unit) { o[slot] = in[i * n_out + unit]; });
}

// A dense (n_in, n_out) array read at the slots of a mask (rowptr from dst_slots_by_unit): x[cols, units]
// in CSR order, zero on padding, in one front-to-back pass over x and the mask. Any 1-, 2-, 4- or 8-byte
// element type (values, moments, flags).
ffi::Error GatherByUnitImpl(ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::S32> rowptr, ffi::AnyBuffer x,
                            ffi::Result<ffi::AnyBuffer> out) {
  const auto dims = mask.dimensions();
  if (dims.size() != 2 || rowptr.element_count() != dims[1] + 1 ||
      static_cast<int64_t>(x.element_count()) != dims[0] * dims[1] || x.element_type() != out->element_type())
    return ffi::Error::InvalidArgument("dst_gather_by_unit: x must be the mask's [n_in, n_out] shape and out its type");
  const int64_t n_in = dims[0], n_out = dims[1], capacity = out->element_count();
  const bool* m = mask.typed_data();
  const int32_t* rp = rowptr.typed_data();
  switch (ffi::ByteWidth(x.element_type())) {
    case 1: GatherByUnit<uint8_t>(m, n_in, n_out, rp, x.untyped_data(), out->untyped_data(), capacity); break;
    case 2: GatherByUnit<uint16_t>(m, n_in, n_out, rp, x.untyped_data(), out->untyped_data(), capacity); break;
    case 4: GatherByUnit<uint32_t>(m, n_in, n_out, rp, x.untyped_data(), out->untyped_data(), capacity); break;
    case 8: GatherByUnit<uint64_t>(m, n_in, n_out, rp, x.untyped_data(), out->untyped_data(), capacity); break;
    default: return ffi::Error::InvalidArgument("dst_gather_by_unit: elements of 1, 2, 4 or 8 bytes only");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstMerge, MergeImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()   // a_cols [na]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // a_units [na]
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // a_live [na]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // b_cols [nb]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // b_units [nb]
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // b_live [nb]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // cols [capacity]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // units [capacity]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // source [capacity]
                                  .Ret<ffi::Buffer<ffi::S32>>()); // rowptr [n_out + 1]

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstTranspose, TransposeImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()   // cols [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // rowptr [n_out + 1]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // t_rowptr [n_in + 1]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // t_rows [nnz]
                                  .Ret<ffi::Buffer<ffi::S32>>()); // t_slots [nnz]

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstCompact, CompactImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // mask [n]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // index [size]
                                  .Ret<ffi::Buffer<ffi::S32>>()); // count []

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstTopK, TopKImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()   // keys [n] (0: ineligible)
                                  .Arg<ffi::Buffer<ffi::U32>>()   // priorities [n]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // k []
                                  .Ret<ffi::Buffer<ffi::PRED>>()); // chosen [n]

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstSlotsByUnit, SlotsByUnitImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // mask [n_in, n_out]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // cols [capacity]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // rowptr [n_out + 1]
                                  .Ret<ffi::Buffer<ffi::S32>>()); // count []

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstGatherByUnit, GatherByUnitImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // mask [n_in, n_out]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // rowptr [n_out + 1]
                                  .Arg<ffi::AnyBuffer>()          // x [n_in, n_out]
                                  .Ret<ffi::AnyBuffer>());        // out [capacity]

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstTopKHashed, TopKHashedImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()   // keys [n] (0: ineligible)
                                  .Arg<ffi::Buffer<ffi::S32>>()   // positions [n] or [0] (the flat index)
                                  .Arg<ffi::Buffer<ffi::U32>>()   // seeds [3]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // tiebreak [n] or [0] (none)
                                  .Arg<ffi::Buffer<ffi::S32>>()   // k []
                                  .Ret<ffi::Buffer<ffi::PRED>>()); // chosen [n]
