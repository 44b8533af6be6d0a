// W4A4 GEMM with per-group scales, fused low-rank up projection and bias (mma.sync, sm_80+): native 4-bit
// MMA (m16n8k64 s4) where the GPU has it (sm_80/86/87/89) and the group is 64 or 128, else int8 MMA.
//
// y[m,n] = round16( sum_g sx[m,g] sw[n,g] (xq[m,g*G:(g+1)*G] . wq[n, same])
//                   + lr[m,:] . proj_up[n,:] + bias[n] )
//
// Operands in their canonical layouts (no repack): xq int8 [M,K] (values in [-8,7]), ascales [M,K/G],
// qweight int8 [N,K/2] (element 2j in the low nibble of byte j), wscales [K/G,N], lr [M,R],
// proj_up [N,R], bias [N]. See docs/kernels.md for the fragment mapping.
#include "common.cuh"
#include "launch.h"

namespace svdq {
namespace {

constexpr int kBN = 128;
constexpr int kBK = 64;
constexpr int kStages = 4;
constexpr int kThreads = 256;
constexpr float kMagic = 12582912.0f;   // 1.5 * 2^23; 0x4B400000 read as float
constexpr int kMagicBits = 0x4B400000;  // int accumulator start: float(bits) == kMagic + dot

template <typename T, int BM, int GK>
struct GemmCfg {
  static constexpr int WM = BM / 2;       // 2 x 4 warps; warp tile WM x 32
  static constexpr int MT = WM / 16;      // m16 tiles per warp
  static constexpr int NT = 4;            // n8 tiles per warp
  static constexpr int NP = GK == 1 ? 2 : 1;  // promotions per 64-wide K tile (at most)
  static constexpr int A_BYTES = BM * kBK;         // int8 activations
  static constexpr int B_BYTES = kBN * kBK / 2;    // packed int4 weights
  static constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
  static constexpr int SMEM = kStages * STAGE_BYTES;
};

// 128-row tiles: one block per SM (240 registers); 64-row tiles: two blocks per SM (<= 128 registers).
// S4: one m16n8k64 s4 MMA per 64-wide K tile (GK >= 2: a tile never straddles a group), the activations
// packed to nibbles from the int8 tile in registers, the packed weights used as stored; the integer group
// dots are the int8 path's divided by 16, so with the same promotion the outputs are bit-identical.
template <typename T, int BM, int GK, bool S4>
__global__ void __launch_bounds__(kThreads, BM == 64 ? 2 : 1)
w4a4_gemm_kernel(const int8_t* __restrict__ xq, const T* __restrict__ ascales, const int8_t* __restrict__ qw,
                 const T* __restrict__ wscales, const T* __restrict__ lr, const T* __restrict__ pu,
                 const T* __restrict__ bias, T* __restrict__ y, int M, int N, int K, int R) {
  using C = GemmCfg<T, BM, GK>;
  constexpr int MT = C::MT, NT = C::NT, NP = C::NP;
  extern __shared__ __align__(128) uint8_t smem[];

  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 2, wn = warp & 3;
  const int r = lane >> 2, t = lane & 3;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * kBN;
  const int ngroups = K / (32 * GK);
  const int KT = (K + kBK - 1) / kBK;
  const uint32_t smem_base = smem_u32(smem);

  // ---- async tile loads (activations: 32-byte halves of each row swizzled; weights: 16-byte halves)
  const int8_t* a_src[BM * 4 / kThreads];
  uint32_t a_dst[BM * 4 / kThreads];
  int a_kc[BM * 4 / kThreads];
#pragma unroll
  for (int j = 0; j < BM * 4 / kThreads; ++j) {
    const int i = tid + j * kThreads;
    const int row = i >> 2, c = i & 3;
    a_src[j] = (m0 + row < M) ? xq + (size_t)(m0 + row) * K + c * 16 : nullptr;
    a_kc[j] = c * 16;
    // the fragment reads (32 bytes per row, 4 rows per half-warp) then hit 32 distinct banks
    a_dst[j] = row * 64 + ((((c >> 1) ^ ((row >> 1) & 1)) << 5) | ((c & 1) << 4));
  }
  const int b_n = tid >> 1, b_c = tid & 1;
  const int8_t* b_src = (n0 + b_n < N) ? qw + (size_t)(n0 + b_n) * (K / 2) + b_c * 16 : nullptr;
  const uint32_t b_dst = b_n * 32 + ((b_c ^ ((b_n >> 2) & 1)) << 4);
  auto load_tile = [&](int stage, int kt) {
    const int k0 = kt * kBK;
    const uint32_t sA = smem_base + stage * C::STAGE_BYTES;
    const uint32_t sB = sA + C::A_BYTES;
#pragma unroll
    for (int j = 0; j < BM * 4 / kThreads; ++j) {
      const bool ok = a_src[j] != nullptr && k0 + a_kc[j] < K;
      cp_async16(sA + a_dst[j], ok ? a_src[j] + k0 : xq, ok ? 16 : 0);
    }
    const bool ok = b_src != nullptr && k0 + b_c * 32 < K;
    cp_async16(sB + b_dst, ok ? b_src + k0 / 2 : qw, ok ? 16 : 0);
  };

  // ---- scale prefetch (raw 16-bit patterns; converted at promotion so the loads never stall issue).
  // Indices are clamped instead of guarded: rows >= M / cols >= N are computed but never stored.
  int sx_off[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) sx_off[mt][h] = min(m0 + wm * C::WM + mt * 16 + r + h * 8, M - 1) * ngroups;
  const unsigned short* sx_ptr = reinterpret_cast<const unsigned short*>(ascales);
  const uint32_t* sw_ptr = reinterpret_cast<const uint32_t*>(wscales) + (min(n0 + wn * 32 + t * 2, N - 2) >> 1);
  const int sw_ncols = min(4, (N - (n0 + wn * 32) + 7) / 8);  // live n8 tiles of this warp (>= 1 or dead)
  uint32_t sx_n[NP][MT][2], sw_n[NP][NT];
  auto load_scales = [&](int kt) {
#pragma unroll
    for (int p = 0; p < NP; ++p) {
      const int g = min((2 * kt + (GK == 1 ? p : 1)) / GK, ngroups - 1);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) sx_n[p][mt][h] = __ldg(sx_ptr + sx_off[mt][h] + g);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        sw_n[p][nt] = __ldg(sw_ptr + (size_t)g * (N >> 1) + (nt < sw_ncols ? nt * 4 : 0));
    }
  };

