// INT8 x INT8 -> INT32 GEMM with a fused dequantization epilogue, for quantized linear layers:
//
//     y[m, n] = act( float(acc[m, n] - zx[m] * wsum[n]) * (sx[m] * sw[n]) + bias[n] )
//     acc[m, n] = sum_k a[m, k] * b[n, k]            (exact int32)
//
// a: activations (M, K) int8 row-major (row stride lda), b: weights (N, K) int8 row-major (stride ldb; an nn.Linear
// weight is already the "col" operand of mma), sx/zx: per-row (per-token) activation scale and zero point, sw: per-
// output-column weight scale (per-tensor, per-channel and row-block groups all expand to one scale per column), wsum:
// sum_k b[n, k] (only read when zx is given), bias optional, act = identity or exact (erf) GELU, y: (M, N) fp32, fp16 or
// bf16 with row stride N.  The float epilogue uses explicitly rounded operations (__fmul_rn / __fadd_rn, no FMA
// contraction) in exactly the order of qexp.inference.reference_gemm, so the fp32 output is bit-identical to the torch
// reference.
//
// Requirements (checked by qexp/kernels.py, which pads K): K % 16 == 0, lda % 16 == 0, ldb % 16 == 0, a and b 16-byte
// aligned.  M and N are arbitrary (out-of-range rows load as zeros through cp.async zero-fill and are not stored).
//
// int8_gemm_mma: tensor cores through inline PTX mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32, operands staged in
// shared memory by a STAGES-deep cp.async pipeline (16-byte copies) and read with ldmatrix.x4; shared rows are padded
// by 16 bytes (80-byte stride), which makes the eight 16-byte rows of every ldmatrix phase hit disjoint banks.
// int8_gemm_dp4a: one thread per output with __dp4a on CUDA cores: slow, obviously correct, the GPU reference.
//
// Compiled by CuPy (NVRTC, qexp/kernels.py, name_expressions instantiate the templates) and, in CI, by nvcc for sm_80
// and sm_90 with -DQEXP_NVCC_CHECK (the explicit instantiations at the end), whose PTX must contain the mma.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace qexp {

constexpr int BK = 64;          // bytes (= int8 elements) of K per pipeline stage: two m16n8k32 steps
constexpr int SMEM_ROW = BK + 16;  // padded shared row (bytes)

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float gelu_erf(float v) {
  return __fmul_rn(__fmul_rn(0.5f, v), __fadd_rn(1.0f, erff(__fmul_rn(v, 0.70710678118654752f))));
}

// The epilogue of one accumulator element; shared by both kernels so they cannot disagree.
template <bool GELU>
__device__ __forceinline__ float dequant(int acc, int m, int n, const float* __restrict__ sx,
                                         const int* __restrict__ zx, const float* __restrict__ sw,
                                         const int* __restrict__ wsum, const float* __restrict__ bias) {
  if (zx != nullptr) acc -= zx[m] * wsum[n];
  float v = __fmul_rn(static_cast<float>(acc), __fmul_rn(sx[m], sw[n]));
  if (bias != nullptr) v = __fadd_rn(v, bias[n]);
  if (GELU) v = gelu_erf(v);
  return v;
}

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; src_bytes = 0 writes zeros (rows/columns beyond the matrix).
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(smem_addr(p)));
}

