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

// Rank tiles of 16 the kernel is instantiated for (R is padded up to one of them; -1: too large).
int padded_nr16(int R) {
  const int n = (R + 15) / 16;
  if (n <= 2) return n;
  if (n <= 4) return 4;
  if (n <= 6) return 6;
  if (n <= 8) return 8;
  return -1;
}

template <typename T, int GK, int NR16>
__global__ void __launch_bounds__(kQThreads)
quantize_act_kernel(const T* __restrict__ x, const T* __restrict__ smooth, const T* __restrict__ pd,
                    int8_t* __restrict__ xq, T* __restrict__ ascales, T* __restrict__ lr, float* __restrict__ lr_ws,
                    int* __restrict__ lr_cnt, int M, int K, int R) {
  constexpr int NT = NR16 * 2;  // n8 tiles of the rank
  extern __shared__ __align__(16) float red[];
  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int r = lane >> 2, t = lane & 3;
  const int m0 = blockIdx.x * kQRows;
  const int G = 32 * GK;
  const int ngroups = K / G;
  // blockIdx.y splits the groups (small M: more blocks); the low-rank partials are then summed by
  // the last block of the row block to finish, in split order (deterministic)
  const int splits = gridDim.y;
  const int gps = (ngroups + splits - 1) / splits;
  const int g_begin = blockIdx.y * gps, g_end = min(ngroups, g_begin + gps);
  const bool row_ok[2] = {m0 + r < M, m0 + r + 8 < M};

  float lacc[NT > 0 ? NT : 1][4];
#pragma unroll
  for (int i = 0; i < (NT > 0 ? NT : 1); ++i) lacc[i][0] = lacc[i][1] = lacc[i][2] = lacc[i][3] = 0.f;

  for (int g = g_begin + warp; g < g_end; g += kQWarps) {
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
            // R is even (the binding pads odd ranks): clamped, branch-free pair loads, zeroed past R
            const int n = nt * 8 + 2 * t;
            const bool live = (nt + 1) * 8 <= R || n < R;
            const int nc = live ? n : 0;
            uint32_t v0 = __ldg(reinterpret_cast<const uint32_t*>(p0 + nc));
            uint32_t v1 = __ldg(reinterpret_cast<const uint32_t*>(p0 + 2 * R + nc));
            v0 = live ? v0 : 0u;
            v1 = live ? v1 : 0u;
            mma_16816<T>(lacc[nt], a, movmatrix_trans(v0), movmatrix_trans(v1));
          }
        }
      }
    }

    // x / smooth and xs / scale by the division fast path of nvcc's div.rn (3 FMAs on a refined
    // reciprocal), checked per group: where the operands leave the safe range, __fdiv_rn redoes it.
    float sm[GK][8], srcp[GK][8];
    float smin = 3.0e38f, smax = 0.f;
#pragma unroll
    for (int s = 0; s < GK; ++s) {
      const T* sp = reinterpret_cast<const T*>(&sv[s]);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        sm[s][e] = Dt<T>::to_f(sp[e]);
        srcp[s][e] = rcp_refined(sm[s][e]);
        smin = fminf(smin, sm[s][e]);
        smax = fmaxf(smax, sm[s][e]);
      }
    }
    smin = fminf(smin, __shfl_xor_sync(0xffffffffu, smin, 1));
    smin = fminf(smin, __shfl_xor_sync(0xffffffffu, smin, 2));
    smax = fmaxf(smax, __shfl_xor_sync(0xffffffffu, smax, 1));
    smax = fmaxf(smax, __shfl_xor_sync(0xffffffffu, smax, 2));
    const bool smooth_ok = smin >= 0x1p-30f && smax <= 0x1p30f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float v[GK][8];
      float amax = 0.f;
#pragma unroll
      for (int s = 0; s < GK; ++s) {
        const T* xp = reinterpret_cast<const T*>(&xv[s][h]);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          v[s][e] = div_fast(Dt<T>::to_f(xp[e]), sm[s][e], srcp[s][e]);
          amax = fmaxf(amax, fabsf(v[s][e]));
        }
      }
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
      // quad-uniform condition (smin/smax/amax are quad reductions), so the shuffles below see all 4 lanes
      if (!(smooth_ok && (amax == 0.f || (amax >= 0x1p-80f && amax <= 0x1p80f)))) {
        amax = 0.f;
#pragma unroll
        for (int s = 0; s < GK; ++s) {
          const T* xp = reinterpret_cast<const T*>(&xv[s][h]);
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            v[s][e] = __fdiv_rn(Dt<T>::to_f(xp[e]), sm[s][e]);
            amax = fmaxf(amax, fabsf(v[s][e]));
          }
        }
        const unsigned mask = __activemask();
        amax = fmaxf(amax, __shfl_xor_sync(mask, amax, 1));
        amax = fmaxf(amax, __shfl_xor_sync(mask, amax, 2));
      }
      const T sc = Dt<T>::from_f(fminf(__fdiv_rn(amax, 7.0f), Dt<T>::kMax));
      const float sf = Dt<T>::to_f(sc);
      // |xs / sf| <= ~7.03: the quotient cannot overflow; tiny quotients round to 0 either way
      const bool sf_fast = sf >= 0x1p-100f && sf <= 0x1p100f;
      const float rsf = rcp_refined(sf);
      const int row = m0 + r + 8 * h;
      if (!row_ok[h]) continue;
