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

#include "kernels.h"

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
  std::vector<int64_t> offsets(nnz);
  dst::ActiveKernels().conv(values.typed_data(), cols.typed_data(), rowptr.typed_data(), x.typed_data(),
                            y->typed_data(), s, offsets.data());
  return ffi::Error::Success();
}

// tptr has c_in * kw * kh + 1 entries: the weights of input channel c at kernel offset (i, j) are the entries
// [tptr[key], tptr[key + 1]) with key = (c * kw + j) * kh + i, at output channel trows[t] and slot tslots[t].
ffi::Error ConvDxImpl(ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::S32> tptr, ffi::Buffer<ffi::S32> trows,
                      ffi::Buffer<ffi::S32> tslots, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx,
                      int64_t kh, int64_t kw, int64_t sh, int64_t sw) {
  dst::ConvShape s;
  if (auto err = ShapeOf(*dx, dy, kh, kw, sh, sw, &s); err.failure()) return err;
  const dst::KernelTable& k = dst::ActiveKernels();
  const int64_t nnz = values.element_count(), keys = s.c_in * s.kw * s.kh;
  if (tptr.element_count() != keys + 1 || trows.element_count() != nnz || tslots.element_count() != nnz)
    return Invalid("the transposed structure must have c_in * kw * kh + 1 row pointers and one entry per value");
  const int32_t* p = tptr.typed_data();
  if (p[0] != 0 || p[keys] != nnz || !k.nondecreasing(p, keys + 1))
    return Invalid("the transposed row pointers must run from 0 to the number of values without decreasing");
  if (!k.all_in_range(trows.typed_data(), nnz, 0, static_cast<int32_t>(s.n_out)) ||
      !k.all_in_range(tslots.typed_data(), nnz, 0, static_cast<int32_t>(nnz)))
    return Invalid("the transposed structure's rows must lie in [0, n_out) and its slots in [0, nnz)");
  k.conv_dx(values.typed_data(), p, trows.typed_data(), tslots.typed_data(), dy.typed_data(), dx->typed_data(), s);
  return ffi::Error::Success();
}

ffi::Error ConvDwImpl(ffi::Buffer<ffi::S32> cols, ffi::Buffer<ffi::S32> rowptr, ffi::Buffer<ffi::F32> dy,
                      ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> dvalues, int64_t kh, int64_t kw,
                      int64_t sh, int64_t sw) {
  dst::ConvShape s;
  if (auto err = ShapeOf(x, dy, kh, kw, sh, sw, &s); err.failure()) return err;
  if (auto err = CheckRows(cols, rowptr, dvalues->element_count(), s); err.failure()) return err;
  dst::ActiveKernels().conv_dw(cols.typed_data(), rowptr.typed_data(), dy.typed_data(), x.typed_data(),
                               dvalues->typed_data(), s);
  return ffi::Error::Success();
}

}  // namespace

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
                                  .Arg<ffi::Buffer<ffi::S32>>()   // tptr [c_in * kw * kh + 1]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // trows [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // tslots [nnz]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dy [n_out, oh, ow, B]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dx [c_in, hp, wp, B] (padded)
                                      DST_CONV_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(DstConvDw, ConvDwImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()   // cols [nnz]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // rowptr [n_out + 1]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dy [n_out, oh, ow, B]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x [c_in, hp, wp, B] (padded)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dvalues [nnz]
                                      DST_CONV_ATTRS);