// D = A (16x32 s8, row) * B (32x8 s8, col) + C, s32 accumulators.
__device__ __forceinline__ void mma_s8(int* c, const unsigned* a, const unsigned* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Copy one BM x BK (or BN x BK) tile of a row-major int8 matrix into padded shared rows.
template <int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(signed char* smem, const signed char* __restrict__ g, int ld, int row0,
                                          int rows, int k0, int K) {
  constexpr int CHUNKS = ROWS * (BK / 16);
#pragma unroll
  for (int i = threadIdx.x; i < CHUNKS; i += THREADS) {
    const int r = i / (BK / 16), c = i % (BK / 16);
    const int gr = row0 + r, gk = k0 + c * 16;
    const bool ok = gr < rows && gk < K;
    const signed char* src = ok ? g + static_cast<long long>(gr) * ld + gk : g;
    cp_async_16(smem + r * SMEM_ROW + c * 16, src, ok ? 16 : 0);
  }
}

// A CTA computes a BM x BN tile of y with (BM/WM) x (BN/WN) warps, each a WM x WN warp tile.
template <int BM, int BN, int WM, int WN, int STAGES, typename OutT, bool GELU>
__global__ void __launch_bounds__((BM / WM) * (BN / WN) * 32)
int8_gemm_mma(const signed char* __restrict__ a, const signed char* __restrict__ b, OutT* __restrict__ y,
              const float* __restrict__ sx, const int* __restrict__ zx, const float* __restrict__ sw,
              const int* __restrict__ wsum, const float* __restrict__ bias, int M, int N, int K, int lda, int ldb) {
  constexpr int WARPS_N = BN / WN;
  constexpr int THREADS = (BM / WM) * WARPS_N * 32;
  constexpr int MI = WM / 16, NI = WN / 8;  // mma tiles per warp
  static_assert(WM % 16 == 0 && WN % 16 == 0 && BM % WM == 0 && BN % WN == 0, "bad tile shape");
  static_assert(STAGES >= 2, "the pipeline needs at least two stages");

  extern __shared__ __align__(16) signed char smem[];
  signed char* sa = smem;                                  // STAGES x BM x SMEM_ROW
  signed char* sb = smem + STAGES * BM * SMEM_ROW;         // STAGES x BN x SMEM_ROW

  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm0 = (warp / WARPS_N) * WM, wn0 = (warp % WARPS_N) * WN;

  int acc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int t = 0; t < 4; ++t) acc[i][j][t] = 0;

  const int ktiles = (K + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < ktiles) {
      load_tile<BM, THREADS>(sa + s * BM * SMEM_ROW, a, lda, m0, M, s * BK, K);
      load_tile<BN, THREADS>(sb + s * BN * SMEM_ROW, b, ldb, n0, N, s * BK, K);
    }
    cp_async_commit();  // always commit, so the group count below stays exact
  }

  // ldmatrix.x4 lane -> row address: lanes 8q..8q+7 address the rows of matrix q.
  const int lq = lane / 8, lr = lane % 8;
  // A (16 x 32 per mma): matrices (rows 0-7, k 0-15), (rows 8-15, k 0-15), (rows 0-7, k 16-31), (rows 8-15, k 16-31)
  // = registers a0..a3 of the m16n8k32 A fragment.
  const int a_row = lr + (lq % 2) * 8, a_col = (lq / 2) * 16;
  // B (two n8 tiles x 32 k): matrices (n 0-7, k 0-15), (n 0-7, k 16-31), (n 8-15, k 0-15), (n 8-15, k 16-31)
  // = registers b0, b1 of n-tile j and b0, b1 of n-tile j + 1.
  const int b_row = lr + (lq / 2) * 8, b_col = (lq % 2) * 16;

  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // tile kt is in shared memory for everyone; everyone is done with tile kt - 1
    const int nk = kt + STAGES - 1;
    if (nk < ktiles) {
      const int s = nk % STAGES;
      load_tile<BM, THREADS>(sa + s * BM * SMEM_ROW, a, lda, m0, M, nk * BK, K);
      load_tile<BN, THREADS>(sb + s * BN * SMEM_ROW, b, ldb, n0, N, nk * BK, K);
    }
    cp_async_commit();

    const signed char* ta = sa + (kt % STAGES) * BM * SMEM_ROW;
    const signed char* tb = sb + (kt % STAGES) * BN * SMEM_ROW;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 32) {
      unsigned fa[MI][4], fb[NI][2];
#pragma unroll
      for (int i = 0; i < MI; ++i)
        ldmatrix_x4(fa[i][0], fa[i][1], fa[i][2], fa[i][3],
                    ta + (wm0 + i * 16 + a_row) * SMEM_ROW + kk + a_col);
#pragma unroll
      for (int j = 0; j < NI; j += 2)
        ldmatrix_x4(fb[j][0], fb[j][1], fb[j + 1][0], fb[j + 1][1],
                    tb + (wn0 + j * 8 + b_row) * SMEM_ROW + kk + b_col);
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j) mma_s8(acc[i][j], fa[i], fb[j]);
    }
  }
  cp_async_wait<0>();

  // Accumulator layout of m16n8: c0, c1 at (row g, cols 2t, 2t+1), c2, c3 at (row g + 8, same cols).
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int i = 0; i < MI; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + wm0 + i * 16 + g + h * 8;
      if (m >= M) continue;
#pragma unroll
      for (int j = 0; j < NI; ++j) {
        const int n = n0 + wn0 + j * 8 + 2 * t;
        OutT* out = y + static_cast<long long>(m) * N + n;
        if (n < N) out[0] = from_float<OutT>(dequant<GELU>(acc[i][j][2 * h], m, n, sx, zx, sw, wsum, bias));
        if (n + 1 < N) out[1] = from_float<OutT>(dequant<GELU>(acc[i][j][2 * h + 1], m, n + 1, sx, zx, sw, wsum, bias));
      }
    }
  }
}

// One thread per output element, __dp4a over four int8 at a time: the simple GPU reference.
template <typename OutT, bool GELU>
__global__ void int8_gemm_dp4a(const signed char* __restrict__ a, const signed char* __restrict__ b,
                               OutT* __restrict__ y, const float* __restrict__ sx, const int* __restrict__ zx,
                               const float* __restrict__ sw, const int* __restrict__ wsum,
                               const float* __restrict__ bias, int M, int N, int K, int lda, int ldb) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x, m = blockIdx.y * blockDim.y + threadIdx.y;
  if (m >= M || n >= N) return;
  const int* ra = reinterpret_cast<const int*>(a + static_cast<long long>(m) * lda);
  const int* rb = reinterpret_cast<const int*>(b + static_cast<long long>(n) * ldb);
  int acc = 0;
  for (int k = 0; k < K / 4; ++k) acc = __dp4a(ra[k], rb[k], acc);
  y[static_cast<long long>(m) * N + n] = from_float<OutT>(dequant<GELU>(acc, m, n, sx, zx, sw, wsum, bias));
}

}  // namespace qexp

#ifdef QEXP_NVCC_CHECK
// nvcc has no name_expressions: instantiate the configurations qexp/kernels.py offers, so CI compiles and inspects them.
#define QEXP_INST(BM, BN, WM, WN, S, T, G)                                                                           \
  template __global__ void qexp::int8_gemm_mma<BM, BN, WM, WN, S, T, G>(                                           \
      const signed char*, const signed char*, T*, const float*, const int*, const float*, const int*, const float*, \
      int, int, int, int, int);
QEXP_INST(128, 128, 64, 64, 3, __half, false)
QEXP_INST(128, 128, 64, 64, 4, __half, true)
QEXP_INST(128, 256, 64, 64, 3, __half, false)
QEXP_INST(256, 128, 64, 64, 3, __half, false)
QEXP_INST(128, 64, 64, 32, 4, __half, false)
QEXP_INST(64, 64, 32, 32, 4, float, false)
QEXP_INST(64, 128, 32, 64, 4, __nv_bfloat16, false)
template __global__ void qexp::int8_gemm_dp4a<float, false>(const signed char*, const signed char*, float*,
                                                            const float*, const int*, const float*, const int*,
                                                            const float*, int, int, int, int, int);
#endif
