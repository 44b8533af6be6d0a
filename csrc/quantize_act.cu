// Activation quantization with the fused low-rank down projection: one read of x.
//
// lr[m,:]  = round16( x[m,:] @ proj_down )                                (fp32 accumulate, tensor cores)
// xs       = x / smooth                                                    (IEEE division)
// ascale   = round16( min(absmax(xs over the group) / 7, max16) )         per token and group
// xq       = clamp( rne(xs / ascale), -8, 7 )   (0 when ascale == 0)
//
// Block: 8 warps, 16 tokens. Warp w takes the groups w, w+8, ...; inside a 32-column slice thread
// (r = lane/4, t = lane%4) holds columns 8t..8t+7 of tokens r and r+8 (16-byte loads). The low-rank
// mma uses those registers directly as A fragments (k order permuted; proj_down rows permuted to match).
#include "common.cuh"
#include "launch.h"

namespace svdq {
namespace {

constexpr int kQThreads = 256;
constexpr int kQWarps = kQThreads / 32;
constexpr int kQRows = 16;

template <typename T, int GK, int NR16>
__global__ void __launch_bounds__(kQThreads)
quantize_act_kernel(const T* __restrict__ x, const T* __restrict__ smooth, const T* __restrict__ pd,
                    int8_t* __restrict__ xq, T* __restrict__ ascales, T* __restrict__ lr, int M, int K, int R) {
  constexpr int NT = NR16 * 2;  // n8 tiles of the rank
  extern __shared__ __align__(16) float red[];
  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int r = lane >> 2, t = lane & 3;
  const int m0 = blockIdx.x * kQRows;
  const int G = 32 * GK;
  const int ngroups = K / G;
  const bool row_ok[2] = {m0 + r < M, m0 + r + 8 < M};
  const bool r_even = (R & 1) == 0;

  float lacc[NT > 0 ? NT : 1][4];
#pragma unroll
  for (int i = 0; i < (NT > 0 ? NT : 1); ++i) lacc[i][0] = lacc[i][1] = lacc[i][2] = lacc[i][3] = 0.f;

  for (int g = warp; g < ngroups; g += kQWarps) {
    uint4 xv[GK][2], sv[GK];
#pragma unroll
    for (int s = 0; s < GK; ++s) {
      const int col = g * G + s * 32 + t * 8;
      sv[s] = __ldg(reinterpret_cast<const uint4*>(smooth + col));
#pragma unroll
      for (int h = 0; h < 2; ++h)
        xv[s][h] = row_ok[h] ? __ldg(reinterpret_cast<const uint4*>(x + (size_t)(m0 + r + 8 * h) * K + col))
                             : make_uint4(0, 0, 0, 0);
    }

    if constexpr (NT > 0) {
#pragma unroll
      for (int s = 0; s < GK; ++s) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const uint32_t* w0 = reinterpret_cast<const uint32_t*>(&xv[s][0]);
          const uint32_t* w1 = reinterpret_cast<const uint32_t*>(&xv[s][1]);
          const uint32_t a[4] = {w0[2 * i], w1[2 * i], w0[2 * i + 1], w1[2 * i + 1]};
          // B fragments by transposing 8x8 tiles of proj_down [K, R] with movmatrix: thread (r, t) loads
          // row r of the tile (k = perm(r), n = 8nt + 2t..2t+1), and after the transpose holds
          // column n = 8nt + r at k = perm(2t), perm(2t+1): the k order of the A registers above.
          const int krow0 = g * G + s * 32 + (r >> 1) * 8 + 4 * i + (r & 1);  // b0 rows; b1 rows are +2
          const unsigned short* p0 = reinterpret_cast<const unsigned short*>(pd) + (size_t)krow0 * R;
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            const int n = nt * 8 + 2 * t;
            uint32_t v0 = 0, v1 = 0;
            if (r_even && n < R) {
              v0 = __ldg(reinterpret_cast<const uint32_t*>(p0 + n));
              v1 = __ldg(reinterpret_cast<const uint32_t*>(p0 + 2 * R + n));
            } else if (n < R) {
              const bool n1 = n + 1 < R;
              v0 = (uint32_t)__ldg(p0 + n) | (n1 ? (uint32_t)__ldg(p0 + n + 1) << 16 : 0u);
              v1 = (uint32_t)__ldg(p0 + 2 * R + n) | (n1 ? (uint32_t)__ldg(p0 + 2 * R + n + 1) << 16 : 0u);
            }
            mma_16816<T>(lacc[nt], a, movmatrix_trans(v0), movmatrix_trans(v1));
          }
        }
      }
    }

