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

// Whether dropping the weights of `zero_rows` of `rows` inputs pays for copying the structure without them:
// only where a quarter of the inputs or more are zero. On LeNet-300-100 after an epoch 0.1% of its weights
// read a dead unit, and copying the structure at every call for them cost 9% of the step
// (benchmarks/zero_inputs_time.py).
inline bool SkippingPays(int64_t zero_rows, int64_t rows) { return zero_rows > 0 && zero_rows * 4 >= rows; }

// A CSR structure without the weights whose column reads a zero input (zero_col[k] for column k): its values
// (when given), columns and row pointers, and the slot each kept weight had. Two passes over the output rows
// on every core (count, then copy).
struct NonZeroInputs {
  std::vector<float> values;
  std::vector<int32_t> cols, rowptr, slots;
};
void DropZeroInputs(const float* values, const int32_t* cols, const int32_t* rowptr, int64_t n_out,
                    const std::vector<uint8_t>& zero_col, NonZeroInputs* out);

// out[slots[k]] = kept[k], and zero at every other of the nnz slots: the value gradient of a structure that
// DropZeroInputs thinned, back at the layer's slots.
void ScatterKept(const std::vector<float>& kept, const std::vector<int32_t>& slots, float* out, int64_t nnz);

// A convolution's zero flags per matrix-view column (k = (i * kw + j) * c_in + c) from its input channels'.
std::vector<uint8_t> ColumnsOfChannels(const std::vector<uint8_t>& zero_channel, int64_t taps);

// What every skipping handler does first: where skipping is on and pays, `kept` gets the structure without the
// weights of zero inputs and the call returns true; otherwise false (the layer's own structure runs). Counted
// either way while skipping is on (`weights`: the layer's slots). x holds `rows` inputs of `length` floats (a
// dense layer's input units, a convolution's padded input channels); `taps` matrix-view columns read each input
// row (kh * kw for a convolution, 1 for a dense layer). `values` may be null (a value gradient needs none).
bool ThinZeroInputs(const float* values, const int32_t* cols, const int32_t* rowptr, int64_t n_out, int64_t weights,
                    const float* x, int64_t rows, int64_t length, int64_t taps, NonZeroInputs* kept);

// A value gradient with the weights of zero inputs skipped: `run(cols, rowptr, out)` computes it over a
// structure, here the thinned one (its gradients scattered back to the layer's slots, zeros elsewhere) or the
// layer's own.
template <typename Run>
void ValueGradientSkipping(const int32_t* cols, const int32_t* rowptr, int64_t n_out, int64_t nnz, const float* x,
                           int64_t rows, int64_t length, int64_t taps, float* dvalues, Run run) {
  NonZeroInputs kept;
  if (!ThinZeroInputs(nullptr, cols, rowptr, n_out, nnz, x, rows, length, taps, &kept))
    return run(cols, rowptr, dvalues);
  std::vector<float> dv(kept.cols.size());
  run(kept.cols.data(), kept.rowptr.data(), dv.data());
  ScatterKept(dv, kept.slots, dvalues, nnz);
}

}  // namespace dst
