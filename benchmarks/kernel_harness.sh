#!/usr/bin/env bash
# Build benchmarks/csrc/kernel_harness.cc against dst/kernels/csrc/kernels_isa.cc, compiled for AVX-512 and
# AVX2 with the flags CMakeLists.txt uses, and run it: bash benchmarks/kernel_harness.sh [n] [density] [batch] [reps]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/dst/kernels/csrc"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
g++ -O3 -fopenmp -std=c++17 -c "$src/kernels_isa.cc" -o "$out/avx512.o" -DDST_ISA_TABLE=kAvx512Kernels \
  -DDST_ISA_NAME='"avx512"' -DDST_VEC_BYTES=64 -DDST_VEC_REGS=32 -mavx512f -mavx2 -mfma -mprefer-vector-width=512
g++ -O3 -fopenmp -std=c++17 -c "$src/kernels_isa.cc" -o "$out/avx2.o" -DDST_ISA_TABLE=kAvx2Kernels \
  -DDST_ISA_NAME='"avx2"' -DDST_VEC_BYTES=32 -DDST_VEC_REGS=16 -mavx2 -mfma
g++ -O2 -fopenmp -std=c++17 -DDST_HAVE_AVX2 -DDST_HAVE_AVX512 -I"$src" "$root/benchmarks/csrc/kernel_harness.cc" "$out/avx512.o" "$out/avx2.o" \
  -o "$out/kernel_harness"
"$out/kernel_harness" "$@"
