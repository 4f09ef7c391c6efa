// Sparse convolutions without im2col: the XLA FFI handlers (argument checks) of the conv loops in
// kernels_isa.cc, which run in the instruction set chosen at load time (sparse_matmul.cc).
//
// A convolution's kernel [kh, kw, c_in, n_out] is stored as compressed rows over its output channels in
// the matrix view the structures use (a column k = (i * kw + j) * c_in + c), so a stored convolution is
// one more CSR layer. Activations are batch-last, [channels, height, width, batch], and the loops run
// VALID convolutions over an input the caller padded (SAME padding is a pad before the call and a slice
// of the input gradient after it).

#include <cstdint>
#include <string>
#include <vector>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include "kernels.h"
#include "zero_inputs.h"

#include "xla/ffi/api/c_api.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// [channels, height, width, batch] of a batch-last activation, or false.
bool Dims4(ffi::Buffer<ffi::F32>& a, int64_t out[4]) {
  auto dims = a.dimensions();
  if (dims.size() != 4) return false;
  for (int k = 0; k < 4; ++k) out[k] = dims[k];
  return true;
}

ffi::Error Invalid(const char* what) { return ffi::Error::InvalidArgument(std::string("dst sparse conv: ") + what); }

// The shape of a call from x [c_in, hp, wp, B] (or dx), y [n_out, oh, ow, B] (or dy) and the attributes;
// an error where they disagree or a stride or kernel size is not positive.
ffi::Error ShapeOf(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& y, int64_t kh, int64_t kw, int64_t sh,
                   int64_t sw, dst::ConvShape* s) {
  int64_t xd[4], yd[4];
  if (!Dims4(x, xd) || !Dims4(y, yd)) return Invalid("activations must be [channels, height, width, batch]");
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1) return Invalid("kernel sizes and strides must be positive");
  *s = dst::ConvShape{xd[0], xd[1], xd[2], xd[3], kh, kw, sh, sw, yd[0], yd[1], yd[2]};
  if (yd[3] != s->batch) return Invalid("input and output batches differ");
  if (s->hp < kh || s->wp < kw || s->oh != (s->hp - kh) / sh + 1 || s->ow != (s->wp - kw) / sw + 1)
    return Invalid("the output's height and width must be the VALID convolution's of the padded input");
  return ffi::Error::Success();
}

// Rows over the output channels whose columns lie in the kernel's matrix view [0, kh * kw * c_in).
ffi::Error CheckRows(ffi::Buffer<ffi::S32>& cols, ffi::Buffer<ffi::S32>& rowptr, int64_t nnz,
                     const dst::ConvShape& s) {
  const dst::KernelTable& k = dst::ActiveKernels();
  if (rowptr.element_count() != s.n_out + 1) return Invalid("rowptr must have n_out + 1 entries");
  if (cols.element_count() != nnz) return Invalid("cols and values must have the same length");
  const int32_t* p = rowptr.typed_data();
  if (p[0] != 0 || p[s.n_out] != nnz || !k.nondecreasing(p, s.n_out + 1))
    return Invalid("rowptr must run from 0 to the number of values without decreasing");
  if (!k.all_in_range(cols.typed_data(), nnz, 0, static_cast<int32_t>(s.kh * s.kw * s.c_in)))
    return Invalid("cols must lie in [0, kh * kw * c_in)");
  return ffi::Error::Success();
}

ffi::Error ConvImpl(ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::S32> cols, ffi::Buffer<ffi::S32> rowptr,
                    ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, int64_t kh, int64_t kw, int64_t sh,
                    int64_t sw) {
  dst::ConvShape s;
  if (auto err = ShapeOf(x, *y, kh, kw, sh, sw, &s); err.failure()) return err;
  const int64_t nnz = values.element_count();
  if (auto err = CheckRows(cols, rowptr, nnz, s); err.failure()) return err;
  const float* v = values.typed_data();
  const int32_t *c = cols.typed_data(), *p = rowptr.typed_data();
  dst::NonZeroInputs kept;   // the weights of input channels that are zero everywhere add nothing
  if (dst::ThinZeroInputs(v, c, p, s.n_out, nnz, x.typed_data(), s.c_in, s.hp * s.wp * s.batch, s.kh * s.kw, &kept))
    v = kept.values.data(), c = kept.cols.data(), p = kept.rowptr.data();
  std::vector<int64_t> offsets(p[s.n_out]);
  dst::ActiveKernels().conv(v, c, p, x.typed_data(), y->typed_data(), s, offsets.data());
  return ffi::Error::Success();
}

