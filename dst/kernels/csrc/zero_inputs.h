// Skipping the weights whose input is zero across the whole batch (issue "Sparse convolutions on the
// kernels", activation sparsity): a dead ReLU unit, a blank border pixel of every image, a convolution's
// input channel that is zero everywhere. Such a weight adds nothing to the forward product and has a zero
// value gradient, so the handlers drop it from the structure they pass to the loops (one O(nnz) pass; the
// loops stay as they are in every instruction set) and write zero gradients for it. Adding `w * 0` and
// skipping it give the same floats, but for a weight that is inf or NaN.
#pragma once

#include <cstdint>
#include <vector>

namespace dst {

// Whether the handlers skip such weights (default on; dst.kernels.skip_zero_inputs switches it).
bool SkipZeroInputs();
bool SetSkipZeroInputs(bool on);   // returns the setting before

// Weights the forward and value-gradient handlers were given, and how many of them they skipped, since
// the last call (dst.kernels.zero_input_counts); reset by it.
void CountZeroInputs(int64_t weights, int64_t skipped);
std::pair<int64_t, int64_t> TakeZeroInputCounts();

// zero[r] = 1 where row r of x (rows x length floats, row-major) is all zero; returns how many are.
int64_t ZeroRows(const float* x, int64_t rows, int64_t length, std::vector<uint8_t>& zero);

// A CSR structure without the weights that read a zero row (the row of column k is k % modulus): its
// values (when given), columns and row pointers, and the slot each kept weight had.
struct NonZeroInputs {
  std::vector<float> values;
  std::vector<int32_t> cols, rowptr, slots;
};
void DropZeroInputs(const float* values, const int32_t* cols, const int32_t* rowptr, int64_t n_out,
                    int64_t modulus, const std::vector<uint8_t>& zero, NonZeroInputs* out);

}  // namespace dst
