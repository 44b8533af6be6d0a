// Activation quantization for int4_2l with the low-rank down projection fused, threads on fixed columns (Hopper).
//
// As in quantize_act_2l_fused_sm90.cu (q.7), a cluster of C CTAs owns 16 token rows at a time, CTA `rank` the K
// slice [rank Ks, (rank + 1) Ks) with that slice of proj_down resident in shared memory, so x is read from DRAM
// once for the quantization and for lr = x @ proj_down. q.7 ran 2.5x the per-row kernel's time by its per-element
// work (perf-notes v2.17, v2.46); here each part of that work is gone:
//   - thread (rg, c) owns the 16-byte column vector c of the slice in rows rg, rg + RG, ... (RPT rows) of every
//     block, so its eight 1 / smooth values stay in registers for the whole launch, and its x * (1 / smooth) values
//     stay in registers from the group maxima to the quantization: x is read from shared memory once by its thread
//     and once by ldmatrix for the mma (the stage is swizzled: vector c of row r at c ^ (r % 8));
//   - two CTA barriers a block (the stage has landed; the maxima and the mma partials are written);
//   - the row maxima go to every peer (st.async, completing on its mbarrier) before the down projection's mma, and
//     are waited for after it; the low-rank partials go to the rank owning their quad and are waited for after the
//     quantization; the x stage of block j + 2 is requested as soon as block j's is read.
// Exact numerics of ops/reference.py quantize_act_2l_ref for xq and xscale (bit-identical to the per-row kernel);
// lr accumulates in fp32 in another order than cuBLAS (within 16-bit rounding of the reference).
// Opt-in: set_quantize_act_2l_fused(2) (perf-notes v2.47).
#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "common.cuh"
#include "fused_quant_sm90.cuh"
#include "launch.h"

namespace svdq {
namespace {

constexpr int kRows = 16;  // token rows per block (one mma m16 tile)

// Byte offsets of the shared-memory buffers (all multiples of 16). W: warps per row group; NW: warps.
struct Q2lcLayout {
  int Ks, C, R, W, NW;
  __host__ __device__ int xr() const { return Ks + 8; }  // 16-bit elements per proj_down^T row (+16 B: ldmatrix)
  __host__ __device__ int qpr() const { return (R / 4 + C - 1) / C; }  // low-rank quads per rank
  __host__ __device__ size_t pt() const { return 0; }  // [R][xr] proj_down^T slice
  __host__ __device__ size_t xs() const { return (size_t)R * xr() * 2; }  // [2][16][Ks] x stages (swizzled)
  __host__ __device__ size_t red() const { return xs() + (size_t)2 * kRows * Ks * 2; }  // [NW][16][R] f32
  __host__ __device__ size_t wred() const { return red() + (size_t)NW * kRows * R * 4; }  // [16][W] f32
  __host__ __device__ size_t gmx() const { return wred() + ((size_t)kRows * W * 4 + 15) / 16 * 16; }  // [2][16][C]
  __host__ __device__ size_t glr() const { return gmx() + (size_t)2 * kRows * C * 4; }  // [2][C][16][qpr] float4
  __host__ __device__ size_t bars() const { return glr() + (size_t)2 * C * kRows * qpr() * 16; }  // max[2], lr[2]
  __host__ __device__ size_t total() const { return bars() + 32; }
};

template <int RPT>
constexpr int max_threads() {  // eight rows a thread: 64 fp32 values live from the maxima to the quantization
  return RPT == 8 ? 384 : 512;
}

template <typename T, int NT, int RPT>
__global__ void __launch_bounds__(max_threads<RPT>(), 1)
    quantize_act_2l_cols_kernel(const T* __restrict__ x, const T* __restrict__ smooth, const T* __restrict__ pd,
                                int8_t* __restrict__ xq, float* __restrict__ xscale, T* __restrict__ lr, int M, int K,
                                int G, int C, int W) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int R = NT * 8, RG = kRows / RPT;
  extern __shared__ __align__(128) unsigned char smem[];
  const int Ks = K / C, VS = Ks / 8, nwarps = blockDim.x >> 5;
  const Q2lcLayout L{Ks, C, R, W, nwarps};
  const int XR = L.xr(), qpr = L.qpr();
  T* pt = reinterpret_cast<T*>(smem + L.pt());
  const uint32_t xs_s = smem_u32(smem + L.xs());
  float* red = reinterpret_cast<float*>(smem + L.red());
  float* wred = reinterpret_cast<float*>(smem + L.wred());
  float* gmx = reinterpret_cast<float*>(smem + L.gmx());
  float4* glr = reinterpret_cast<float4*>(smem + L.glr());
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L.bars());  // [0, 1]: row maxima, [2, 3]: low-rank partials
  const uint32_t rank = cluster_rank();
  const int kbase = (int)rank * Ks;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int rg = tid / (W * 32), c = tid - rg * W * 32;  // row group; column vector of the slice
  const bool col = c < VS;                                // (the last warp of a group may reach past the slice)
  const int clusters = gridDim.x / C, cid = blockIdx.x / C;
  const int nrb = (M + kRows - 1) / kRows;
  const int nblk = (nrb - cid + clusters - 1) / clusters;  // this cluster's row blocks (the grid has cid < nrb)
  const int vpg = G / 8;                                   // vectors per group: consecutive lanes
  // low-rank quads this rank owns (quad q goes to rank q % C) and the bytes each phase of its barriers receives
  const int owned = (int)rank < R / 4 ? (R / 4 - (int)rank + C - 1) / C : 0;
  const uint32_t max_bytes = (uint32_t)(C * kRows * 4), lr_bytes = (uint32_t)(owned * kRows * 16 * C);

