// Activation quantization for int4_2l with the low-rank down projection fused (Hopper: thread-block clusters).
//
// The per-row kernel (quantize_act_2l.cu) reads x once but leaves lr = x @ proj_down to cuBLAS, which reads x a
// second time (35-42 us of a 4608 x 12288 call on H200). Here x is read once for both:
//   - a cluster of C CTAs owns 16 token rows at a time; CTA r of the cluster owns the K slice [r Ks, (r+1) Ks),
//     Ks = K / C, and keeps that slice of proj_down (permuted for mma.sync) and of 1 / smooth in shared memory
//     for the whole launch: clusters are persistent and walk row blocks rb = cluster, + clusters, ...;
//   - each warp loads its NC chunks of 32 K values for the 16 rows straight into registers, lane (g, t) holding
//     x[g][8t .. 8t+7] and x[g+8][8t .. 8t+7] of each chunk: that is an mma.sync m16n8k16 A fragment once the
//     K order inside a chunk is permuted the same way for proj_down (a dot product does not care), so the down
//     projection runs on the registers as loaded, while the next row block's loads are in flight;
//   - the same registers give the group and row maxima (of x * (1 / smooth)); the row maxima and the low-rank
//     partials meet over distributed shared memory (one cluster barrier per row block, slots double-buffered
//     by row-block parity), and each CTA quantizes and stores its slice.
// Exact numerics of ops/reference.py quantize_act_2l_ref for xq and xscale (bit-identical to the per-row
// kernel); lr accumulates in fp32 in another order than cuBLAS (within 16-bit rounding of the reference).
#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "common.cuh"
#include "launch.h"

namespace svdq {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define SVDQ_Q2LF_BODY 1
#else
#define SVDQ_Q2LF_BODY 0
#endif

namespace {

constexpr int kRowsPerBlock = 16;
constexpr int kMaxThreads = 320;  // 204 registers a thread: two row blocks of NC = 6 chunks in flight

// A row of the per-warp partials: R low-rank sums, the row max, padding to 16 bytes
__host__ __device__ constexpr int part_row(int R) { return R + 4; }

// Shared memory (bytes): proj_down slice [Ks/32][NT][32 lanes][8] 16-bit | 1/smooth slice [Ks] f32 | per-warp
// partials [W][16][R + 4] f32 | received low-rank partials [2][C][16][R] f32 | received row maxima [2][C][16] f32 |
// one mbarrier per parity
size_t q2lf_smem(int Ks, int W, int C, int R) {
  return (size_t)Ks * R * 2 + (size_t)Ks * 4 + (size_t)W * kRowsPerBlock * part_row(R) * 4 +
         (size_t)2 * C * kRowsPerBlock * (R + 1) * 4 + 16;
}

__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ void cluster_barrier() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
__device__ __forceinline__ uint32_t map_rank(const void* local, uint32_t rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(smem_u32(local)), "r"(rank));
  return remote;
}
// 16 bytes into another CTA's shared memory, completing as transaction bytes on its mbarrier: no fence, so the
// sender's loads in flight (the next row block) are not waited for
__device__ __forceinline__ void st_async_v4(uint32_t remote, const float4& v, uint32_t remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, [%5];\n"
               ::"r"(remote), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w), "r"(remote_bar) : "memory");
}

template <typename T>
__device__ __forceinline__ float lo16(uint32_t w) {
  if constexpr (Dt<T>::kMax > 1e30f) return __uint_as_float(w << 16);
  else return Dt<T>::bits_to_f(w & 0xFFFFu);
}
template <typename T>
__device__ __forceinline__ float hi16(uint32_t w) {
  if constexpr (Dt<T>::kMax > 1e30f) return __uint_as_float(w & 0xFFFF0000u);
  else return Dt<T>::bits_to_f(w >> 16);
}
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = lo16<T>(w[i]);
    f[2 * i + 1] = hi16<T>(w[i]);
  }
}

