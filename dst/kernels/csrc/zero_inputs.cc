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
                    int64_t modulus, const std::vector<uint8_t>& zero, NonZeroInputs* out) {
  const int64_t nnz = rowptr[n_out];
  out->values.clear();
  out->cols.clear();
  out->slots.clear();
  out->rowptr.assign(n_out + 1, 0);
  if (values) out->values.reserve(nnz);
  out->cols.reserve(nnz);
  out->slots.reserve(nnz);
  for (int64_t o = 0; o < n_out; ++o) {
    for (int64_t t = rowptr[o]; t < rowptr[o + 1]; ++t) {
      if (zero[cols[t] % modulus]) continue;
      if (values) out->values.push_back(values[t]);
      out->cols.push_back(cols[t]);
      out->slots.push_back(static_cast<int32_t>(t));
    }
    out->rowptr[o + 1] = static_cast<int32_t>(out->cols.size());
  }
}

}  // namespace dst
