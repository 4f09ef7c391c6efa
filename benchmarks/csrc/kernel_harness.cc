// The kernel tables timed directly from C++, without JAX: one square layer (constant fan-in, random
// inputs) and each kernel of the AVX-512 and AVX2 tables, medians of `reps` calls. Used to tune the loops
// (benchmarks/README.md cites it); benchmarks/kernel_harness.sh builds it from dst/kernels/csrc.
//
//   bash benchmarks/kernel_harness.sh [n] [density] [batch] [reps]     (defaults 4000 0.1 128 15)
//
// A batch of one times the matrix-vector product (spmv) in the forward column; "sep/fused" is the time of
// spmm_t + sddmm over the fused pass's (> 1: the fused pass is faster); the errors compare the two.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels.h"

using dst::KernelTable;

template <typename F>
double MedianSeconds(F f, int reps) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    auto a = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[reps / 2];
}

int main(int argc, char** argv) {
  const int n = argc > 1 ? atoi(argv[1]) : 4000;
  const double density = argc > 2 ? atof(argv[2]) : 0.1;
  const int B = argc > 3 ? atoi(argv[3]) : 128;
  const int reps = argc > 4 ? atoi(argv[4]) : 15;
  const int k = std::max(1, static_cast<int>(std::lround(density * n)));
  std::mt19937 rng(0);
  std::vector<int32_t> cols, rowptr(n + 1);
  for (int o = 0; o < n; ++o) {   // k distinct inputs per output unit, in order
    std::vector<char> used(n, 0);
    std::vector<int32_t> row;
    while (static_cast<int>(row.size()) < k) {
      const int i = static_cast<int>(rng() % n);
      if (!used[i]) { used[i] = 1; row.push_back(i); }
    }
    std::sort(row.begin(), row.end());
    rowptr[o] = static_cast<int32_t>(cols.size());
    cols.insert(cols.end(), row.begin(), row.end());
  }
  rowptr[n] = static_cast<int32_t>(cols.size());
  const int64_t nnz = static_cast<int64_t>(cols.size());
  std::normal_distribution<float> normal;
  std::vector<float> v(nnz), x(static_cast<size_t>(n) * B), dy(x.size()), y(x.size()), dx(x.size()), dx2(x.size());
  std::vector<float> dv(nnz), dv2(nnz);
  for (auto* a : {&v, &x, &dy})
    for (auto& e : *a) e = normal(rng);
  std::vector<int32_t> tp(n + 1, 0), tr(nnz), ts(nnz), cursor(n);   // the transposed structure
  for (auto c : cols) tp[c + 1]++;
  for (int i = 0; i < n; ++i) tp[i + 1] += tp[i];
  std::vector<int32_t> fill(tp.begin(), tp.end() - 1);
  for (int o = 0; o < n; ++o)
    for (int j = rowptr[o]; j < rowptr[o + 1]; ++j) {
      const int t = fill[cols[j]]++;
      tr[t] = o;
      ts[t] = j;
    }
  std::vector<const KernelTable*> tables;
  if (__builtin_cpu_supports("avx512f")) tables.push_back(&dst::kAvx512Kernels);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) tables.push_back(&dst::kAvx2Kernels);
  for (const KernelTable* T : tables) {
    const double fwd = MedianSeconds([&] {
      if (B == 1) T->spmv(v.data(), cols.data(), rowptr.data(), x.data(), y.data(), n, n);
      else T->spmm(v.data(), cols.data(), rowptr.data(), x.data(), y.data(), n, n, B, cursor.data());
    }, reps);
    const double dxs = MedianSeconds([&] { T->spmm_t(v.data(), tp.data(), tr.data(), ts.data(), dy.data(), dx.data(), n, B); }, reps);
    const double dws = MedianSeconds([&] { T->sddmm(cols.data(), rowptr.data(), dy.data(), x.data(), dv.data(), n, B); }, reps);
    const double fused = MedianSeconds([&] {
      T->spmm_t_sddmm(v.data(), tp.data(), tr.data(), ts.data(), dy.data(), x.data(), dx2.data(), dv2.data(), n, B);
    }, reps);
    double err_dx = 0, err_dv = 0;
    for (size_t i = 0; i < dx.size(); ++i) err_dx = std::max(err_dx, static_cast<double>(std::fabs(dx[i] - dx2[i])));
    for (int64_t i = 0; i < nnz; ++i) err_dv = std::max(err_dv, static_cast<double>(std::fabs(dv[i] - dv2[i])));
    printf("%-7s n=%d density=%.3f batch=%d  forward %.3f ms  spmm_t %.3f  sddmm %.3f  fused %.3f  sep/fused %.2f  "
           "max |dx - dx'| %.1e  |dv - dv'| %.1e\n",
           T->isa, n, density, B, 1e3 * fwd, 1e3 * dxs, 1e3 * dws, 1e3 * fused, (dxs + dws) / fused, err_dx, err_dv);
  }
}