// MAXT: the block's largest size (256: up to 255 registers a thread; 320: 168, since two of the four SM
// sub-partitions then hold three warps)
template <typename T, int NT, int NC, int MAXT>
__global__ void __launch_bounds__(MAXT, 1)
    quantize_act_2l_fused_kernel(const T* __restrict__ x, const T* __restrict__ smooth, const T* __restrict__ pd,
                                 int8_t* __restrict__ xq, float* __restrict__ xscale, T* __restrict__ lr, int M,
                                 int K, int G, int C) {
#if SVDQ_Q2LF_BODY
  constexpr int R = NT * 8;
  constexpr int RS = part_row(R);
  extern __shared__ __align__(16) unsigned char smem[];
  const int W = blockDim.x >> 5;
  const int Ks = K / C;
  const uint32_t rank = cluster_rank();
  const int kbase = (int)rank * Ks;
  uint4* p_s = reinterpret_cast<uint4*>(smem);
  float* rcp_s = reinterpret_cast<float*>(smem + (size_t)Ks * R * 2);
  float* part = rcp_s + Ks;                         // [W][16][RS]
  float* got_lr = part + W * kRowsPerBlock * RS;    // [2][C][16][R]
  float* got_max = got_lr + 2 * C * kRowsPerBlock * R;  // [2][C][16]
  uint64_t* bars = reinterpret_cast<uint64_t*>(got_max + 2 * C * kRowsPerBlock);  // [2]
  const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int gpc = G / 32;  // chunks per group (1, 2 or 4; NC is a multiple)
  const int clusters = gridDim.x / C, cid = blockIdx.x / C;
  const int nrb = (M + kRowsPerBlock - 1) / kRowsPerBlock;
  const int wk = w * NC * 32 + 8 * t;  // this lane's first K offset in the slice (chunk c adds 32 c)
  const T* xs_base = x + kbase + wk;

  uint4 cur[NC][2], nxt[NC][2];
  auto load = [&](uint4 (&buf)[NC][2], int rb) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = rb * kRowsPerBlock + g + 8 * h;
      const T* src = xs_base + (int64_t)row * K;
#pragma unroll
      for (int c = 0; c < NC; ++c)
        buf[c][h] = row < M ? __ldcs(reinterpret_cast<const uint4*>(src + 32 * c)) : make_uint4(0, 0, 0, 0);
    }
  };
  load(cur, cid);  // the first row block's loads run under the prologue

  // proj_down slice: element (k, n) goes to chunk k / 32, n-tile n / 8, lane (n % 8) * 4 + (k / 8) % 4, slot k % 8
  T* p_e = reinterpret_cast<T*>(p_s);
  constexpr int kBatch = 8;  // loads in flight per thread
  for (int e0 = 0; e0 < Ks * NT; e0 += kBatch * blockDim.x) {
    uint4 v[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int e = e0 + u * blockDim.x + tid, kl = e / NT;
      if (e < Ks * NT) v[u] = __ldg(reinterpret_cast<const uint4*>(pd + (int64_t)(kbase + kl) * R + (e - kl * NT) * 8));
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int e = e0 + u * blockDim.x + tid, kl = e / NT, nt = e - kl * NT;
      if (e >= Ks * NT) break;
      const T* vv = reinterpret_cast<const T*>(&v[u]);
      const int base = (((kl >> 5) * NT + nt) * 32 + ((kl >> 3) & 3)) * 8 + (kl & 7);
#pragma unroll
      for (int i = 0; i < 8; ++i) p_e[base + i * 32] = vv[i];
    }
  }