  int iacc[MT][NT][4];
  float acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        iacc[mt][nt][i] = 0;
        acc[mt][nt][i] = 0.f;
      }

  // a finished group's exact integer dots into the fp32 accumulators; x_unit undoes the x16 of the int8
  // path's nibble trick (1 on the s4 path)
  auto promote = [&](const uint32_t (&sx)[MT][2], const uint32_t (&sw)[NT], float x_unit) {
    float sxf[MT][2], swf[NT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      sxf[mt][0] = Dt<T>::bits_to_f(sx[mt][0]) * x_unit;
      sxf[mt][1] = Dt<T>::bits_to_f(sx[mt][1]) * x_unit;
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      swf[nt][0] = Dt<T>::bits_to_f(sw[nt] & 0xFFFFu);
      swf[nt][1] = Dt<T>::bits_to_f(sw[nt] >> 16);
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float d = __int_as_float(iacc[mt][nt][i]) - kMagic;  // exact integer dot
          acc[mt][nt][i] = fmaf(d, sxf[mt][i >> 1] * swf[nt][i & 1], acc[mt][nt][i]);
        }
  };

  // one MMA per (m16, n8) tile of the warp; the first of a group starts from the magic constant
  auto mma_tiles = [&](const uint32_t (&af)[MT][4], const uint32_t (&bf)[NT][2], bool group_start) {
    if (group_start) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          if constexpr (S4) mma_s4_16864_init(iacc[mt][nt], af[mt], bf[nt][0], bf[nt][1], kMagicBits);
          else mma_s8_16832_init(iacc[mt][nt], af[mt], bf[nt][0], bf[nt][1], kMagicBits);
        }
    } else {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          if constexpr (S4) mma_s4_16864(iacc[mt][nt], af[mt], bf[nt][0], bf[nt][1]);
          else mma_s8_16832(iacc[mt][nt], af[mt], bf[nt][0], bf[nt][1]);
        }
    }
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < KT) load_tile(s, s);
    cp_async_commit();
  }
  load_scales(0);

  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    {
      const int nk = kt + kStages - 1;
      if (nk < KT) load_tile(nk % kStages, nk);
      cp_async_commit();
    }
    uint32_t sx_c[NP][MT][2], sw_c[NP][NT];