// tptr has c_in * kh * kw + 1 entries: the weights of input channel c at kernel offset (i, j) are the entries
// [tptr[key], tptr[key + 1]) with key = (c * kh + i) * kw + j, at output channel trows[t] and slot tslots[t].
ffi::Error CheckTransposed(ffi::Buffer<ffi::S32>& tptr, ffi::Buffer<ffi::S32>& trows, ffi::Buffer<ffi::S32>& tslots,
                           int64_t nnz, const dst::ConvShape& s) {
  const dst::KernelTable& k = dst::ActiveKernels();
  const int64_t keys = s.c_in * s.kh * s.kw;
  if (tptr.element_count() != keys + 1 || trows.element_count() != nnz || tslots.element_count() != nnz)
    return Invalid("the transposed structure must have c_in * kh * kw + 1 row pointers and one entry per value");
  const int32_t* p = tptr.typed_data();
  if (p[0] != 0 || p[keys] != nnz || !k.nondecreasing(p, keys + 1))
    return Invalid("the transposed row pointers must run from 0 to the number of values without decreasing");
  if (!k.all_in_range(trows.typed_data(), nnz, 0, static_cast<int32_t>(s.n_out)) ||
      !k.all_in_range(tslots.typed_data(), nnz, 0, static_cast<int32_t>(nnz)))
    return Invalid("the transposed structure's rows must lie in [0, n_out) and its slots in [0, nnz)");
  return ffi::Error::Success();
}

// Scratch of the stride-1 input gradient: dy padded by kw - 1 on each side of each row, each weight's offset.
struct DxScratch {
  std::vector<float> padded;
  std::vector<int64_t> offsets;
  DxScratch(const dst::ConvShape& s, int64_t nnz) {
    if (s.sh != 1 || s.sw != 1) return;
    padded.resize(s.n_out * s.oh * (s.ow + 2 * (s.kw - 1)) * s.batch);
    offsets.resize(nnz);
  }
};

ffi::Error ConvDxImpl(ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::S32> tptr, ffi::Buffer<ffi::S32> trows,
                      ffi::Buffer<ffi::S32> tslots, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx,
                      int64_t kh, int64_t kw, int64_t sh, int64_t sw) {
  dst::ConvShape s;
  if (auto err = ShapeOf(*dx, dy, kh, kw, sh, sw, &s); err.failure()) return err;
  const int64_t nnz = values.element_count();
  if (auto err = CheckTransposed(tptr, trows, tslots, nnz, s); err.failure()) return err;
  DxScratch scratch(s, nnz);
  dst::ActiveKernels().conv_dx(values.typed_data(), tptr.typed_data(), trows.typed_data(), tslots.typed_data(),
                               dy.typed_data(), dx->typed_data(), s, scratch.padded.data(), scratch.offsets.data());
  return ffi::Error::Success();
}