#pragma unroll 4
  for (int k = tid; k < Ks; k += blockDim.x) rcp_s[k] = __frcp_rn(Dt<T>::to_f(smooth[kbase + k]));
  if (tid == 0) {
    mbar_init(smem_u32(&bars[0]), 1);
    mbar_init(smem_u32(&bars[1]), 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  cluster_barrier();  // every CTA of the cluster runs, its barriers initialised, before any remote store

  // bytes each CTA receives per row block: every CTA's 16 row maxima; rank 0 also their low-rank partials
  const uint32_t expect = (uint32_t)(C * kRowsPerBlock * 4 + (rank == 0 ? C * kRowsPerBlock * R * 4 : 0));
  int it = 0;
#pragma unroll 1
  for (int rb = cid; rb < nrb; rb += clusters, ++it) {
    const int par = it & 1;
    if (tid == 0) mbar_expect_tx(smem_u32(&bars[par]), expect);
    if (rb + clusters < nrb) load(nxt, rb + clusters);
    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    float cmax[NC][2];
    float rmax[2] = {0.f, 0.f};
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const float4 r0 = *reinterpret_cast<const float4*>(rcp_s + wk + 32 * c);
      const float4 r1 = *reinterpret_cast<const float4*>(rcp_s + wk + 32 * c + 4);
      const float rc[8] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float f[8];
        unpack8<T>(cur[c][h], f);
        float m = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) m = fmaxf(m, fabsf(__fmul_rn(f[e], rc[e])));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        cmax[c][h] = m;
        rmax[h] = fmaxf(rmax[h], m);
      }
      const uint32_t a0[4] = {cur[c][0].x, cur[c][1].x, cur[c][0].y, cur[c][1].y};
      const uint32_t a1[4] = {cur[c][0].z, cur[c][1].z, cur[c][0].w, cur[c][1].w};
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const uint4 p = p_s[((w * NC + c) * NT + n) * 32 + lane];
        mma_16816<T>(acc[n], a0, p.x, p.y);
        mma_16816<T>(acc[n], a1, p.z, p.w);
      }
    }
    float* mine = part + w * kRowsPerBlock * RS;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      *reinterpret_cast<float2*>(mine + g * RS + n * 8 + 2 * t) = make_float2(acc[n][0], acc[n][1]);
      *reinterpret_cast<float2*>(mine + (g + 8) * RS + n * 8 + 2 * t) = make_float2(acc[n][2], acc[n][3]);
    }
    if (t == 0) {
      mine[g * RS + R] = rmax[0];
      mine[(g + 8) * RS + R] = rmax[1];
    }
    __syncthreads();
    // this CTA's partials, 16 bytes at a time: the low-rank sums to rank 0, the row maxima to every rank
    const uint32_t bar = smem_u32(&bars[par]);
    for (int i = tid; i < kRowsPerBlock * R / 4 + kRowsPerBlock / 4; i += blockDim.x) {
      if (i < kRowsPerBlock * R / 4) {
        const int r = (4 * i) / R, n = 4 * i - r * R;
        float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int ww = 0; ww < W; ++ww) {
          const float4 v = *reinterpret_cast<const float4*>(part + (ww * kRowsPerBlock + r) * RS + n);
          s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
        }
        const float* dst = got_lr + ((par * C + (int)rank) * kRowsPerBlock + r) * R + n;
        st_async_v4(map_rank(dst, 0), s, map_rank(&bars[par], 0));
      } else {
        const int r0 = 4 * (i - kRowsPerBlock * R / 4);
        float m[4] = {0.f, 0.f, 0.f, 0.f};
        for (int ww = 0; ww < W; ++ww)
#pragma unroll
          for (int j = 0; j < 4; ++j) m[j] = fmaxf(m[j], part[(ww * kRowsPerBlock + r0 + j) * RS + R]);
        const float* dst = got_max + (par * C + (int)rank) * kRowsPerBlock + r0;
        for (int q = 0; q < C; ++q)
          st_async_v4(map_rank(dst, q), make_float4(m[0], m[1], m[2], m[3]), map_rank(&bars[par], q));
      }
    }
    mbar_wait(bar, (it >> 1) & 1);
    const float* maxes = got_max + par * C * kRowsPerBlock;
    float amax[2] = {0.f, 0.f};
    for (int q = 0; q < C; ++q) {
      amax[0] = fmaxf(amax[0], maxes[q * kRowsPerBlock + g]);
      amax[1] = fmaxf(amax[1], maxes[q * kRowsPerBlock + g + 8]);
    }
    const int row0 = rb * kRowsPerBlock;
    if (rank == 0) {
      const float* sums = got_lr + par * C * kRowsPerBlock * R;
      for (int i = tid; i < kRowsPerBlock * R; i += blockDim.x) {
        const int r = i / R;
        if (row0 + r >= M) continue;
        float s = 0.f;
        for (int q = 0; q < C; ++q) s += sums[q * kRowsPerBlock * R + i];
        lr[(int64_t)row0 * R + i] = Dt<T>::from_f(s);
      }
      if (tid < kRowsPerBlock && row0 + tid < M) {
        float a = 0.f;
        for (int q = 0; q < C; ++q) a = fmaxf(a, maxes[q * kRowsPerBlock + tid]);
        xscale[row0 + tid] = __fdiv_rn(a, 112.f);
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row0 + g + 8 * h;
      const float s_row = __fdiv_rn(amax[h], 112.f);
      int s_int = 1;
      float inv = 0.f;
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        if (c % gpc == 0) {  // a group's first chunk: its integer scale and reciprocal, for its gpc chunks
          float gmax = 0.f;
#pragma unroll
          for (int c2 = 0; c2 < NC; ++c2)
            if (c2 >= c && c2 < c + gpc) gmax = fmaxf(gmax, cmax[c2][h]);
          s_int = 1;
          if (amax[h] > 0.f) s_int = min(16, max(1, (int)ceilf(__fdiv_rn(gmax, amax[h]) * 16.f)));
          const float scale = __fmul_rn(s_row, (float)s_int);
          inv = __frcp_rn(scale);
          if (!(scale > 0.f) || isinf(inv)) inv = 0.f;  // as the reference: 0 where 1 / scale is not finite
        }
        const float4 r0 = *reinterpret_cast<const float4*>(rcp_s + wk + 32 * c);
        const float4 r1 = *reinterpret_cast<const float4*>(rcp_s + wk + 32 * c + 4);
        const float rc[8] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
        float f[8];
        unpack8<T>(cur[c][h], f);
        int b[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          // clamp, then round half-even by adding 1.5 * 2^23: the low byte of the sum's bits is q (two's
          // complement), and (that word * s_int) has q * s_int in its low byte
          const float p = fminf(7.f, fmaxf(-8.f, __fmul_rn(__fmul_rn(f[e], rc[e]), inv)));
          b[e] = __float_as_int(__fadd_rn(p, 12582912.f)) * s_int;
        }
        const uint32_t w0 = __byte_perm(__byte_perm(b[0], b[1], 0x0040), __byte_perm(b[2], b[3], 0x0040), 0x5410);
        const uint32_t w1 = __byte_perm(__byte_perm(b[4], b[5], 0x0040), __byte_perm(b[6], b[7], 0x0040), 0x5410);
        if (row < M) *reinterpret_cast<uint2*>(xq + (int64_t)row * K + kbase + wk + 32 * c) = make_uint2(w0, w1);
      }
    }
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      cur[c][0] = nxt[c][0];
      cur[c][1] = nxt[c][1];
    }
  }
  cluster_barrier();  // no CTA leaves while a peer's stores to it may be in flight