    float sm[GK][8], srcp[GK][8];  // smoothing factors and their correctly rounded reciprocals
#pragma unroll
    for (int s = 0; s < GK; ++s) {
      const T* sp = reinterpret_cast<const T*>(&sv[s]);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        sm[s][e] = Dt<T>::to_f(sp[e]);
        srcp[s][e] = __frcp_rn(sm[s][e]);
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float v[GK][8];
      float amax = 0.f;
#pragma unroll
      for (int s = 0; s < GK; ++s) {
        const T* xp = reinterpret_cast<const T*>(&xv[s][h]);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          v[s][e] = div_rn_with_rcp(Dt<T>::to_f(xp[e]), sm[s][e], srcp[s][e]);
          amax = fmaxf(amax, fabsf(v[s][e]));
        }
      }
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
      const T sc = Dt<T>::from_f(fminf(__fdiv_rn(amax, 7.0f), Dt<T>::kMax));
      const float sf = Dt<T>::to_f(sc);
      const float rsf = __frcp_rn(sf);
      const int row = m0 + r + 8 * h;
      if (!row_ok[h]) continue;
#pragma unroll
      for (int s = 0; s < GK; ++s) {
        uint32_t packed[2] = {0u, 0u};
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          int q = 0;
          if (sf > 0.f) q = (int)fminf(fmaxf(rintf(div_rn_with_rcp(v[s][e], sf, rsf)), -8.f), 7.f);
          packed[e >> 2] |= ((uint32_t)q & 0xFFu) << (8 * (e & 3));
        }
        *reinterpret_cast<uint2*>(xq + (size_t)row * K + g * G + s * 32 + t * 8) = make_uint2(packed[0], packed[1]);
      }
      if (t == 0) ascales[(size_t)row * ngroups + g] = sc;
    }
  }

  if constexpr (NT > 0) {
    constexpr int RP = NT * 8;  // padded rank
    float* mine = red + warp * (kQRows * RP);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int c = nt * 8 + 2 * t;
      mine[r * RP + c] = lacc[nt][0];
      mine[r * RP + c + 1] = lacc[nt][1];
      mine[(r + 8) * RP + c] = lacc[nt][2];
      mine[(r + 8) * RP + c + 1] = lacc[nt][3];
    }
    __syncthreads();
    for (int i = tid; i < kQRows * RP; i += kQThreads) {
      const int row = i / RP, c = i % RP;
      if (m0 + row >= M || c >= R) continue;
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < kQWarps; ++w) s += red[w * (kQRows * RP) + i];
      lr[(size_t)(m0 + row) * R + c] = Dt<T>::from_f(s);
    }
  }
}

template <typename T, int GK, int NR16>
cudaError_t launch_q(const QuantizeActArgs& a, cudaStream_t stream) {
  auto kern = quantize_act_kernel<T, GK, NR16>;
  const int smem = NR16 * 16 * kQRows * kQWarps * (int)sizeof(float);
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
  }
  dim3 grid((a.M + kQRows - 1) / kQRows);
  kern<<<grid, kQThreads, smem, stream>>>(static_cast<const T*>(a.x), static_cast<const T*>(a.smooth),
                                           static_cast<const T*>(a.proj_down), a.xq, static_cast<T*>(a.ascales),
                                           static_cast<T*>(a.lr), a.M, a.K, a.R);
  return cudaGetLastError();
}

template <typename T, int GK>
cudaError_t launch_rank(const QuantizeActArgs& a, cudaStream_t stream) {
  const int nr16 = (a.R + 15) / 16;
  if (nr16 == 0) return launch_q<T, GK, 0>(a, stream);
  if (nr16 <= 1) return launch_q<T, GK, 1>(a, stream);
  if (nr16 <= 2) return launch_q<T, GK, 2>(a, stream);
  if (nr16 <= 4) return launch_q<T, GK, 4>(a, stream);
  if (nr16 <= 6) return launch_q<T, GK, 6>(a, stream);
  if (nr16 <= 8) return launch_q<T, GK, 8>(a, stream);
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t launch_group(const QuantizeActArgs& a, cudaStream_t stream) {
  switch (a.group_size) {
    case 32: return launch_rank<T, 1>(a, stream);
    case 64: return launch_rank<T, 2>(a, stream);
    case 128: return launch_rank<T, 4>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_quantize_act(const QuantizeActArgs& a, cudaStream_t stream) {
  if (a.M <= 0) return cudaSuccess;
  if (a.K % a.group_size || a.R > kMaxFusedRank || a.R < 0) return cudaErrorInvalidValue;
  if (a.dtype == DType::kBF16) return launch_group<__nv_bfloat16>(a, stream);
  return launch_group<__half>(a, stream);
}

}  // namespace svdq