#pragma unroll
    for (int p = 0; p < NP; ++p) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) sx_c[p][mt][0] = sx_n[p][mt][0], sx_c[p][mt][1] = sx_n[p][mt][1];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) sw_c[p][nt] = sw_n[p][nt];
    }
    if (kt + 1 < KT) load_scales(kt + 1);

    const int stage = kt % kStages;
    const uint8_t* sA = smem + stage * C::STAGE_BYTES;
    const uint8_t* sB = sA + C::A_BYTES;
    if constexpr (S4) {
      // a0 / a1: rows r / r + 8, k 8t..8t+7; a2 / a3: the same at k 32 + 8t (the int8 tile's second half)
      uint32_t af[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int row = wm * C::WM + mt * 16 + r;
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
          const uint8_t* p0 = sA + row * 64 + ((ks ^ ((row >> 1) & 1)) << 5) + t * 8;
          const uint2 v0 = *reinterpret_cast<const uint2*>(p0);
          const uint2 v1 = *reinterpret_cast<const uint2*>(p0 + 8 * 64);
          af[mt][2 * ks] = pack_s4x8(v0.x, v0.y);
          af[mt][2 * ks + 1] = pack_s4x8(v1.x, v1.y);
        }
      }
      uint32_t bf[NT][2];  // b0: k 8t..8t+7, b1: k 32 + 8t..: the packed bytes as stored
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int n = wn * 32 + nt * 8 + r;
#pragma unroll
        for (int ks = 0; ks < 2; ++ks)
          bf[nt][ks] = *reinterpret_cast<const uint32_t*>(sB + n * 32 + ((ks ^ ((n >> 2) & 1)) << 4) + t * 4);
      }
      mma_tiles(af, bf, GK == 2 || (kt & 1) == 0);
      if (GK == 2 || (kt & 1) == 1) promote(sx_c[0], sw_c[0], 1.f);
    } else {
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      // A: thread (r,t) takes bytes 8t..8t+7 of its row's k32 slice and de-interleaves them:
      // a0 <- even k (mma k-slots 4t..4t+3), a2 <- odd k (k-slots 16+4t..), matching the nibble
      // split of the weights below. The dot product is independent of this k order.
      uint32_t af[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int row = wm * C::WM + mt * 16 + r;
        const uint8_t* p0 = sA + row * 64 + ((ks ^ ((row >> 1) & 1)) << 5) + t * 8;
        const uint2 v0 = *reinterpret_cast<const uint2*>(p0);
        const uint2 v1 = *reinterpret_cast<const uint2*>(p0 + 8 * 64);
        af[mt][0] = __byte_perm(v0.x, v0.y, 0x6420);
        af[mt][2] = __byte_perm(v0.x, v0.y, 0x7531);
        af[mt][1] = __byte_perm(v1.x, v1.y, 0x6420);
        af[mt][3] = __byte_perm(v1.x, v1.y, 0x7531);
      }
      // B: 8 packed int4 (k = 8t..8t+7 of the slice); nibble -> high half of an int8 = 16 * value.
      uint32_t bf[NT][2];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int n = wn * 32 + nt * 8 + r;
        const uint32_t w =
            *reinterpret_cast<const uint32_t*>(sB + n * 32 + ((ks ^ ((n >> 2) & 1)) << 4) + t * 4);
        bf[nt][0] = (w << 4) & 0xF0F0F0F0u;  // even k
        bf[nt][1] = w & 0xF0F0F0F0u;         // odd k
      }
      const bool group_start = GK == 1 || (ks == 0 && (GK == 2 || (kt & 1) == 0));
      const bool group_end = GK == 1 || (ks == 1 && (GK == 2 || (kt & 1) == 1));
      mma_tiles(af, bf, group_start);

      if (group_end) promote(sx_c[GK == 1 ? ks : 0], sw_c[GK == 1 ? ks : 0], 0.0625f);
    }
    }
  }
  cp_async_wait<0>();

  // ---- epilogue: low-rank up projection on the tensor cores into the same fp32 accumulators
  const bool r_even = (R & 1) == 0;
  auto ld2 = [&](const T* base, int row, int rows, int k) -> uint32_t {
    if (row >= rows || k >= R) return 0u;
    const unsigned short* p = reinterpret_cast<const unsigned short*>(base) + (size_t)row * R + k;
    if (r_even) return __ldg(reinterpret_cast<const uint32_t*>(p));
    const uint32_t lo = __ldg(p);
    const uint32_t hi = (k + 1 < R) ? (uint32_t)__ldg(p + 1) : 0u;
    return lo | (hi << 16);
  };
  for (int k16 = 0; k16 < R; k16 += 16) {
    const int kk = k16 + t * 2;
    uint32_t bfr[NT][2];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int n = n0 + wn * 32 + nt * 8 + r;
      bfr[nt][0] = ld2(pu, n, N, kk);
      bfr[nt][1] = ld2(pu, n, N, kk + 8);
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int row = m0 + wm * C::WM + mt * 16 + r;
      uint32_t a[4];
      a[0] = ld2(lr, row, M, kk);
      a[1] = ld2(lr, row + 8, M, kk);
      a[2] = ld2(lr, row, M, kk + 8);
      a[3] = ld2(lr, row + 8, M, kk + 8);
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mma_16816<T>(acc[mt][nt], a, bfr[nt][0], bfr[nt][1]);
    }
  }