#endif
}

template <typename T, int NT, int NC, int MAXT>
const void* kernel_ptr() {
  return reinterpret_cast<const void*>(&quantize_act_2l_fused_kernel<T, NT, NC, MAXT>);
}

template <typename T>
const void* pick_kernel(int NT, int NC, int threads) {
#define SVDQ_Q2LF(NTV, NCV)                                                      \
  if (NT == NTV && NC == NCV)                                                    \
    return threads <= 256 ? kernel_ptr<T, NTV, NCV, 256>() : kernel_ptr<T, NTV, NCV, kMaxThreads>();
  SVDQ_Q2LF(2, 2) SVDQ_Q2LF(2, 4) SVDQ_Q2LF(2, 6)
  SVDQ_Q2LF(4, 2) SVDQ_Q2LF(4, 4) SVDQ_Q2LF(4, 6)
  SVDQ_Q2LF(6, 2) SVDQ_Q2LF(6, 4) SVDQ_Q2LF(6, 6)
  SVDQ_Q2LF(8, 2) SVDQ_Q2LF(8, 4) SVDQ_Q2LF(8, 6)
#undef SVDQ_Q2LF
  return nullptr;
}

int g_fused_mode = 0;  // 0: never (default: measured slower, perf-notes v2.16), 1: where a shape exists (Hopper)
int g_force_cluster = 0;  // benchmarks: force this cluster size (0: the cost model)
constexpr size_t kSmemLimit = 227 * 1024;

// Modelled time (ns) of one launch with this shape; inf where it does not fit.
double q2lf_cost(int M, int K, int R, int C, int num_sms) {
  const int Ks = K / C;
  const int clusters = std::max(1, num_sms / C);
  const int nrb = (M + kRowsPerBlock - 1) / kRowsPerBlock;
  const int rounds = (nrb + clusters - 1) / clusters;
  const double prologue = 1000.0 + (double)Ks * R * 2 / 40.0;       // proj_down slice from L2
  const double per_block = 700.0 + (double)Ks * kRowsPerBlock * 2 / 30.0;  // cluster exchange + this SM's HBM share
  return prologue + (rounds + 1) * per_block;
}

}  // namespace