#pragma unroll
      for (int s = 0; s < GK; ++s) {
        int qi[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float qf = sf_fast ? div_fast(v[s][e], sf, rsf) : (sf > 0.f ? __fdiv_rn(v[s][e], sf) : 0.f);
          qi[e] = __float2int_rn(fminf(fmaxf(qf, -8.f), 7.f));
        }
        const uint32_t lo = __byte_perm(__byte_perm(qi[0], qi[1], 0x0040), __byte_perm(qi[2], qi[3], 0x0040), 0x5410);
        const uint32_t hi = __byte_perm(__byte_perm(qi[4], qi[5], 0x0040), __byte_perm(qi[6], qi[7], 0x0040), 0x5410);
        *reinterpret_cast<uint2*>(xq + (size_t)row * K + g * G + s * 32 + t * 8) = make_uint2(lo, hi);
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
    if (splits == 1) {
      for (int i = tid; i < kQRows * RP; i += kQThreads) {
        const int row = i / RP, c = i % RP;
        if (m0 + row >= M || c >= R) continue;
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < kQWarps; ++w) s += red[w * (kQRows * RP) + i];
        lr[(size_t)(m0 + row) * R + c] = Dt<T>::from_f(s);
      }
      return;
    }
    float* part = lr_ws + ((size_t)blockIdx.x * splits + blockIdx.y) * (kQRows * RP);
    for (int i = tid; i < kQRows * RP; i += kQThreads) {
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < kQWarps; ++w) s += red[w * (kQRows * RP) + i];
      part[i] = s;
    }
    __threadfence();
    __syncthreads();
    __shared__ int is_last;
    if (tid == 0) is_last = atomicAdd(lr_cnt + blockIdx.x, 1) == splits - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    const float* parts = lr_ws + (size_t)blockIdx.x * splits * (kQRows * RP);
    for (int i = tid; i < kQRows * RP; i += kQThreads) {
      const int row = i / RP, c = i % RP;
      if (m0 + row >= M || c >= R) continue;
      float s = 0.f;
      for (int sp = 0; sp < splits; ++sp) s += __ldcg(parts + (size_t)sp * (kQRows * RP) + i);
      lr[(size_t)(m0 + row) * R + c] = Dt<T>::from_f(s);
    }
    if (tid == 0) lr_cnt[blockIdx.x] = 0;  // ready for the next launch
  }
}

template <typename T, int GK, int NR16>
cudaError_t launch_q(const QuantizeActArgs& a, cudaStream_t stream) {
  auto kern = quantize_act_kernel<T, GK, NR16>;
  const int smem = NR16 * 16 * kQRows * kQWarps * (int)sizeof(float);
  static bool configured = false;
  if (smem > 48 * 1024 && !configured) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
    configured = true;
  }
  dim3 grid((a.M + kQRows - 1) / kQRows, a.splits);
  kern<<<grid, kQThreads, smem, stream>>>(static_cast<const T*>(a.x), static_cast<const T*>(a.smooth),
                                           static_cast<const T*>(a.proj_down), a.xq, static_cast<T*>(a.ascales),
                                           static_cast<T*>(a.lr), a.lr_ws, a.lr_cnt, a.M, a.K, a.R);
  return cudaGetLastError();
}

template <typename T, int GK>
cudaError_t launch_rank(const QuantizeActArgs& a, cudaStream_t stream) {
  switch (padded_nr16(a.R)) {
    case 0: return launch_q<T, GK, 0>(a, stream);
    case 1: return launch_q<T, GK, 1>(a, stream);
    case 2: return launch_q<T, GK, 2>(a, stream);
    case 4: return launch_q<T, GK, 4>(a, stream);
    case 6: return launch_q<T, GK, 6>(a, stream);
    case 8: return launch_q<T, GK, 8>(a, stream);
    default: return cudaErrorInvalidValue;
  }
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

int quantize_act_splits(int M, int K, int group_size, int R) {
  static int sms = 0;
  if (sms == 0) {
    int dev = 0;
    cudaGetDevice(&dev);
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) sms = 132;
  }
  const int row_blocks = (M + kQRows - 1) / kQRows;
  const int ngroups = K / group_size;
  if (row_blocks <= 0) return 1;
  const int most = ngroups / kQWarps > 1 ? ngroups / kQWarps : 1;  // at least one group per warp
  // Pick the split that minimises the number of block waves per unit of work (two resident blocks
  // per SM at rank <= 32): 288 row blocks on 264 slots is 2 waves unsplit, 7/6 waves split 6 ways.
  const int slots = (R <= 32 ? 2 : 1) * sms;
  int best = 1;
  double best_cost = 1e30;
  for (int s = 1; s <= most && s <= 64; ++s) {
    const long blocks = (long)row_blocks * s;
    const double cost = (double)((blocks + slots - 1) / slots) / s;
    if (cost < best_cost - 1e-9) best = s, best_cost = cost;
  }
  return best;
}

size_t quantize_act_workspace_floats(int M, int R, int splits) {
  if (splits <= 1 || R <= 0) return 0;
  return (size_t)((M + kQRows - 1) / kQRows) * splits * kQRows * padded_nr16(R) * 16;
}

cudaError_t launch_quantize_act(const QuantizeActArgs& a, cudaStream_t stream) {
  if (a.M <= 0) return cudaSuccess;
  if (a.K % a.group_size || a.R > kMaxFusedRank || a.R < 0 || (a.R & 1) || a.splits < 1) return cudaErrorInvalidValue;
  if (a.splits > 1 && a.R > 0 && (a.lr_ws == nullptr || a.lr_cnt == nullptr)) return cudaErrorInvalidValue;
  if (a.dtype == DType::kBF16) return launch_group<__nv_bfloat16>(a, stream);
  return launch_group<__half>(a, stream);
}

}  // namespace svdq