  auto issue = [&](int j) {  // this thread's vectors of the cluster's j-th row block into stage j % 2
    if (j < nblk && col) {
      const int row0 = (cid + j * clusters) * kRows;
      const uint32_t st = xs_s + (uint32_t)((j & 1) * kRows * Ks * 2);
#pragma unroll
      for (int i = 0; i < RPT; ++i) {
        const int r = rg + RG * i, m = row0 + r;
        const T* src = m < M ? x + (int64_t)m * K + kbase + c * 8 : x;
        cp_async16(st + r * Ks * 2 + ((c ^ (r & 7)) << 4), src, m < M ? 16 : 0);
      }
    }
    cp_async_commit();
  };
  issue(0);
  issue(1);
  load_proj_down_t<T, NT>(pt, pd, kbase, Ks, XR);
  float rc[8];
  {
#pragma unroll
    for (int e = 0; e < 8; ++e) rc[e] = col ? __frcp_rn(Dt<T>::to_f(smooth[kbase + c * 8 + e])) : 0.f;
  }
  if (tid == 0) {
    for (int b = 0; b < 4; ++b) mbar_init(smem_u32(&bars[b]), 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    for (int b = 0; b < 2; ++b) {  // blocks 0 and 1
      mbar_expect_tx(smem_u32(&bars[b]), max_bytes);
      // (a rank owning no quad has no lr phases: re-armed with 0 bytes, a phase would complete at once and run a
      // parity ahead of threads still waiting on the last one)
      if (lr_bytes) mbar_expect_tx(smem_u32(&bars[2 + b]), lr_bytes);
    }
  }
  __syncthreads();
  cluster_barrier();  // every CTA of the cluster runs, its barriers armed, before any remote store

#pragma unroll 1
  for (int j = 0; j < nblk; ++j) {
    const int par = j & 1;
    const uint32_t phase = (j >> 1) & 1;
    const int row0 = (cid + j * clusters) * kRows;
    const uint32_t st = xs_s + (uint32_t)(par * kRows * Ks * 2);
    cp_async_wait<1>();
    __syncthreads();  // block j's stage has landed for every thread (the mma reads all of it)

    float v[RPT][8], gm[RPT];
#pragma unroll
    for (int i = 0; i < RPT; ++i) {  // x * (1 / smooth), group maxima, the warp's row maxima
      const int r = rg + RG * i;
      uint4 raw = make_uint4(0u, 0u, 0u, 0u);
      if (col) asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                            : "=r"(raw.x), "=r"(raw.y), "=r"(raw.z), "=r"(raw.w)
                            : "r"(st + r * Ks * 2 + ((c ^ (r & 7)) << 4)));
      float f[8];
      unpack8<T>(raw, f);
      float m = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        v[i][e] = __fmul_rn(f[e], rc[e]);
        m = fmaxf(m, fabsf(v[i][e]));
      }
      for (int o = 1; o < vpg; o <<= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
      gm[i] = m;
      for (int o = vpg; o < 32; o <<= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
      if (lane == 0) wred[r * W + warp % W] = m;
    }

    {  // the down projection's partial over this warp's k-steps of the slice
      float acc[NT][4] = {};
      const int steps = Ks / 16, s1 = (warp + 1) * steps / nwarps;
      const int arow = lane & 15;
      const uint32_t a_row = st + arow * Ks * 2;
      const uint32_t b_base = smem_u32(pt + ((lane & 7) + (lane >> 4) * 8) * XR + ((lane >> 3) & 1) * 8);
      for (int s = warp * steps / nwarps; s < s1; ++s) {
        uint32_t a[4];
        ldmatrix_x4(a, a_row + (((2 * s + (lane >> 4)) ^ (arow & 7)) << 4));
#pragma unroll
        for (int p = 0; p < NT / 2; ++p) {
          uint32_t b[4];
          ldmatrix_x4(b, b_base + (p * 16 * XR + s * 16) * 2);
          mma_16816<T>(acc[2 * p], a, b[0], b[1]);
          mma_16816<T>(acc[2 * p + 1], a, b[2], b[3]);
        }
      }
      const int g = lane >> 2, t = lane & 3;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        float* pp = red + (warp * kRows + g) * R + nt * 8 + 2 * t;
        *reinterpret_cast<float2*>(pp) = make_float2(acc[nt][0], acc[nt][1]);
        *reinterpret_cast<float2*>(pp + 8 * R) = make_float2(acc[nt][2], acc[nt][3]);
      }
    }
    __syncthreads();  // the warps' row maxima and partials are written; block j's stage is read

    for (int i = tid; i < kRows * C; i += blockDim.x) {  // this CTA's maximum of row i % 16 to rank i / 16
      const int r = i & (kRows - 1), q = i >> 4;
      float m = 0.f;
      for (int w = 0; w < W; ++w) m = fmaxf(m, wred[r * W + w]);
      st_async_f32(map_rank(gmx + (par * kRows + r) * C + rank, q), m, map_rank(&bars[par], q));
    }
    for (int i = tid; i < kRows * R / 4; i += blockDim.x) {  // this CTA's low-rank quads to their owners
      const int r = i / (R / 4), qd = i - r * (R / 4);
      float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int w = 0; w < nwarps; ++w) {
        const float4 p = *reinterpret_cast<const float4*>(red + (w * kRows + r) * R + qd * 4);
        s.x += p.x, s.y += p.y, s.z += p.z, s.w += p.w;
      }
      const int owner = qd % C;
      st_async_v4(map_rank(glr + ((par * C + (int)rank) * kRows + r) * qpr + qd / C, owner), s,
                  map_rank(&bars[2 + par], owner));
    }
    issue(j + 2);  // into the stage just read

