// Activation quantization for the INT8 GEMM, on the GPU, so activations never round-trip through Python:
// float (fp32/fp16/bf16) (M, K) -> int8 codes (M, ldq) + per-row scale sx (fp32) + per-row zero point zx (int32), such
// that x ~ sx[m] * (q[m, k] - zx[m]).  Columns K..ldq-1 are written as 0 (the padding of the GEMM's K).
//
// The math is qexp.quant.affine's, operation for operation (IEEE division __fdiv_rn, round-half-to-even rintf), so the
// codes equal torch's:
//   per-token symmetric (ZeroQuant's token-wise activations): x_min = min(row min, 0), x_max = max(row max, 1e-8);
//     if any element of the whole tensor is negative: signed grid [-(2^(b-1)), 2^(b-1) - 1], s = max(-x_min, x_max) /
//     (2^(b-1) - 1); else the unsigned grid [0, 2^b - 1], s = x_max / (2^b - 1); s = max(s, 1e-8).
//   static per-tensor (a calibrated range): s and z given.
// An unsigned grid (codes 0..2^b - 1) is stored shifted by -128 so it fits int8; the shift goes into zx
// (zx = z - 128), which the GEMM epilogue folds into the accumulator (acc - zx * sum_k w).
//
// token_minmax: one block per row, row min / max, and a device-wide "any negative" flag (atomicOr; the host zeroes it),
// because the grid choice is global (qexp.quant.affine.qparams).  quantize_per_token then reads the flag: two launches,
// no host synchronisation.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace qexp {

constexpr float QEPS = 1e-8f;

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <int THREADS>
__device__ __forceinline__ void block_minmax(float& lo, float& hi) {
  __shared__ float s_lo[THREADS / 32], s_hi[THREADS / 32];
  for (int o = 16; o > 0; o /= 2) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) { s_lo[warp] = lo; s_hi[warp] = hi; }
  __syncthreads();
  lo = s_lo[0]; hi = s_hi[0];
  for (int w = 1; w < THREADS / 32; ++w) { lo = fminf(lo, s_lo[w]); hi = fmaxf(hi, s_hi[w]); }
}

template <typename InT, int THREADS>
__global__ void __launch_bounds__(THREADS)
token_minmax(const InT* __restrict__ x, int M, int K, int ldx, float* __restrict__ row_min,
             float* __restrict__ row_max, int* __restrict__ any_negative) {
  const int m = blockIdx.x;
  if (m >= M) return;
  const InT* row = x + static_cast<long long>(m) * ldx;
  float lo = INFINITY, hi = -INFINITY;
  for (int k = threadIdx.x; k < K; k += THREADS) {
    const float v = to_float<InT>(row[k]);
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
  block_minmax<THREADS>(lo, hi);
  if (threadIdx.x == 0) {
    row_min[m] = lo;
    row_max[m] = hi;
    if (lo < 0.0f) atomicOr(any_negative, 1);
  }
}

__device__ __forceinline__ signed char code(float v, float s, float z, float qmin, float qmax, int shift) {
  const float q = fminf(fmaxf(__fadd_rn(rintf(__fdiv_rn(v, s)), z), qmin), qmax);
  return static_cast<signed char>(static_cast<int>(q) - shift);
}

template <typename InT, int THREADS>
__global__ void __launch_bounds__(THREADS)
quantize_per_token(const InT* __restrict__ x, int M, int K, int ldx, int ldq, int bits,
                   const float* __restrict__ row_min, const float* __restrict__ row_max,
                   const int* __restrict__ any_negative, signed char* __restrict__ q, float* __restrict__ sx,
                   int* __restrict__ zx) {
  const int m = blockIdx.x;
  if (m >= M) return;
  const bool is_signed = *any_negative != 0;
  const float x_min = fminf(row_min[m], 0.0f), x_max = fmaxf(row_max[m], QEPS);
  const float qmax = is_signed ? static_cast<float>((1 << (bits - 1)) - 1) : static_cast<float>((1 << bits) - 1);
  const float qmin = is_signed ? -static_cast<float>(1 << (bits - 1)) : 0.0f;
  const float s = fmaxf(__fdiv_rn(fmaxf(-x_min, x_max), qmax), QEPS);
  const int shift = is_signed ? 0 : 128;
  const InT* row = x + static_cast<long long>(m) * ldx;
  signed char* out = q + static_cast<long long>(m) * ldq;
  for (int k = threadIdx.x; k < ldq; k += THREADS)
    out[k] = k < K ? code(to_float<InT>(row[k]), s, 0.0f, qmin, qmax, shift) : static_cast<signed char>(0);
  if (threadIdx.x == 0) {
    sx[m] = s;
    zx[m] = -shift;
  }
}

// Static per-tensor parameters (a calibrated range): one scale s, zero point z, grid [qmin, qmax], stored shifted.
template <typename InT>
__global__ void quantize_static(const InT* __restrict__ x, int M, int K, int ldx, int ldq, float s, float z,
                                float qmin, float qmax, int shift, signed char* __restrict__ q) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<long long>(M) * ldq) return;
  const int m = static_cast<int>(i / ldq), k = static_cast<int>(i % ldq);
  q[i] = k < K ? code(to_float<InT>(x[static_cast<long long>(m) * ldx + k]), s, z, qmin, qmax, shift)
               : static_cast<signed char>(0);
}

}  // namespace qexp

#ifdef QEXP_NVCC_CHECK
template __global__ void qexp::token_minmax<__half, 256>(const __half*, int, int, int, float*, float*, int*);
template __global__ void qexp::quantize_per_token<__half, 256>(const __half*, int, int, int, int, int, const float*,
                                                               const float*, const int*, signed char*, float*, int*);
template __global__ void qexp::quantize_static<float>(const float*, int, int, int, int, float, float, float, float,
                                                      int, signed char*);
#endif