Q2lfShape q2lf_shape(int M, int K, int R, int G, int num_sms) {
  Q2lfShape best;
  if (R <= 0 || R % 16 || R > 64 || K <= 0 || G < 32 || G > 128 || G % 32) return best;
  double best_cost = 1e300;
  for (int C = 2; C <= 8; ++C) {  // (st.async needs a peer: a cluster of one is not a cluster)
    if (g_force_cluster && C != g_force_cluster) continue;
    if (K % C) continue;
    const int Ks = K / C;
    for (int NC : {6, 4, 2}) {
      if (NC % (G / 32) || Ks % (NC * 32)) continue;
      const int W = Ks / (NC * 32);
      if (W < 1 || W * 32 > kMaxThreads) continue;
      const size_t smem = q2lf_smem(Ks, W, C, R);
      if (smem > kSmemLimit) continue;
      const double cost = q2lf_cost(M, K, R, C, num_sms) * (W < 4 ? 1.25 : 1.0);
      if (cost < best_cost) {
        best_cost = cost;
        best = Q2lfShape{C, W, NC, smem};
      }
      break;  // the largest NC that fits: fewest warps, longest rows of loads per lane
    }
  }
  return best;
}

void set_quantize_act_2l_fused(int mode, int cluster) {
  g_fused_mode = mode;
  g_force_cluster = cluster;
}
int quantize_act_2l_fused_mode() { return g_fused_mode; }

bool quantize_act_2l_fused_supported(int M, int K, int R, int G, int num_sms) {
#ifdef SVDQ_BUILT_SM90A
  return g_fused_mode != 0 && q2lf_shape(M, K, R, G, num_sms).C > 0;
#else
  (void)M, (void)K, (void)R, (void)G, (void)num_sms;
  return false;
#endif
}

cudaError_t launch_quantize_act_2l_fused(const QuantizeAct2lArgs& a, int num_sms, cudaStream_t stream) {
  const Q2lfShape s = q2lf_shape(a.M, a.K, a.R, a.group_size, num_sms);
  if (s.C == 0) return cudaErrorInvalidValue;
  if (a.M == 0) return cudaSuccess;
  const bool bf = a.dtype == DType::kBF16;
  const void* kern = bf ? pick_kernel<__nv_bfloat16>(a.R / 8, s.NC, s.W * 32) : pick_kernel<__half>(a.R / 8, s.NC, s.W * 32);
  if (!kern) return cudaErrorInvalidValue;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  // per (device, kernel, cluster, threads): the smem attribute set and the clusters that fit at once
  static std::mutex mu;
  static std::map<std::tuple<int, const void*, int, int>, int> fits;
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = s.C;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.blockDim = dim3(s.W * 32);
  cfg.dynamicSmemBytes = s.smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int max_clusters = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    const auto key = std::make_tuple(dev, kern, s.C, s.W);
    auto it = fits.find(key);
    if (it == fits.end()) {
      e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSmemLimit);
      if (e != cudaSuccess) return e;
      cfg.gridDim = dim3(s.C * std::max(1, num_sms / s.C));
      int n = 0;
      e = cudaOccupancyMaxActiveClusters(&n, kern, &cfg);
      if (e != cudaSuccess) return e;
      it = fits.emplace(key, n).first;
    }
    max_clusters = it->second;
  }
  if (max_clusters <= 0) return cudaErrorInvalidConfiguration;
  const int nrb = (a.M + kRowsPerBlock - 1) / kRowsPerBlock;
  cfg.gridDim = dim3(s.C * std::min(nrb, max_clusters));
  int M = a.M, K = a.K, G = a.group_size, C = s.C;
  const void* x = a.x;
  const void* smooth = a.smooth;
  const void* pd = a.proj_down;
  int8_t* xq = a.xq;
  float* xscale = a.xscale;
  void* lr = a.lr;
  void* args[] = {&x, &smooth, &pd, &xq, &xscale, &lr, &M, &K, &G, &C};
  return cudaLaunchKernelExC(&cfg, kern, args);
}

}  // namespace svdq