    mbar_wait(smem_u32(&bars[par]), phase);
    if (tid == 0) mbar_expect_tx(smem_u32(&bars[par]), max_bytes);  // block j + 2's phase
#pragma unroll
    for (int i = 0; i < RPT; ++i) {  // quantize block j from registers
      const int r = rg + RG * i, m = row0 + r;
      const float4* mx = reinterpret_cast<const float4*>(gmx + (par * kRows + r) * C);
      float amax = 0.f;
      for (int q = 0; q < C / 4; ++q) {
        const float4 w4 = mx[q];
        amax = fmaxf(amax, fmaxf(fmaxf(w4.x, w4.y), fmaxf(w4.z, w4.w)));
      }
      const float s_row = __fdiv_rn(amax, 112.f);
      if (rank == 0 && c == 0 && m < M) xscale[m] = s_row;
      int s_int = 1;
      if (amax > 0.f) s_int = min(16, max(1, (int)ceilf(__fdiv_rn(gm[i], amax) * 16.f)));
      const float scale = __fmul_rn(s_row, (float)s_int);
      float inv = __frcp_rn(scale);
      if (!(scale > 0.f) || isinf(inv)) inv = 0.f;  // as the reference: 0 where 1 / scale is not finite
      // no clamp where the row's amax is finite and s_row normal (quantize_act_2l.cu's lean form: |q| <= 7)
      const bool clamp = !(amax >= 0x1p-100f && amax <= 3.40282347e38f);
      int b[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        // round half-even by adding 1.5 * 2^23: the low byte of the sum's bits is q (two's complement), and
        // (that word * s_int) has q * s_int in its low byte
        float p = __fmul_rn(v[i][e], inv);
        if (clamp) p = fminf(7.f, fmaxf(-8.f, p));
        b[e] = __float_as_int(__fadd_rn(p, 12582912.f)) * s_int;
      }
      const uint32_t w0 = __byte_perm(__byte_perm(b[0], b[1], 0x0040), __byte_perm(b[2], b[3], 0x0040), 0x5410);
      const uint32_t w1 = __byte_perm(__byte_perm(b[4], b[5], 0x0040), __byte_perm(b[6], b[7], 0x0040), 0x5410);
      if (col && m < M) *reinterpret_cast<uint2*>(xq + (int64_t)m * K + kbase + c * 8) = make_uint2(w0, w1);
    }