// Both gradients at stride 1 in one pass (kernels_isa.cc, ConvDxDw); x is the padded input, shaped as dx.
ffi::Error ConvBackwardImpl(ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::S32> tptr, ffi::Buffer<ffi::S32> trows,
                            ffi::Buffer<ffi::S32> tslots, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> x,
                            ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dvalues, int64_t kh,
                            int64_t kw, int64_t sh, int64_t sw) {
  dst::ConvShape s;
  if (auto err = ShapeOf(*dx, dy, kh, kw, sh, sw, &s); err.failure()) return err;
  if (s.sh != 1 || s.sw != 1) return Invalid("the fused backward pass takes stride 1");
  if (x.element_count() != dx->element_count()) return Invalid("the padded input must be shaped as its gradient");
  const int64_t nnz = values.element_count();
  if (dvalues->element_count() != nnz) return Invalid("the value gradient must have one entry per value");
  if (auto err = CheckTransposed(tptr, trows, tslots, nnz, s); err.failure()) return err;
  DxScratch scratch(s, nnz);
  dst::ActiveKernels().conv_dx_dw(values.typed_data(), tptr.typed_data(), trows.typed_data(), tslots.typed_data(),
                                  dy.typed_data(), x.typed_data(), dx->typed_data(), dvalues->typed_data(), s,
                                  scratch.padded.data(), scratch.offsets.data());
  return ffi::Error::Success();
}

ffi::Error ConvDwImpl(ffi::Buffer<ffi::S32> cols, ffi::Buffer<ffi::S32> rowptr, ffi::Buffer<ffi::F32> dy,
                      ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> dvalues, int64_t kh, int64_t kw,
                      int64_t sh, int64_t sw) {
  dst::ConvShape s;
  if (auto err = ShapeOf(x, dy, kh, kw, sh, sw, &s); err.failure()) return err;
  const int64_t nnz = dvalues->element_count();
  if (auto err = CheckRows(cols, rowptr, nnz, s); err.failure()) return err;
  // The weights of input channels that are zero everywhere have a zero gradient: the rest are computed.
  dst::ValueGradientSkipping(cols.typed_data(), rowptr.typed_data(), s.n_out, nnz, x.typed_data(), s.c_in,
                             s.hp * s.wp * s.batch, s.kh * s.kw, dvalues->typed_data(),
                             [&](const int32_t* c, const int32_t* p, float* out) {
                               dst::ActiveKernels().conv_dw(c, p, dy.typed_data(), x.typed_data(), out, s);
                             });
  return ffi::Error::Success();
}

// The layout changes around the loops, NHWC to batch-last with a zero border and back: per spatial position a
// [batch, channels] tile is transposed, in 4 x 4 blocks of SSE registers (x86-64's baseline; scalar elsewhere
// and at the edges). On a WRN-22-2 activation, 128 x 32 x 32 x 32, XLA's transpose and pad took 10-12 ms,
// about three times the sparse forward product it feeds (benchmarks/conv_parts_time.py).

// to[j * to_stride + i] = from[i * from_stride + j] for i < rows, j < cols.
inline void Transpose2D(const float* from, float* to, int64_t rows, int64_t cols, int64_t from_stride,
                        int64_t to_stride) {
  int64_t i = 0;
#if defined(__SSE2__)
  for (; i + 4 <= rows; i += 4) {
    int64_t j = 0;
    for (; j + 4 <= cols; j += 4) {
      __m128 r0 = _mm_loadu_ps(from + i * from_stride + j), r1 = _mm_loadu_ps(from + (i + 1) * from_stride + j);
      __m128 r2 = _mm_loadu_ps(from + (i + 2) * from_stride + j), r3 = _mm_loadu_ps(from + (i + 3) * from_stride + j);
      _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
      _mm_storeu_ps(to + j * to_stride + i, r0);
      _mm_storeu_ps(to + (j + 1) * to_stride + i, r1);
      _mm_storeu_ps(to + (j + 2) * to_stride + i, r2);
      _mm_storeu_ps(to + (j + 3) * to_stride + i, r3);
    }
    for (; j < cols; ++j)
      for (int64_t k = i; k < i + 4; ++k) to[j * to_stride + k] = from[k * from_stride + j];
  }
#endif
  for (; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) to[j * to_stride + i] = from[i * from_stride + j];
}

