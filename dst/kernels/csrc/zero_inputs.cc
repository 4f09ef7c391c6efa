// See zero_inputs.h.

#include "zero_inputs.h"

#include <atomic>

namespace dst {
namespace {
std::atomic<bool> g_skip{true};
std::atomic<int64_t> g_weights{0}, g_skipped{0};
}  // namespace

bool SkipZeroInputs() { return g_skip.load(std::memory_order_relaxed); }

bool SetSkipZeroInputs(bool on) { return g_skip.exchange(on); }

void CountZeroInputs(int64_t weights, int64_t skipped) {
  g_weights.fetch_add(weights, std::memory_order_relaxed);
  g_skipped.fetch_add(skipped, std::memory_order_relaxed);
}

std::pair<int64_t, int64_t> TakeZeroInputCounts() { return {g_weights.exchange(0), g_skipped.exchange(0)}; }

int64_t ZeroRows(const float* x, int64_t rows, int64_t length, std::vector<uint8_t>& zero) {
  zero.assign(rows, 0);
  int64_t count = 0;
  // A live row usually shows a nonzero in its first floats, so the scan costs little but for zero rows.
#pragma omp parallel for reduction(+ : count) schedule(static) if (rows * length >= (int64_t{1} << 18))
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * length;
    int64_t k = 0;
    while (k < length && row[k] == 0.0f) ++k;
    zero[r] = k == length;
    count += zero[r];
  }
  return count;
}

void DropZeroInputs(const float* values, const int32_t* cols, const int32_t* rowptr, int64_t n_out,
                    const std::vector<uint8_t>& zero_col, NonZeroInputs* out) {
  out->rowptr.assign(n_out + 1, 0);
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < n_out; ++o) {
    int32_t kept = 0;
    for (int64_t t = rowptr[o]; t < rowptr[o + 1]; ++t) kept += !zero_col[cols[t]];
    out->rowptr[o + 1] = kept;
  }
  for (int64_t o = 0; o < n_out; ++o) out->rowptr[o + 1] += out->rowptr[o];
  const int64_t kept = out->rowptr[n_out];
  out->values.resize(values ? kept : 0);
  out->cols.resize(kept);
  out->slots.resize(kept);
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < n_out; ++o) {
    int64_t at = out->rowptr[o];
    for (int64_t t = rowptr[o]; t < rowptr[o + 1]; ++t) {
      if (zero_col[cols[t]]) continue;
      if (values) out->values[at] = values[t];
      out->cols[at] = cols[t];
      out->slots[at++] = static_cast<int32_t>(t);
    }
  }
}

void ScatterKept(const std::vector<float>& kept, const std::vector<int32_t>& slots, float* out, int64_t nnz) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < nnz; ++t) out[t] = 0.0f;
  const int64_t n = static_cast<int64_t>(kept.size());
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < n; ++k) out[slots[k]] = kept[k];
}

std::vector<uint8_t> ColumnsOfChannels(const std::vector<uint8_t>& zero_channel, int64_t taps) {
  const int64_t c_in = static_cast<int64_t>(zero_channel.size());
  std::vector<uint8_t> out(taps * c_in);
  for (int64_t k = 0; k < taps * c_in; ++k) out[k] = zero_channel[k % c_in];
  return out;
}

bool ThinZeroInputs(const float* values, const int32_t* cols, const int32_t* rowptr, int64_t n_out, int64_t weights,
                    const float* x, int64_t rows, int64_t length, int64_t taps, NonZeroInputs* kept) {
  if (!SkipZeroInputs()) return false;
  std::vector<uint8_t> zero;
  const bool pays = SkippingPays(ZeroRows(x, rows, length, zero), rows);
  if (pays) DropZeroInputs(values, cols, rowptr, n_out, taps == 1 ? zero : ColumnsOfChannels(zero, taps), kept);
  CountZeroInputs(weights, pays ? rowptr[n_out] - kept->rowptr[n_out] : 0);
  return pays;
}

}  // namespace dst