    if (!lr_bytes) continue;
    mbar_wait(smem_u32(&bars[2 + par]), phase);
    if (tid == 0) mbar_expect_tx(smem_u32(&bars[2 + par]), lr_bytes);
    for (int i = tid; i < kRows * qpr; i += blockDim.x) {  // the low-rank quads this rank owns, summed in rank order
      const int r = i / qpr, slot = i - r * qpr, qd = slot * C + (int)rank;
      if (qd >= R / 4 || row0 + r >= M) continue;
      float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int q = 0; q < C; ++q) {
        const float4 p = glr[((par * C + q) * kRows + r) * qpr + slot];
        s.x += p.x, s.y += p.y, s.z += p.z, s.w += p.w;
      }
      *reinterpret_cast<uint2*>(lr + (int64_t)(row0 + r) * R + qd * 4) =
          make_uint2(Dt<T>::pack2(s.x, s.y), Dt<T>::pack2(s.z, s.w));
    }
  }
  cp_async_wait<0>();
  cluster_barrier();  // no CTA leaves while a peer's stores to it may be in flight
#endif
}

template <typename T, int NT, int RPT>
const void* kernel_ptr() {
  return reinterpret_cast<const void*>(&quantize_act_2l_cols_kernel<T, NT, RPT>);
}
template <typename T>
const void* pick_kernel(int NT, int RPT) {
#define SVDQ_Q2LC(NTV)                                                                      \
  if (NT == NTV) return RPT == 4 ? kernel_ptr<T, NTV, 4>() : kernel_ptr<T, NTV, 8>();
  SVDQ_Q2LC(2) SVDQ_Q2LC(4) SVDQ_Q2LC(6) SVDQ_Q2LC(8)
#undef SVDQ_Q2LC
  return nullptr;
}

constexpr size_t kSmemLimit = 227 * 1024;

}  // namespace

Q2lcShape q2lc_shape(int M, int K, int R, int G, int force_cluster) {
  (void)M;
  Q2lcShape best;
  if (R <= 0 || R % 16 || R > 64 || K <= 0 || (G != 32 && G != 64 && G != 128)) return best;
  for (int C : {8, 16, 4}) {  // the portable size first; 16 where a slice of 8 does not fit
    if (force_cluster && C != force_cluster) continue;
    if (K % C || (K / C) % 64 || (K / C) % G) continue;
    const int Ks = K / C, W = (Ks / 8 + 31) / 32;
    // RPT = 4 (four row groups) where 4 W warps fit the block, else 8 (two)
    const int rpt = 4 * W * 32 <= max_threads<4>() ? 4 : 2 * W * 32 <= max_threads<8>() ? 8 : 0;
    if (rpt == 0) continue;
    const int threads = kRows / rpt * W * 32;
    const size_t smem = Q2lcLayout{Ks, C, R, W, threads / 32}.total();
    if (smem > kSmemLimit) continue;
    return Q2lcShape{C, W, rpt, threads, smem};
  }
  return best;
}