// An NHWC activation [B, H, W, C] and its batch-last form [C, Hp, Wp, B] holding it inside a border whose top and
// left are given: their sizes, or false where the two arrays do not fit together.
struct Bordered {
  int64_t batch, h, w, channels, hp, wp;
};
bool BorderedShape(ffi::Buffer<ffi::F32>& nhwc, ffi::Buffer<ffi::F32>& batch_last, int64_t top, int64_t left,
                   Bordered* s) {
  int64_t n[4], b[4];
  if (!Dims4(nhwc, n) || !Dims4(batch_last, b)) return false;
  *s = {n[0], n[1], n[2], n[3], b[1], b[2]};
  return b[0] == s->channels && b[3] == s->batch && top >= 0 && left >= 0 && top + s->h <= s->hp &&
         left + s->w <= s->wp;
}

ffi::Error ToBatchLastImpl(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> out, int64_t top, int64_t left) {
  Bordered s;
  if (!BorderedShape(x, *out, top, left, &s))
    return Invalid("the batch-last array must hold the input inside its border");
  const auto [batch, h, w, channels, hp, wp] = s;
  const float* src = x.typed_data();
  float* dst_ = out->typed_data();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < hp; ++r)
    for (int64_t q = 0; q < wp; ++q) {
      float* to = dst_ + (r * wp + q) * batch;
      if (r < top || r >= top + h || q < left || q >= left + w) {
        for (int64_t c = 0; c < channels; ++c)
          for (int64_t b = 0; b < batch; ++b) to[c * hp * wp * batch + b] = 0.0f;
        continue;
      }
      Transpose2D(src + ((r - top) * w + (q - left)) * channels, to, batch, channels, h * w * channels,
                  hp * wp * batch);
    }
  return ffi::Error::Success();
}

// The layout change after the loops: batch-last without its border back to NHWC, the same transpose the other way
// round (per output position a [channels, batch] tile read, a [batch, channels] tile written).
ffi::Error FromBatchLastImpl(ffi::Buffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> out, int64_t top, int64_t left) {
  Bordered s;
  if (!BorderedShape(*out, y, top, left, &s))
    return Invalid("the NHWC array must be the batch-last one inside its border");
  const auto [batch, h, w, channels, hp, wp] = s;
  const float* src = y.typed_data();
  float* dst_ = out->typed_data();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < h; ++r)
    for (int64_t q = 0; q < w; ++q)
      Transpose2D(src + ((r + top) * wp + (q + left)) * batch, dst_ + (r * w + q) * channels, channels, batch,
                  hp * wp * batch, h * w * channels);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstFromBatchLast, FromBatchLastImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // y [C, top + H + bottom, left + W + right, B]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // [B, H, W, C]
                                  .Attr<int64_t>("top")
                                  .Attr<int64_t>("left"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstToBatchLast, ToBatchLastImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x [B, H, W, C]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // [C, top + H + bottom, left + W + right, B]
                                  .Attr<int64_t>("top")
                                  .Attr<int64_t>("left"));

#define DST_CONV_ATTRS .Attr<int64_t>("kh").Attr<int64_t>("kw").Attr<int64_t>("sh").Attr<int64_t>("sw")

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstConv, ConvImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // values [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // cols [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // rowptr [n_out + 1]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x [c_in, hp, wp, B] (padded)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // y [n_out, oh, ow, B]
                                      DST_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstConvDx, ConvDxImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // values [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // tptr [c_in * kh * kw + 1]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // trows [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // tslots [nnz]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dy [n_out, oh, ow, B]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dx [c_in, hp, wp, B] (padded)
                                      DST_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstConvBackward, ConvBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // values [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // tptr [c_in * kh * kw + 1]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // trows [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // tslots [nnz]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dy [n_out, oh, ow, B]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x [c_in, hp, wp, B] (padded)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dx [c_in, hp, wp, B] (padded)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dvalues [nnz]
                                      DST_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstConvDw, ConvDwImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()   // cols [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // rowptr [n_out + 1]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dy [n_out, oh, ow, B]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x [c_in, hp, wp, B] (padded)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dvalues [nnz]
                                      DST_CONV_ATTRS);