#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int col = n0 + wn * 32 + nt * 8 + t * 2;
    if (col >= N) continue;
    float b0 = 0.f, b1 = 0.f;
    if (bias != nullptr) {
      b0 = Dt<T>::to_f(bias[col]);
      b1 = Dt<T>::to_f(bias[col + 1]);
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int row = m0 + wm * C::WM + mt * 16 + r;
      if (row < M)
        *reinterpret_cast<uint32_t*>(y + (size_t)row * N + col) =
            Dt<T>::pack2(acc[mt][nt][0] + b0, acc[mt][nt][1] + b1);
      if (row + 8 < M)
        *reinterpret_cast<uint32_t*>(y + (size_t)(row + 8) * N + col) =
            Dt<T>::pack2(acc[mt][nt][2] + b0, acc[mt][nt][3] + b1);
    }
  }
}

template <typename T, int BM, int GK, bool S4>
cudaError_t launch_typed(const W4A4GemmArgs& a, cudaStream_t stream) {
  using C = GemmCfg<T, BM, GK>;
  auto kern = w4a4_gemm_kernel<T, BM, GK, S4>;
  static bool configured = false;  // per instantiation; the attribute is per device context
  if (!configured) {
    cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM);
    if (e != cudaSuccess) return e;
    configured = true;
  }
  dim3 grid((a.N + kBN - 1) / kBN, (a.M + BM - 1) / BM);
  kern<<<grid, kThreads, C::SMEM, stream>>>(
      a.xq, static_cast<const T*>(a.ascales), a.qweight, static_cast<const T*>(a.wscales),
      static_cast<const T*>(a.lr), static_cast<const T*>(a.proj_up), static_cast<const T*>(a.bias),
      static_cast<T*>(a.y), a.M, a.N, a.K, a.R);
  return cudaGetLastError();
}

// 0 (default): the 4-bit MMA where it is native; 1: also elsewhere (tests on sm_90); 2: never. The 4-bit
// path's outputs are bit-identical to the int8 path's (GPU-tested, forced, on an H200; docs/kernels.md).
int g_int4_mma = 0;

bool s4_native() {  // sm_80 / 86 / 87 / 89: 4-bit mma.sync at twice the int8 rate (sm_90 emulates it)
  static int cc[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev >= 64) return false;
  if (!cc[dev]) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    cc[dev] = 10 * major + minor;
  }
  return cc[dev] >= 80 && cc[dev] < 90;
}

bool use_s4(int group_size) {
  if (group_size != 64 && group_size != 128) return false;  // k64 MMAs need whole groups of >= 64
  return g_int4_mma == 1 || (g_int4_mma == 0 && s4_native());
}

template <typename T, int BM>
cudaError_t launch_bm(const W4A4GemmArgs& a, cudaStream_t stream) {
  const bool s4 = use_s4(a.group_size);
  switch (a.group_size) {
    case 32: return launch_typed<T, BM, 1, false>(a, stream);
    case 64: return s4 ? launch_typed<T, BM, 2, true>(a, stream) : launch_typed<T, BM, 2, false>(a, stream);
    case 128: return s4 ? launch_typed<T, BM, 4, true>(a, stream) : launch_typed<T, BM, 4, false>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}

int g_force_bm = 0;  // 0: heuristic; 64 / 128: forced (benchmarks)

template <typename T>
cudaError_t launch_dtype(const W4A4GemmArgs& a, cudaStream_t stream, int num_sms) {
  if (g_force_bm == 64) return launch_bm<T, 64>(a, stream);
  if (g_force_bm == 128) return launch_bm<T, 128>(a, stream);
  // Small M: 64-row tiles so that more blocks fill the SMs.
  const long tiles128 = (long)((a.M + 127) / 128) * ((a.N + kBN - 1) / kBN);
  if (tiles128 < 2L * num_sms) return launch_bm<T, 64>(a, stream);
  return launch_bm<T, 128>(a, stream);
}

}  // namespace

void set_gemm_tile_rows(int bm) { g_force_bm = (bm == 64 || bm == 128) ? bm : 0; }
void set_gemm_int4_mma(int mode) { g_int4_mma = (mode == 0 || mode == 1) ? mode : 2; }
int gemm_int4_mma_mode() { return g_int4_mma; }
bool gemm_int4_mma(int group_size) { return use_s4(group_size); }

cudaError_t launch_w4a4_gemm(const W4A4GemmArgs& a, cudaStream_t stream) {
  if (a.M <= 0 || a.N <= 0) return cudaSuccess;
  if (a.K % 32 || a.N % 8 || a.K % a.group_size) return cudaErrorInvalidValue;
  static int sms = 0;
  if (sms == 0) {
    int dev = 0;
    cudaGetDevice(&dev);
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) sms = 132;
  }
  if (a.dtype == DType::kBF16) return launch_dtype<__nv_bfloat16>(a, stream, sms);
  return launch_dtype<__half>(a, stream, sms);
}

}  // namespace svdq