namespace {
// A launch of `grid` CTAs in clusters of s.C (attrs points into the object: not copyable)
struct ClusterLaunch {
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[1];
  ClusterLaunch(const Q2lcShape& s, int grid, cudaStream_t stream) {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = s.C;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.gridDim = dim3(grid);
    cfg.blockDim = dim3(s.threads);
    cfg.dynamicSmemBytes = s.smem;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

// per (device, kernel, cluster size, shared bytes): the clusters that fit at once (the attributes set once)
int clusters_fit(const void* kern, const Q2lcShape& s, int num_sms, cudaError_t* err) {
  static std::mutex mu;
  static std::map<std::tuple<int, const void*, int, size_t>, int> fits;
  int dev = 0;
  *err = cudaGetDevice(&dev);
  if (*err != cudaSuccess) return 0;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(dev, kern, s.C, s.smem);
  auto it = fits.find(key);
  if (it != fits.end()) return it->second;
  *err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSmemLimit);
  if (*err == cudaSuccess && s.C > 8) *err = cudaFuncSetAttribute(kern, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  if (*err != cudaSuccess) return 0;
  ClusterLaunch l(s, s.C * std::max(1, num_sms / s.C), nullptr);
  int n = 0;
  *err = cudaOccupancyMaxActiveClusters(&n, kern, &l.cfg);
  if (*err != cudaSuccess) return 0;
  fits.emplace(key, n);
  return n;
}

const void* kernel_for(DType dtype, int R, const Q2lcShape& s) {
  return dtype == DType::kBF16 ? pick_kernel<__nv_bfloat16>(R / 8, s.RPT) : pick_kernel<__half>(R / 8, s.RPT);
}
}  // namespace

bool quantize_act_2l_cols_supported(int M, int K, int R, int G, int num_sms, int force_cluster) {
#ifdef SVDQ_BUILT_SM90A
  const Q2lcShape s = q2lc_shape(M, K, R, G, force_cluster);
  if (s.C == 0) return false;
  cudaError_t e = cudaSuccess;  // (both dtypes' kernels have the same resources)
  return clusters_fit(kernel_for(DType::kBF16, R, s), s, num_sms, &e) > 0 && e == cudaSuccess;
#else
  (void)M, (void)K, (void)R, (void)G, (void)num_sms, (void)force_cluster;
  return false;
#endif
}

cudaError_t launch_quantize_act_2l_cols(const QuantizeAct2lArgs& a, int num_sms, int force_cluster, int cap_clusters,
                                        int* grid, cudaStream_t stream) {
  const Q2lcShape s = q2lc_shape(a.M, a.K, a.R, a.group_size, force_cluster);
  if (s.C == 0) return cudaErrorInvalidValue;
  if (a.M == 0) return cudaSuccess;
  const void* kern = kernel_for(a.dtype, a.R, s);
  if (!kern) return cudaErrorInvalidValue;
  cudaError_t e = cudaSuccess;
  int max_clusters = clusters_fit(kern, s, num_sms, &e);
  if (e != cudaSuccess) return e;
  if (max_clusters <= 0) return cudaErrorInvalidConfiguration;
  if (cap_clusters > 0) max_clusters = std::min(max_clusters, cap_clusters);
  const int nrb = (a.M + kRows - 1) / kRows;
  ClusterLaunch l(s, s.C * std::min(nrb, max_clusters), stream);
  *grid = (int)l.cfg.gridDim.x;
  int M = a.M, K = a.K, G = a.group_size, C = s.C, W = s.W;
  const void* x = a.x;
  const void* smooth = a.smooth;
  const void* pd = a.proj_down;
  int8_t* xq = a.xq;
  float* xscale = a.xscale;
  void* lr = a.lr;
  void* args[] = {&x, &smooth, &pd, &xq, &xscale, &lr, &M, &K, &G, &C, &W};
  return cudaLaunchKernelExC(&l.cfg, kern, args);
}

}  // namespace svdq
