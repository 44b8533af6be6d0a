// Thin torch binding of the svdquant kernels: checks, allocation, stream; the kernels live in *.cu.
#include <c10/cuda/CUDAStream.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>
#include <tuple>
#include <unordered_map>

#include "launch.h"

namespace {

// The pybind functions report errors by returning undefined tensors (None in Python) plus last_error().
// KNOWN ISSUE: on the lent H100/H200 image (torch 2.11, /opt/gcc toolchain) a pybind call that these checks
// rejected crashed the process (segfault), both with TORCH_CHECK and with this non-throwing path, always
// on a message holding a number (see msg below). svdquant_hf/ops/cuda.py validates inputs before calling
// them, and the dispatcher kernels
// below only call them on inputs they have checked; errors raised in the dispatcher kernels (the
// Python fallback's ValueError, rethrown as c10::ValueError) do reach the caller (tested there).
thread_local std::string g_last_error;

std::string last_error() { return g_last_error; }

// Error messages without iostreams (c10::str formats through std::ostringstream). Every crash on rejected
// input so far came from a message with a number in it, and the first checks, whose messages hold only
// text, reported cleanly: the lent image builds extensions with another GCC than the libstdc++ the process
// runs, and the stream's number formatting is the suspect (not confirmed on the GPU yet).
inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, c10::ScalarType v) { s += c10::toString(v); }
template <typename T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
inline void append(std::string& s, T v) {
  s += std::to_string(v);
}
template <typename... A>
std::string msg(const A&... parts) {
  std::string s;
  (append(s, parts), ...);
  return s;
}

#define SVDQ_REQUIRE(cond, ...)                 \
  do {                                          \
    if (!(cond)) {                              \
      g_last_error = msg(__VA_ARGS__);          \
      return {};                                \
    }                                           \
  } while (0)

bool is_16bit(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf; }

svdq::DType dtype_of(const at::Tensor& t, const char* name) {
  (void)name;
  return t.scalar_type() == at::kBFloat16 ? svdq::DType::kBF16 : svdq::DType::kFP16;
}

// Same device and dtype as expected (else an error message), then contiguous and 16-byte aligned.
std::string mismatch(const at::Tensor& t, const at::Tensor& like, at::ScalarType dtype, const char* name) {
  if (t.device() != like.device())
    return msg("svdquant kernels: ", name, " is on ", t.device().str(), ", expected ", like.device().str());
  if (t.scalar_type() != dtype)
    return msg("svdquant kernels: ", name, " has dtype ", t.scalar_type(), ", expected ", dtype);
  return "";
}

at::Tensor prep(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

// t itself where its rows are contiguous and 16-byte aligned, only their stride wider than a row (a column block of
// a wider matrix: the shared quantizer's low-rank activations, svdquant_hf/shared_input.py); else prep(t).
at::Tensor prep_rows(const at::Tensor& t) {
  const int64_t es = t.element_size();
  if (t.dim() == 2 && t.size(0) > 1 && t.stride(1) == 1 && t.stride(0) >= t.size(1) && (t.stride(0) * es) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0)
    return t;
  return prep(t);
}

// One side stream per device for the down projection, and two events that fork it off the caller's
// stream and join it back, reused by every call (a wait binds to the event's latest record when it is
// enqueued, also under graph capture). A fresh pool stream per call cycled through the pool's streams,
// each with its own cuBLAS workspace and allocator pool: the FLUX.1 forward's peak memory was 1 GiB higher.
struct SideStream {
  c10::cuda::CUDAStream stream;
  cudaEvent_t fork, join;
};

const SideStream& side_stream(c10::DeviceIndex device) {
  static std::mutex mu;
  static std::vector<c10::optional<SideStream>> per_device(64);
  std::lock_guard<std::mutex> lock(mu);
  auto& s = per_device.at(device);
  if (!s.has_value()) {
    SideStream made{c10::cuda::getStreamFromPool(false, device), nullptr, nullptr};
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&made.fork, cudaEventDisableTiming));
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&made.join, cudaEventDisableTiming));
    s = made;
  }
  return *s;
}

// 1 / smooth per smoothing-factor tensor, computed once: a prep launch per quantizer call, ~420 a FLUX.1 forward,
// took ~1.2 ms of its GPU time (H200, perf-notes v2.22). Keyed by the tensor's impl, held weakly (an entry
// whose tensor died is dropped), and valid while its version counter, data pointer, dtype and length are unchanged,
// so an in-place change or a new tensor recomputes. A miss during CUDA graph capture computes into the graph as before
// and is not cached (the graph's memory is not the cache's); a graph captured on a hit reads the cached values.
bool g_rcp_cache = true;
struct RcpEntry {
  c10::weak_intrusive_ptr<c10::TensorImpl> impl;
  uint32_t version;
  const void* data;
  at::ScalarType dtype;
  int64_t K;
  at::Tensor rcp;
};

// rcp for smooth_in (the caller's tensor; `smooth` its contiguous form) and whether it already holds 1 / smooth.
std::pair<at::Tensor, bool> smooth_rcp(const at::Tensor& smooth_in, const at::Tensor& smooth, cudaStream_t stream) {
  const int64_t K = smooth.size(0);
  auto fresh = [&] { return at::empty({K}, smooth.options().dtype(at::kFloat)); };
  // inference tensors have no version counter to tell an in-place change: computed per call, as before the cache
  if (!g_rcp_cache || smooth_in.is_inference()) return {fresh(), false};
  static std::mutex mu;
  static std::unordered_map<const c10::TensorImpl*, RcpEntry> cache;
  c10::TensorImpl* impl = smooth_in.unsafeGetTensorImpl();
  const uint32_t version = impl->version_counter().current_version();
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(impl);
  if (it != cache.end()) {
    const RcpEntry& e = it->second;
    if (!e.impl.expired() && e.version == version && e.data == smooth_in.data_ptr() &&
        e.dtype == smooth_in.scalar_type() && e.K == K)
      return {e.rcp, true};
    cache.erase(it);
  }
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capturing));
  if (capturing != cudaStreamCaptureStatusNone) return {fresh(), false};
  for (auto e = cache.begin(); e != cache.end();) e = e->second.impl.expired() ? cache.erase(e) : std::next(e);
  at::Tensor rcp = fresh();
  C10_CUDA_CHECK(svdq::launch_smooth_rcp(dtype_of(smooth, "smooth"), smooth.data_ptr(), rcp.data_ptr<float>(), (int)K,
                                         stream));
  // once per layer, so that callers on any stream find it ready (relaxed: another thread's capture does not forbid it)
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  C10_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  const cudaError_t synced = cudaStreamSynchronize(stream);
  C10_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  C10_CUDA_CHECK(synced);
  cache.emplace(impl, RcpEntry{c10::weak_intrusive_ptr<c10::TensorImpl>(smooth_in.getIntrusivePtr()), version,
                               smooth_in.data_ptr(), smooth_in.scalar_type(), K, rcp});
  return {rcp, true};
}

bool g_lr_overlap = true;  // quantize_act_2l: the down projection on a side stream
// ... while x (16-bit) is at most this size: on the H200 the side stream pays at any size, in L2 (K = 3072) and past
// it, where both kernels stream x from DRAM and neither takes all of the bandwidth alone (-3.5 to -4.6 % for the
// quantizer and its down projection at K = 12288 / 15360, perf-notes v2.18)
int64_t g_overlap_max_bytes = INT64_MAX;
// (opt-in, set_quantize_act_2l_chunk_bytes; 0: off) past this size of x the pair runs in row chunks of about this many
// bytes of x, each chunk's down projection beside its quantizer, so that the later of the two readers finds the chunk
// in L2 instead of both streaming all of x from DRAM (at 4608 x 12288 the pair moves x twice: perf-notes v2.26);
// measured 2-5 % slower for the chain on the H100 (v2.27's outcome), so off
int64_t g_chunk_bytes = 0;

// Per-device arrival counters of the K-split low-rank reduction: zeroed once, reset by the kernel.
at::Tensor lr_counters(const at::Tensor& like, int64_t n) {
  static std::vector<at::Tensor> per_device(64);
  at::Tensor& c = per_device.at(like.device().index());
  if (!c.defined() || c.numel() < n) c = at::zeros({std::max<int64_t>(n, 4096)}, like.options().dtype(at::kInt));
  return c;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_act(const at::Tensor& x_in, const at::Tensor& smooth_in,
                                                            const at::Tensor& pd_in, int64_t group_size) {
  SVDQ_REQUIRE(x_in.is_cuda() && x_in.dim() == 2, "svdquant quantize_act: x must be a 2-D CUDA tensor");
  SVDQ_REQUIRE(is_16bit(x_in), "svdquant quantize_act: x must be bfloat16 or float16, got ", x_in.scalar_type());
  const auto dt = x_in.scalar_type();
  const svdq::DType kd = dtype_of(x_in, "x");
  const int64_t M = x_in.size(0), K = x_in.size(1);
  SVDQ_REQUIRE(group_size == 32 || group_size == 64 || group_size == 128,
              "svdquant quantize_act: group_size must be 32, 64 or 128, got ", group_size);
  SVDQ_REQUIRE(K % group_size == 0, "svdquant quantize_act: K=", K, " is not a multiple of group_size=", group_size);
  SVDQ_REQUIRE(smooth_in.dim() == 1 && smooth_in.size(0) == K, "svdquant quantize_act: smooth must be [", K, "]");
  SVDQ_REQUIRE(pd_in.dim() == 2 && pd_in.size(0) == K, "svdquant quantize_act: proj_down must be [", K, ", R]");
  c10::cuda::CUDAGuard guard(x_in.device());
  for (auto& [t, name] : {std::pair<const at::Tensor&, const char*>{smooth_in, "smooth"}, {pd_in, "proj_down"}}) {
    const std::string e = mismatch(t, x_in, dt, name);
    SVDQ_REQUIRE(e.empty(), e);
  }
  at::Tensor x = prep(x_in);
  at::Tensor smooth = prep(smooth_in);
  at::Tensor pd = prep(pd_in);
  const int64_t R = pd.size(1);
  if (R % 2 == 1 && R <= svdq::kMaxFusedRank) {  // the kernel loads rank pairs: pad odd ranks with a zero column
    auto [xq2, asc2, lr2] = quantize_act(x, smooth, at::constant_pad_nd(pd, {0, 1}), group_size);
    if (!xq2.defined()) return {};
    return {xq2, asc2, lr2.narrow(1, 0, R).contiguous()};
  }
  auto xq = at::empty({M, K}, x.options().dtype(at::kChar));
  auto ascales = at::empty({M, K / group_size}, x.options());
  auto lr = at::empty({M, R}, x.options());
  const bool fused = R <= svdq::kMaxFusedRank;
  const int rf = fused ? (int)R : 0;
  const int splits = svdq::quantize_act_splits((int)M, (int)K, (int)group_size, rf);
  at::Tensor ws, cnt;
  if (splits > 1 && rf > 0) {
    ws = at::empty({(int64_t)svdq::quantize_act_workspace_floats((int)M, rf, splits)}, x.options().dtype(at::kFloat));
    cnt = lr_counters(x, (M + 15) / 16);
  }
  svdq::QuantizeActArgs a{kd,
                          x.data_ptr(),
                          smooth.data_ptr(),
                          pd.data_ptr(),
                          xq.data_ptr<int8_t>(),
                          ascales.data_ptr(),
                          lr.data_ptr(),
                          (int)M,
                          (int)K,
                          rf,
                          (int)group_size,
                          splits,
                          ws.defined() ? ws.data_ptr<float>() : nullptr,
                          cnt.defined() ? cnt.data_ptr<int>() : nullptr};
  const cudaError_t err = svdq::launch_quantize_act(a, c10::cuda::getCurrentCUDAStream().stream());
  SVDQ_REQUIRE(err == cudaSuccess, "svdquant quantize_act: launch failed: ", cudaGetErrorString(err));
  if (!fused && R > 0) lr.copy_(at::matmul(x.to(at::kFloat), pd.to(at::kFloat)));
  return {xq, ascales, lr};
}

at::Tensor w4a4_gemm(const at::Tensor& xq_in, const at::Tensor& asc_in, const at::Tensor& qw_in,
                     const at::Tensor& wsc_in, const at::Tensor& lr_in, const at::Tensor& pu_in,
                     const c10::optional<at::Tensor>& bias_in, int64_t group_size) {
  SVDQ_REQUIRE(xq_in.is_cuda() && xq_in.dim() == 2 && xq_in.scalar_type() == at::kChar,
              "svdquant w4a4_gemm: xq must be a 2-D int8 CUDA tensor");
  SVDQ_REQUIRE(is_16bit(lr_in), "svdquant w4a4_gemm: lr_act must be bfloat16 or float16, got ", lr_in.scalar_type());
  const auto dt = lr_in.scalar_type();
  const svdq::DType kd = dtype_of(lr_in, "lr_act");
  const int64_t M = xq_in.size(0), K = xq_in.size(1), N = qw_in.size(0), R = lr_in.size(1);
  SVDQ_REQUIRE(group_size == 32 || group_size == 64 || group_size == 128,
              "svdquant w4a4_gemm: group_size must be 32, 64 or 128, got ", group_size);
  SVDQ_REQUIRE(K % group_size == 0, "svdquant w4a4_gemm: K=", K, " is not a multiple of group_size=", group_size);
  SVDQ_REQUIRE(N % 8 == 0, "svdquant w4a4_gemm: N=", N, " must be a multiple of 8");
  SVDQ_REQUIRE(qw_in.dim() == 2 && qw_in.size(1) * 2 == K && qw_in.scalar_type() == at::kChar,
              "svdquant w4a4_gemm: qweight must be int8 [N, K/2] = [", N, ", ", K / 2, "]");
  SVDQ_REQUIRE(asc_in.dim() == 2 && asc_in.size(0) == M && asc_in.size(1) == K / group_size,
              "svdquant w4a4_gemm: ascales must be [", M, ", ", K / group_size, "]");
  SVDQ_REQUIRE(wsc_in.dim() == 2 && wsc_in.size(0) == K / group_size && wsc_in.size(1) == N,
              "svdquant w4a4_gemm: wscales must be [", K / group_size, ", ", N, "]");
  SVDQ_REQUIRE(lr_in.dim() == 2 && lr_in.size(0) == M, "svdquant w4a4_gemm: lr_act must be [", M, ", R]");
  SVDQ_REQUIRE(pu_in.dim() == 2 && pu_in.size(0) == N && pu_in.size(1) == R,
              "svdquant w4a4_gemm: proj_up must be [", N, ", ", R, "]");
  c10::cuda::CUDAGuard guard(xq_in.device());
  for (auto& [t, name, want] :
       {std::tuple<const at::Tensor&, const char*, at::ScalarType>{qw_in, "qweight", at::kChar},
        {asc_in, "ascales", dt}, {wsc_in, "wscales", dt}, {lr_in, "lr_act", dt}, {pu_in, "proj_up", dt}}) {
    const std::string e = mismatch(t, xq_in, want, name);
    SVDQ_REQUIRE(e.empty(), e);
  }
  at::Tensor bias;
  if (bias_in.has_value()) {
    SVDQ_REQUIRE(bias_in->dim() == 1 && bias_in->size(0) == N, "svdquant w4a4_gemm: bias must be [", N, "]");
    const std::string e = mismatch(*bias_in, xq_in, dt, "bias");
    SVDQ_REQUIRE(e.empty(), e);
    bias = prep(*bias_in);
  }
  at::Tensor xq = prep(xq_in);
  at::Tensor qw = prep(qw_in);
  at::Tensor asc = prep(asc_in);
  at::Tensor wsc = prep(wsc_in);
  at::Tensor lr = prep(lr_in);
  at::Tensor pu = prep(pu_in);
  auto y = at::empty({M, N}, lr.options());
  svdq::W4A4GemmArgs a{kd,
                       xq.data_ptr<int8_t>(),
                       asc.data_ptr(),
                       qw.data_ptr<int8_t>(),
                       wsc.data_ptr(),
                       lr.data_ptr(),
                       pu.data_ptr(),
                       bias.defined() ? bias.data_ptr() : nullptr,
                       y.data_ptr(),
                       (int)M,
                       (int)N,
                       (int)K,
                       (int)R,
                       (int)group_size};
  const cudaError_t err = svdq::launch_w4a4_gemm(a, c10::cuda::getCurrentCUDAStream().stream());
  SVDQ_REQUIRE(err == cudaSuccess, "svdquant w4a4_gemm: launch failed: ", cudaGetErrorString(err));
  return y;
}

// x2_in: the activations are cat([x_in, x2_in], 1), read in place (quantize_act_2l_cat; K1 = x_in's width % 8 == 0)
// Whether the down projection x @ pd takes our few-token kernel: its shapes, contiguous 16-byte-aligned operands, and an
// sm_90 device (the kernel is built for sm_90a only)
bool is_sm90(const at::Tensor& t) {
  const cudaDeviceProp* p = at::cuda::getDeviceProperties(t.device().index());
  return p->major == 9 && p->minor == 0;
}
// x and pd as that kernel (plain or chained) reads them: contiguous, 16-byte aligned, on an sm_90 device
bool lowrank_down_operands_ok(const at::Tensor& x, const at::Tensor& pd) {
  return x.is_contiguous() && pd.is_contiguous() && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(pd.data_ptr()) % 16 == 0 && is_sm90(x);
}
bool lowrank_down_ok(const at::Tensor& x, const at::Tensor& pd, int M, int K) {
  return svdq::lowrank_down_takes(M, K, (int)pd.size(1)) && lowrank_down_operands_ok(x, pd);
}
// Whether quantize_act_2l takes the down projection beside the quantizer (its rule, the side stream on, chunking off,
// operands 16-byte aligned and contiguous).
bool beside_ok(const at::Tensor& x, const at::Tensor& x2, const at::Tensor& pd, int64_t M, int64_t K, int64_t K1,
               int R) {
  if (svdq::lowrank_down_beside() == 0 || !g_lr_overlap || g_chunk_bytes != 0 || M * K * 2 > g_overlap_max_bytes)
    return false;  // (off, the default: no device-property lookup per call)
  if (!svdq::lowrank_down_beside_takes((int)M, (int)K, x2.defined() ? (int)K1 : (int)K, R, M * K * 2,
                                       at::cuda::getCurrentDeviceProperties()->l2CacheSize))
    return false;
  if (x2.defined() && (!x2.is_contiguous() || reinterpret_cast<uintptr_t>(x2.data_ptr()) % 16 != 0)) return false;
  return lowrank_down_operands_ok(x, pd);
}

// The last quantize_act_2l call of this thread: its stream, xq, lr, proj_down, M and whether it chained its down
// projection (set_lr_chain). A GEMM on the same stream given exactly these xq and lr takes them late where chained
// (W4A4Gemm2lArgs::lr_late): it starts as soon as the down projection lets it (the quantizer done) and waits for lr
// before its epilogue; any other GEMM, or one after another quantizer call, launches as before. The GEMM also leaves
// its grid under (proj_down, M): set_lr_chain's rule (-1) chains a later call with that proj_down and M only where the
// side stream would run our few-token kernel too (M <= 256, K <= 4096, rank <= 64: the chained kernel sums the same
// slices in the same order, so lr and every output are the same bits either way; past that K our kernel on so few CTAs
// is slower than the GEMM it hides under, perf-notes v2.29) and that GEMM was a persistent kernel leaving at least one
// SM per 16 tokens free.
struct LrChainRecord {
  cudaStream_t stream = nullptr;
  const void* xq = nullptr;
  const void* lr = nullptr;
  const void* pd = nullptr;
  int64_t M = 0;
  bool chainable = false;  // the call could have chained (its GEMM's launch is worth learning)
  bool chained = false;
};
thread_local LrChainRecord g_chain_record;
std::mutex g_chain_mu;
std::map<std::pair<const void*, int64_t>, svdq::Gemm2lLaunch> g_chain_learned;  // (proj_down, M) -> its GEMM's launch

// The down projection's CTA budget where a call that could chain (lowrank_down_chain_takes, operands as the kernel
// reads them) chains (0: not chained)
int chain_ctas(const at::Tensor& pd_in, int64_t M, int64_t K, int R) {
  const int mode = svdq::lr_chain();
  if (mode > 0) return 32;
  if (mode == 0 || !svdq::lowrank_down_takes((int)M, (int)K, R)) return 0;
  std::lock_guard<std::mutex> lock(g_chain_mu);
  const auto it = g_chain_learned.find({pd_in.data_ptr(), M});
  if (it == g_chain_learned.end() || !it->second.persistent) return 0;
  const long free = at::cuda::getCurrentDeviceProperties()->multiProcessorCount - it->second.ctas;
  return free >= (M + 15) / 16 ? (int)free : 0;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_act_2l(const at::Tensor& x_in, const at::Tensor& smooth_in,
                                                               const at::Tensor& pd_in, int64_t group_size,
                                                               const c10::optional<at::Tensor>& x2_in = c10::nullopt) {
  SVDQ_REQUIRE(x_in.is_cuda() && x_in.dim() == 2 && is_16bit(x_in),
               "svdquant quantize_act_2l: x must be a 2-D bfloat16/float16 CUDA tensor");
  const int64_t M = x_in.size(0), K1 = x_in.size(1), K = K1 + (x2_in.has_value() ? x2_in->size(1) : 0);
  if (x2_in.has_value()) {
    SVDQ_REQUIRE(x2_in->dim() == 2 && x2_in->size(0) == M && K1 % 8 == 0,
                 "svdquant quantize_act_2l_cat: b must be [", M, ", K2] and a's width a multiple of 8");
    const std::string e = mismatch(*x2_in, x_in, x_in.scalar_type(), "b");
    SVDQ_REQUIRE(e.empty(), e);
  }
  SVDQ_REQUIRE(group_size == 32 || group_size == 64 || group_size == 128,
               "svdquant quantize_act_2l: group_size must be 32, 64 or 128, got ", group_size);
  SVDQ_REQUIRE(smooth_in.dim() == 1 && smooth_in.size(0) == K, "svdquant quantize_act_2l: smooth must be [", K, "]");
  SVDQ_REQUIRE(pd_in.dim() == 2 && pd_in.size(0) == K, "svdquant quantize_act_2l: proj_down must be [", K, ", R]");
  c10::cuda::CUDAGuard guard(x_in.device());
  for (auto& [t, name] : {std::pair<const at::Tensor&, const char*>{smooth_in, "smooth"}, {pd_in, "proj_down"}}) {
    const std::string e = mismatch(t, x_in, x_in.scalar_type(), name);
    SVDQ_REQUIRE(e.empty(), e);
  }
  SVDQ_REQUIRE(K % group_size == 0, "svdquant quantize_act_2l: K=", K, " is not a multiple of group_size=", group_size);
  SVDQ_REQUIRE(svdq::quantize_act_2l_supported((int)K), "svdquant quantize_act_2l: K=", K, " not supported");
  at::Tensor x = prep(x_in), smooth = prep(smooth_in);
  const at::Tensor x2 = x2_in.has_value() ? prep(*x2_in) : at::Tensor();
  g_chain_record = {};
  auto xq = at::empty({M, K}, x.options().dtype(at::kChar));
  auto xscale = at::empty({M}, x.options().dtype(at::kFloat));
  const c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream();
  svdq::QuantizeAct2lArgs a{dtype_of(x, "x"), x.data_ptr(), smooth.data_ptr(), nullptr,
                            xq.data_ptr<int8_t>(), xscale.data_ptr<float>(), (int)M, (int)K, (int)group_size};
  const at::Tensor pd = pd_in.contiguous();
  if (x2.defined()) a.x2 = x2.data_ptr(), a.K1 = (int)K1;
  // out = cat([x, x2], 1) @ pd: two cuBLAS calls for a pair, the wider part first (FLUX: the MLP's 12288 columns). On
  // the side stream the first call overlaps the quantizer, the second waits for SMs the quantizer frees at its end
  // (H200: with the attention's 3072 columns first, the MLP's part ran after the quantizer, +25 us)
  // rows [r0, r0 + m) of x (and x2) @ pd into out's rows
  const auto down_rows = [&](at::Tensor& out_all, int64_t r0, int64_t m) -> cudaError_t {
    const at::Tensor xr = x.narrow(0, r0, m), x2r = x2.defined() ? x2.narrow(0, r0, m) : x2;
    at::Tensor out = out_all.narrow(0, r0, m);
    if (!x2.defined() && lowrank_down_ok(xr, pd, (int)m, (int)K))  // a few tokens: our one kernel
      return svdq::launch_lowrank_down(dtype_of(x, "x"), xr.data_ptr(), pd.data_ptr(), out.data_ptr(), (int)m, (int)K,
                                       (int)pd.size(1), at::cuda::getCurrentDeviceProperties()->multiProcessorCount,
                                       c10::cuda::getCurrentCUDAStream().stream());
    if (!x2.defined()) {
      at::mm_out(out, xr, pd);
      return cudaSuccess;
    }
    const bool second_wider = K - K1 >= K1;
    const at::Tensor& wide = second_wider ? x2r : xr;
    const at::Tensor& narrow = second_wider ? xr : x2r;
    at::mm_out(out, wide, second_wider ? pd.narrow(0, K1, K - K1) : pd.narrow(0, 0, K1));
    out.addmm_(narrow, second_wider ? pd.narrow(0, 0, K1) : pd.narrow(0, K1, K - K1));
    return cudaSuccess;
  };
  const auto down_projection = [&](at::Tensor& out) { return down_rows(out, 0, M); };
  at::Tensor lr;
  const int R = (int)pd.size(1);
  // (set_lr_chain) whether this call may chain its down projection; the record of it for the GEMM after it
  const bool chainable = !x2.defined() && g_chunk_bytes == 0 && svdq::lowrank_down_chain_takes((int)M, (int)K, R) &&
                         lowrank_down_operands_ok(x, pd);
  const auto remember = [&](const at::Tensor& lr, bool chained) {
    g_chain_record = {c10::cuda::getCurrentCUDAStream().stream(), xq.data_ptr(), lr.data_ptr(), pd_in.data_ptr(), M,
                      chainable, chained};
  };
  const cudaDeviceProp* prop =
      R > 0 && svdq::quantize_act_2l_fused_mode() ? at::cuda::getCurrentDeviceProperties() : nullptr;  // opt-in
  // (the concatenation's two parts: the fixed-column kernel only, mode 2, with the seam between its 64-value units)
  const bool parts_ok = !x2.defined() || (svdq::quantize_act_2l_fused_mode() == 2 && K1 > 0 && K1 % 64 == 0 &&
                                          reinterpret_cast<uintptr_t>(x2.data_ptr()) % 16 == 0);
  if (prop && parts_ok && prop->major == 9 && prop->minor == 0 &&
      reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(pd.data_ptr()) % 16 == 0 &&
      svdq::quantize_act_2l_fused_supported((int)M, (int)K, R, (int)group_size, prop->multiProcessorCount)) {
    // opt-in on Hopper: one kernel reads x once for both the quantization and the down projection
    lr = at::empty({M, R}, x.options());
    a.proj_down = pd.data_ptr();
    a.lr = lr.data_ptr();
    a.R = R;
    const cudaError_t err = svdq::launch_quantize_act_2l_fused(a, prop->multiProcessorCount, main.stream());
    SVDQ_REQUIRE(err == cudaSuccess, "svdquant quantize_act_2l: fused launch failed: ", cudaGetErrorString(err));
    return {xq, xscale, lr};
  }
  // the per-row kernel's 1 / smooth (the fused kernel computes its own)
  const auto [rcp, rcp_ready] = smooth_rcp(smooth_in, smooth, main.stream());
  a.rcp = rcp.data_ptr<float>();
  a.rcp_ready = rcp_ready;
  if (pd.size(1) == 0) {
    lr = at::empty({M, 0}, x.options());
  } else if (const int ctas = chainable ? chain_ctas(pd_in, M, K, R) : 0) {
    // set_lr_chain, a few tokens: the down projection after the quantizer on this stream, beside it (launched
    // programmatically) and, for the GEMM that reads these xq and lr, under that GEMM's main loop
    lr = at::empty({M, R}, x.options());
    const cudaError_t err = svdq::launch_quantize_act_2l(a, main.stream());
    SVDQ_REQUIRE(err == cudaSuccess, "svdquant quantize_act_2l: launch failed: ", cudaGetErrorString(err));
    const cudaError_t derr = svdq::launch_lowrank_down_chain(
        dtype_of(x, "x"), x.data_ptr(), pd.data_ptr(), lr.data_ptr(), (int)M, (int)K, R,
        at::cuda::getCurrentDeviceProperties()->multiProcessorCount, ctas, main.stream());
    SVDQ_REQUIRE(derr == cudaSuccess, "svdquant quantize_act_2l: down projection failed: ", cudaGetErrorString(derr));
    remember(lr, true);
    return {xq, xscale, lr};
  } else if (beside_ok(x, x2, pd, M, K, K1, R)) {
    // many tokens past L2 (Hopper): the down projection beside the persistent quantizer on the CTAs it leaves free,
    // each 64-row block once the quantizer has read it (set_lowrank_down_beside; perf-notes v2.30), on the side
    // stream; its tensors belong to the main stream, which waits for the side stream (as in the branch below).
    lr = at::empty({M, R}, x.options());
    // the items' partials [items, M, R] (fp32), then the call's counters (2 per 64-row block), zeroed here
    const int64_t np = svdq::lowrank_down_beside_items((int)K) * M * R, nc = 2 * svdq::lowrank_down_beside_blocks((int)M);
    at::Tensor work = at::empty({np + nc}, x.options().dtype(at::kFloat));
    int* counters = reinterpret_cast<int*>(work.data_ptr<float>() + np);
    C10_CUDA_CHECK(cudaMemsetAsync(counters, 0, nc * sizeof(int), main.stream()));
    const SideStream& side = side_stream(x.device().index());
    C10_CUDA_CHECK(cudaEventRecord(side.fork, main.stream()));
    C10_CUDA_CHECK(cudaStreamWaitEvent(side.stream.stream(), side.fork, 0));
    // the quantizer first (the down projection waits for its rows, so it must not run without it), on (1 - share) of
    // the CTAs that fit; the down projection's CTAs take the room left
    a.leave = svdq::lowrank_down_beside_share();
    a.ready = counters;
    const cudaError_t err = svdq::launch_quantize_act_2l(a, main.stream());
    const cudaError_t derr =
        err != cudaSuccess ? err
                           : svdq::launch_lowrank_down_beside(
                                 dtype_of(x, "x"), x.data_ptr(), x2.defined() ? x2.data_ptr() : nullptr,
                                 x2.defined() ? (int)K1 : (int)K, pd.data_ptr(), lr.data_ptr(), work.data_ptr<float>(),
                                 counters, (int)M, (int)K, R,
                                 svdq::lowrank_down_beside_ctas(at::cuda::getCurrentDeviceProperties()->multiProcessorCount),
                                 side.stream.stream());
    C10_CUDA_CHECK(cudaEventRecord(side.join, side.stream.stream()));
    C10_CUDA_CHECK(cudaStreamWaitEvent(main.stream(), side.join, 0));
    SVDQ_REQUIRE(derr == cudaSuccess, "svdquant quantize_act_2l: down projection failed: ", cudaGetErrorString(derr));
    SVDQ_REQUIRE(err == cudaSuccess, "svdquant quantize_act_2l: launch failed: ", cudaGetErrorString(err));
    remember(lr, false);
    return {xq, xscale, lr};
  } else if (g_lr_overlap && M * K * 2 <= g_overlap_max_bytes) {
    // the low-rank down projection (cuBLAS, fp32 accumulation) on a side stream, concurrent with the
    // quantizer: both stream x, so while x fits in L2 the later reader finds it there (measured on H100:
    // -8 % at 4608 x 3072, -33 % at M = 256..1024), and past L2 the two share the DRAM bandwidth that neither
    // takes alone (H200: -3.5 to -4.6 % at K = 12288 / 15360, M = 4096 / 4608). Every tensor belongs to
    // the main stream (lr included: allocated here, written by mm_out) and the main stream waits for the
    // side stream before returning, so no later main-stream work can reuse their memory early: no
    // record_stream (whose deferred frees cost host time per call) is needed.
    lr = at::empty({M, pd.size(1)}, x.options());
    const SideStream& side = side_stream(x.device().index());
    cudaError_t derr = cudaSuccess, err = cudaSuccess;
    // one chunk: all rows, or (set_quantize_act_2l_chunk_bytes) runs of a multiple of 128 rows; chunk i + 1's down
    // projection starts once chunk i's quantizer is done, so the two kernels read each chunk at about the same time
    const int64_t row_bytes = K * 2;
    const int64_t chunk = g_chunk_bytes > 0 && M * row_bytes > g_chunk_bytes
                              ? std::max<int64_t>(128, g_chunk_bytes / row_bytes / 128 * 128)
                              : M;
    for (int64_t r0 = 0; r0 < M; r0 += chunk) {
      const int64_t m = std::min(chunk, M - r0);
      C10_CUDA_CHECK(cudaEventRecord(side.fork, main.stream()));
      C10_CUDA_CHECK(cudaStreamWaitEvent(side.stream.stream(), side.fork, 0));
      {
        c10::cuda::CUDAStreamGuard on_side(side.stream);
        const cudaError_t e = down_rows(lr, r0, m);
        if (derr == cudaSuccess) derr = e;
      }
      svdq::QuantizeAct2lArgs ac = a;
      ac.x = static_cast<const char*>(a.x) + r0 * (x2.defined() ? K1 : K) * 2;
      if (x2.defined()) ac.x2 = static_cast<const char*>(a.x2) + r0 * (K - K1) * 2;
      ac.xq = a.xq + r0 * K;
      ac.xscale = a.xscale + r0;
      ac.M = (int)m;
      ac.rcp_ready = a.rcp_ready || r0 > 0;  // the first chunk's launch computed it on this stream
      const cudaError_t e = svdq::launch_quantize_act_2l(ac, main.stream());
      if (err == cudaSuccess) err = e;
    }
    C10_CUDA_CHECK(cudaEventRecord(side.join, side.stream.stream()));
    C10_CUDA_CHECK(cudaStreamWaitEvent(main.stream(), side.join, 0));
    SVDQ_REQUIRE(err == cudaSuccess, "svdquant quantize_act_2l: launch failed: ", cudaGetErrorString(err));
    SVDQ_REQUIRE(derr == cudaSuccess, "svdquant quantize_act_2l: down projection failed: ", cudaGetErrorString(derr));
    remember(lr, false);
    return {xq, xscale, lr};
  }
  const cudaError_t err = svdq::launch_quantize_act_2l(a, main.stream());
  SVDQ_REQUIRE(err == cudaSuccess, "svdquant quantize_act_2l: launch failed: ", cudaGetErrorString(err));
  if (pd.size(1)) {
    lr = at::empty({M, pd.size(1)}, x.options());
    const cudaError_t derr = down_projection(lr);
    SVDQ_REQUIRE(derr == cudaSuccess, "svdquant quantize_act_2l: down projection failed: ", cudaGetErrorString(derr));
  }
  remember(lr, false);
  return {xq, xscale, lr};
}

// The int4_2l GEMM; group_size 0: qweight holds the weights widened to int8 q * s_int [N, K] (wscales unused);
// frag: the packed qweight is in fragment order (svdquant_hf/ops/layout_2l.py).
at::Tensor gemm_2l(const at::Tensor& xq_in, const at::Tensor& xs_in, const at::Tensor& qw_in,
                   const at::Tensor& wsc_in, const at::Tensor& wch_in, const at::Tensor& lr_in,
                   const at::Tensor& pu_in, const c10::optional<at::Tensor>& bias_in, int64_t group_size,
                   bool frag = false, int64_t act = 0, const c10::optional<at::Tensor>& prefix_in = c10::nullopt) {
  SVDQ_REQUIRE(xq_in.is_cuda() && xq_in.dim() == 2 && xq_in.scalar_type() == at::kChar,
               "svdquant w4a4_gemm_2l: xq must be a 2-D int8 CUDA tensor");
  SVDQ_REQUIRE(is_16bit(lr_in), "svdquant w4a4_gemm_2l: lr_act must be bfloat16 or float16");
  const auto dt = lr_in.scalar_type();
  const int64_t M = xq_in.size(0), K = xq_in.size(1), N = qw_in.size(0), R = lr_in.size(1);
  const bool w8 = group_size == 0;
  SVDQ_REQUIRE(w8 || group_size == 32 || group_size == 64 || group_size == 128,
               "svdquant w4a4_gemm_2l: group_size must be 32, 64 or 128, got ", group_size);
  SVDQ_REQUIRE(K % 128 == 0 && N % 128 == 0 && K <= 65536, "svdquant w4a4_gemm_2l: needs K % 128 == 0, N % 128 == 0");
  SVDQ_REQUIRE(R % 16 == 0 && R <= svdq::kMaxRank2l, "svdquant w4a4_gemm_2l: rank ", R, " must be a multiple of 16");
  SVDQ_REQUIRE(qw_in.dim() == 2 && qw_in.size(1) * (w8 ? 1 : 2) == K, "svdquant w4a4_gemm_2l: qweight must be [N, ",
               w8 ? "K" : "K/2", "]");
  SVDQ_REQUIRE(w8 || (wsc_in.dim() == 2 && wsc_in.size(0) == K / group_size && wsc_in.size(1) == N),
               "svdquant w4a4_gemm_2l: wscales must be [", w8 ? 0 : K / group_size, ", ", N, "]");
  SVDQ_REQUIRE(xs_in.numel() == M && wch_in.numel() == N && lr_in.size(0) == M && pu_in.size(0) == N &&
                   pu_in.size(1) == R,
               "svdquant w4a4_gemm_2l: xscale/wchannel/lr_act/proj_up shapes");
  c10::cuda::CUDAGuard guard(xq_in.device());
  for (auto& [t, name, want] :
       {std::tuple<const at::Tensor&, const char*, at::ScalarType>{qw_in, "qweight", at::kChar},
        {xs_in, "xscale", at::kFloat}, {wsc_in, "wscales", w8 ? at::kChar : at::kByte}, {wch_in, "wchannel", at::kFloat},
        {lr_in, "lr_act", dt}, {pu_in, "proj_up", dt}}) {
    const std::string e = mismatch(t, xq_in, want, name);
    SVDQ_REQUIRE(e.empty(), e);
  }
  at::Tensor bias;
  if (bias_in.has_value()) {
    SVDQ_REQUIRE(bias_in->dim() == 1 && bias_in->size(0) == N, "svdquant w4a4_gemm_2l: bias must be [", N, "]");
    const std::string e = mismatch(*bias_in, xq_in, dt, "bias");
    SVDQ_REQUIRE(e.empty(), e);
    bias = prep(*bias_in);
  }
  SVDQ_REQUIRE(act == 0 || act == 1, "svdquant w4a4_gemm_2l: activation must be 0 (none) or 1 (GELU tanh), got ", act);
  // prefix [M, P]: the output is cat([prefix, y], 1), y written in place as the column block [P, P + N)
  const int64_t P = prefix_in.has_value() ? prefix_in->size(1) : 0;
  if (prefix_in.has_value()) {
    SVDQ_REQUIRE(prefix_in->dim() == 2 && prefix_in->size(0) == M && P % 8 == 0,
                 "svdquant w4a4_gemm_2l: prefix must be [", M, ", P] with P % 8 == 0");
    const std::string e = mismatch(*prefix_in, xq_in, dt, "prefix");
    SVDQ_REQUIRE(e.empty(), e);
  }
  auto y = at::empty({M, P + N}, lr_in.options());
  if (M == 0) return y;
  if (P) {  // the prefix into the first P columns, ahead of the GEMM on the same stream
    const at::Tensor pre = prep(*prefix_in);
    const int64_t es = y.element_size();
    const cudaError_t ce = svdq::launch_copy_columns(y.data_ptr(), (P + N) * es, pre.data_ptr(), P * es, M, P * es,
                                                     c10::cuda::getCurrentCUDAStream().stream());
    SVDQ_REQUIRE(ce == cudaSuccess, "svdquant w4a4_gemm_2l: prefix copy failed: ", cudaGetErrorString(ce));
  }
  at::Tensor xq = prep(xq_in), xs = prep(xs_in), qw = prep(qw_in), wsc = prep(wsc_in), wch = prep(wch_in);
  at::Tensor lr = prep_rows(lr_in), pu = prep(pu_in);
  svdq::W4A4Gemm2lArgs a{dtype_of(lr, "lr_act"), xq.data_ptr<int8_t>(), xs.data_ptr<float>(), qw.data_ptr<int8_t>(),
                         w8 ? nullptr : wsc.data_ptr<uint8_t>(), wch.data_ptr<float>(), lr.data_ptr(), pu.data_ptr(),
                         bias.defined() ? bias.data_ptr() : nullptr, static_cast<char*>(y.data_ptr()) + P * y.element_size(),
                         (int)M, (int)N, (int)K, (int)R, (int)group_size, frag && !w8, P + N, (int)act,
                         lr.stride(0)};
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const LrChainRecord rec = g_chain_record;
  const bool from_record = rec.lr && rec.stream == stream && rec.xq == a.xq && rec.lr == a.lr;
  if (from_record) {
    a.lr_late = rec.chained && !P;  // (with a prefix, its copy runs between: nothing to gain)
    g_chain_record = {};
  }
  const bool gemv = svdq::gemv_2l_takes(a) && !svdq::gemm_2l_plan_forced();
  const cudaError_t err = gemv ? svdq::launch_w4a4_gemv_2l(a, stream) : svdq::launch_w4a4_gemm_2l(a, sms, stream);
  SVDQ_REQUIRE(err == cudaSuccess, "svdquant w4a4_gemm_2l: launch failed: ", cudaGetErrorString(err));
  if (from_record && rec.chainable) {  // set_lr_chain's rule: what this GEMM left free, for the next such call
    std::lock_guard<std::mutex> lock(g_chain_mu);
    if (g_chain_learned.size() > 65536) g_chain_learned.clear();  // (pointers of freed layers: a bound, not a cache)
    g_chain_learned[{rec.pd, rec.M}] = gemv ? svdq::Gemm2lLaunch{} : svdq::gemm_2l_last_launch();
  }
  return y;
}

at::Tensor w4a4_gemm_2l(const at::Tensor& xq, const at::Tensor& xs, const at::Tensor& qw, const at::Tensor& wsc,
                        const at::Tensor& wch, const at::Tensor& lr, const at::Tensor& pu,
                        const c10::optional<at::Tensor>& bias, int64_t group_size) {
  if (group_size == 0) {  // 0 is the int8 layout's marker, not a group size
    g_last_error = "svdquant w4a4_gemm_2l: group_size must be 32, 64 or 128, got 0";
    return {};
  }
  return gemm_2l(xq, xs, qw, wsc, wch, lr, pu, bias, group_size);
}

// The same GEMM on packed weights in fragment order (SVDQuantLinear.set_fragment_order), with an optional epilogue:
// an activation (0 none, 1 GELU tanh) and the output written after `prefix`'s columns, cat([prefix, act(y)], 1) in
// one allocation (FLUX's single blocks: the attention output and the MLP's GELU).
at::Tensor w4a4_gemm_2l_fo_ep(const at::Tensor& xq, const at::Tensor& xs, const at::Tensor& qw, const at::Tensor& wsc,
                              const at::Tensor& wch, const at::Tensor& lr, const at::Tensor& pu,
                              const c10::optional<at::Tensor>& bias, int64_t group_size, int64_t act = 0,
                              const c10::optional<at::Tensor>& prefix = c10::nullopt) {
  if (group_size == 0) {
    g_last_error = "svdquant w4a4_gemm_2l_fo: group_size must be 32, 64 or 128, got 0";
    return {};
  }
  return gemm_2l(xq, xs, qw, wsc, wch, lr, pu, bias, group_size, true, act, prefix);
}

at::Tensor w4a4_gemm_2l_fo(const at::Tensor& xq, const at::Tensor& xs, const at::Tensor& qw, const at::Tensor& wsc,
                           const at::Tensor& wch, const at::Tensor& lr, const at::Tensor& pu,
                           const c10::optional<at::Tensor>& bias, int64_t group_size) {
  return w4a4_gemm_2l_fo_ep(xq, xs, qw, wsc, wch, lr, pu, bias, group_size);
}

// The int4_2l GEMM on weights stored widened (int8 q * s_int, [N, K]; benchmarks/expanded layout experiments).
at::Tensor w8a4_gemm_2l(const at::Tensor& xq, const at::Tensor& xs, const at::Tensor& wq8, const at::Tensor& wch,
                        const at::Tensor& lr, const at::Tensor& pu, const c10::optional<at::Tensor>& bias) {
  return gemm_2l(xq, xs, wq8, wq8, wch, lr, pu, bias, 0);
}

// --- the int4_2l ops' CUDA kernels for the dispatcher ----------------------------------------------
// torch.ops.svdquant.{quantize_act_2l, w4a4_gemm_2l, w8a4_gemm_2l, w4a4_gemm_2l_fo} on CUDA tensors land here
// (registered below when this library loads), so a compiled graph calls the kernels without passing through
// Python. The GEMM checks the device and pads the rank first (the pybind function leaves both to its Python caller).
// Inputs these kernels do not take go to the Python CUDA path (svdquant_hf/ops/cuda.py, handed over by
// register_fallbacks): it raises the clear errors and runs the reference where needed.

py::object* g_fallbacks = new py::object[5];  // leaked: no destructor runs after the interpreter is gone

template <typename Ret, typename... Args>
Ret python_fallback(int which, const char* op, const Args&... args) {
  py::gil_scoped_acquire gil;
  TORCH_CHECK(g_fallbacks[which] && !g_fallbacks[which].is_none(), "svdquant::", op,
              ": the Python fallback is not registered (import svdquant_hf before calling the op)");
  try {
    return g_fallbacks[which](args...).template cast<Ret>();
  } catch (py::error_already_set& e) {  // the Python path's clear errors keep their type (ValueError)
    const std::string msg = py::str(e.value());
    if (e.matches(PyExc_ValueError)) TORCH_CHECK_VALUE(false, msg);
    TORCH_CHECK(false, "svdquant::", op, ": ", msg);
  }
}

bool on(const at::Tensor& t, const at::Tensor& like, at::ScalarType dtype) {
  return t.device() == like.device() && t.scalar_type() == dtype;
}

// gs 0: qw holds the weights widened to int8 [N, K] (w8a4_gemm_2l), wsc is not read.
bool gemm_2l_takes(const at::Tensor& xq, const at::Tensor& xs, const at::Tensor& qw, const at::Tensor& wsc,
                   const at::Tensor& wch, const at::Tensor& lr, const at::Tensor& pu,
                   const c10::optional<at::Tensor>& bias, int64_t gs) {
#ifdef SVDQ_BUILT_SM90A
  constexpr bool kBuilt = true;
#else
  constexpr bool kBuilt = false;
#endif
  if (!(kBuilt && xq.is_cuda() && xq.dim() == 2 && xq.scalar_type() == at::kChar && qw.dim() == 2 && lr.dim() == 2 &&
        is_16bit(lr)))
    return false;
  const auto dt = lr.scalar_type();
  const int64_t M = xq.size(0), K = xq.size(1), N = qw.size(0), R = lr.size(1);
  const bool w8 = gs == 0;
  if (!(w8 || gs == 32 || gs == 64 || gs == 128) || K % 128 != 0 || N % 128 != 0 || K > 65536 ||
      (R + 15) / 16 * 16 > svdq::kMaxRank2l)
    return false;
  const bool weights = w8 ? qw.size(1) == K
                          : qw.size(1) * 2 == K && wsc.dim() == 2 && wsc.size(0) == K / gs && wsc.size(1) == N &&
                                on(wsc, xq, at::kByte);
  const bool shapes = weights && xs.dim() == 1 && xs.size(0) == M && wch.dim() == 1 && wch.size(0) == N && lr.size(0) == M &&
                      pu.dim() == 2 && pu.size(0) == N && pu.size(1) == R &&
                      (!bias.has_value() || (bias->dim() == 1 && bias->size(0) == N && on(*bias, xq, dt)));
  return shapes && on(qw, xq, at::kChar) && on(xs, xq, at::kFloat) &&
         on(wch, xq, at::kFloat) && on(lr, xq, dt) && on(pu, xq, dt) && is_sm90(xq);
}

// Decided before calling the binding: letting the binding's own checks decide (undefined outputs = not
// taken) crashed the process on H100 for inputs that failed a check after the first one (K = 192, a
// short smooth), while the same inputs through this pre-check and the same fallback ran; not understood.
bool quantize_2l_takes(const at::Tensor& x, const at::Tensor& smooth, const at::Tensor& pd, int64_t gs) {
  if (!(x.is_cuda() && x.dim() == 2 && is_16bit(x))) return false;
  const int64_t K = x.size(1);
  return (gs == 32 || gs == 64 || gs == 128) && smooth.dim() == 1 && smooth.size(0) == K && pd.dim() == 2 &&
         pd.size(0) == K && K % gs == 0 && on(smooth, x, x.scalar_type()) && on(pd, x, x.scalar_type()) &&
         svdq::quantize_act_2l_supported((int)K);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_act_2l_op(const at::Tensor& x, const at::Tensor& smooth,
                                                                  const at::Tensor& pd, int64_t gs) {
  using Out = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
  if (quantize_2l_takes(x, smooth, pd, gs)) {
    Out out = quantize_act_2l(x, smooth, pd, gs);
    if (std::get<0>(out).defined()) return out;
  }
  return python_fallback<Out>(0, "quantize_act_2l", x, smooth, pd, gs);
}

// gs 0: the int8-weight GEMM (qw [N, K], wsc unused); undefined when the kernel does not take the inputs.
at::Tensor gemm_2l_if_taken(const at::Tensor& xq, const at::Tensor& xs, const at::Tensor& qw, const at::Tensor& wsc,
                            const at::Tensor& wch, const at::Tensor& lr, const at::Tensor& pu,
                            const c10::optional<at::Tensor>& bias, int64_t gs, bool frag = false, int64_t act = 0,
                            const c10::optional<at::Tensor>& prefix = c10::nullopt) {
  if (!gemm_2l_takes(xq, xs, qw, wsc, wch, lr, pu, bias, gs)) return {};
  if ((act != 0 && act != 1) ||
      (prefix.has_value() && !(prefix->dim() == 2 && prefix->size(0) == xq.size(0) && prefix->size(1) % 8 == 0 &&
                               on(*prefix, xq, lr.scalar_type()))))
    return {};
  const int64_t pad = -lr.size(1) & 15;  // the kernel reads the rank in steps of 16; zero columns add 0
  const at::Tensor lr16 = pad ? at::constant_pad_nd(lr, {0, pad}) : lr;
  const at::Tensor pu16 = pad ? at::constant_pad_nd(pu, {0, pad}) : pu;
  return gemm_2l(xq, xs, qw, wsc, wch, lr16, pu16, bias, gs, frag, act, prefix);
}

at::Tensor w4a4_gemm_2l_op(const at::Tensor& xq, const at::Tensor& xs, const at::Tensor& qw, const at::Tensor& wsc,
                           const at::Tensor& wch, const at::Tensor& lr, const at::Tensor& pu,
                           const c10::optional<at::Tensor>& bias, int64_t gs) {
  if (gs != 0) {  // 0 is the int8 layout's marker, not a group size: the Python path rejects it
    at::Tensor y = gemm_2l_if_taken(xq, xs, qw, wsc, wch, lr, pu, bias, gs);
    if (y.defined()) return y;
  }
  return python_fallback<at::Tensor>(1, "w4a4_gemm_2l", xq, xs, qw, wsc, wch, lr, pu, bias, gs);
}

at::Tensor w4a4_gemm_2l_fo_op(const at::Tensor& xq, const at::Tensor& xs, const at::Tensor& qw, const at::Tensor& wsc,
                              const at::Tensor& wch, const at::Tensor& lr, const at::Tensor& pu,
                              const c10::optional<at::Tensor>& bias, int64_t gs) {
  if (gs != 0) {
    at::Tensor y = gemm_2l_if_taken(xq, xs, qw, wsc, wch, lr, pu, bias, gs, true);
    if (y.defined()) return y;
  }
  return python_fallback<at::Tensor>(3, "w4a4_gemm_2l_fo", xq, xs, qw, wsc, wch, lr, pu, bias, gs);
}

at::Tensor w4a4_gemm_2l_fo_ep_op(const at::Tensor& xq, const at::Tensor& xs, const at::Tensor& qw,
                                 const at::Tensor& wsc, const at::Tensor& wch, const at::Tensor& lr, const at::Tensor& pu,
                                 const c10::optional<at::Tensor>& bias, int64_t gs, int64_t act,
                                 const c10::optional<at::Tensor>& prefix) {
  if (gs != 0) {
    at::Tensor y = gemm_2l_if_taken(xq, xs, qw, wsc, wch, lr, pu, bias, gs, true, act, prefix);
    if (y.defined()) return y;
  }
  return python_fallback<at::Tensor>(4, "w4a4_gemm_2l_fo_ep", xq, xs, qw, wsc, wch, lr, pu, bias, gs, act, prefix);
}

at::Tensor w8a4_gemm_2l_op(const at::Tensor& xq, const at::Tensor& xs, const at::Tensor& w8, const at::Tensor& wch,
                           const at::Tensor& lr, const at::Tensor& pu, const c10::optional<at::Tensor>& bias) {
  at::Tensor y = gemm_2l_if_taken(xq, xs, w8, w8, wch, lr, pu, bias, 0);
  if (y.defined()) return y;
  return python_fallback<at::Tensor>(2, "w8a4_gemm_2l", xq, xs, w8, wch, lr, pu, bias);
}

// The Python CUDA paths, in the order of g_fallbacks.
void register_fallbacks(py::object quantize_2l, py::object gemm_2l, py::object gemm_2l_w8, py::object gemm_2l_fo,
                        py::object gemm_2l_fo_ep) {
  g_fallbacks[0] = std::move(quantize_2l);
  g_fallbacks[1] = std::move(gemm_2l);
  g_fallbacks[2] = std::move(gemm_2l_w8);
  g_fallbacks[3] = std::move(gemm_2l_fo);
  g_fallbacks[4] = std::move(gemm_2l_fo_ep);
}

}  // namespace

// FLUX's q / k: RMSNorm per head, then the rotary embedding, in one pass (svdquant::rms_norm_rope); with a front
// part (the text tokens' q / k, their own norm weight) the output is cat([front, x], 1), written in place.
at::Tensor rms_norm_rope(const at::Tensor& x, const at::Tensor& weight, double eps, const at::Tensor& cos,
                         const at::Tensor& sin, const c10::optional<at::Tensor>& front,
                         const c10::optional<at::Tensor>& front_weight) {
  SVDQ_REQUIRE(x.is_cuda() && x.dim() == 4 && is_16bit(x) && x.is_contiguous(),
               "svdquant rms_norm_rope: x must be a contiguous 4-D [B, S, H, D] bfloat16/float16 CUDA tensor");
  const int64_t B = x.size(0), H = x.size(2), D = x.size(3);
  SVDQ_REQUIRE(front.has_value() == front_weight.has_value(), "svdquant rms_norm_rope: front needs front_weight");
  const int64_t S0 = front.has_value() ? front->size(1) : 0, S = S0 + x.size(1);
  SVDQ_REQUIRE(svdq::rms_norm_rope_supported((int)D), "svdquant rms_norm_rope: head dim ", D, " not supported");
  std::vector<std::pair<const at::Tensor*, const char*>> weights{{&weight, "weight"}};
  if (front.has_value()) {
    SVDQ_REQUIRE(front->dim() == 4 && front->size(0) == B && front->size(2) == H && front->size(3) == D &&
                     front->is_contiguous(),
                 "svdquant rms_norm_rope: front must be a contiguous [", B, ", S0, ", H, ", ", D, "]");
    const std::string e = mismatch(*front, x, x.scalar_type(), "front");
    SVDQ_REQUIRE(e.empty(), e);
    weights.push_back({&*front_weight, "front_weight"});
  }
  for (const auto& [t, name] : weights) {
    SVDQ_REQUIRE(t->dim() == 1 && t->size(0) == D, "svdquant rms_norm_rope: ", name, " must be [", D, "]");
    const std::string e = mismatch(*t, x, x.scalar_type(), name);
    SVDQ_REQUIRE(e.empty(), e);
  }
  for (const at::Tensor* t : {&cos, &sin}) {
    SVDQ_REQUIRE(t->dim() == 2 && t->size(0) == S && t->size(1) == D && t->is_contiguous(),
                 "svdquant rms_norm_rope: cos / sin must be contiguous [", S, ", ", D, "]");
    const std::string m = mismatch(*t, x, at::kFloat, "cos / sin");
    SVDQ_REQUIRE(m.empty(), m);
  }
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xa = prep(x), w = weight.contiguous(), ca = prep(cos), sa = prep(sin);  // 16-byte aligned
  const at::Tensor fa = front.has_value() ? prep(*front) : at::Tensor();
  const at::Tensor fw = front.has_value() ? front_weight->contiguous() : at::Tensor();
  auto y = at::empty({B, S, H, D}, x.options());
  svdq::RmsNormRopeArgs a{dtype_of(x, "x"), xa.data_ptr(), w.data_ptr(), ca.data_ptr<float>(), sa.data_ptr<float>(),
                          y.data_ptr(), B * S * H, (int)S, (int)H, (int)D, (float)eps};
  if (front.has_value()) a.front = fa.data_ptr(), a.front_weight = fw.data_ptr(), a.S0 = (int)S0;
  const cudaError_t err = svdq::launch_rms_norm_rope(a, at::cuda::getCurrentDeviceProperties()->multiProcessorCount,
                                                     c10::cuda::getCurrentCUDAStream().stream());
  SVDQ_REQUIRE(err == cudaSuccess, "svdquant rms_norm_rope: launch failed: ", cudaGetErrorString(err));
  return y;
}

TORCH_LIBRARY_IMPL(svdquant, CUDA, m) {
  m.impl("quantize_act_2l", TORCH_FN(quantize_act_2l_op));
  m.impl("w4a4_gemm_2l", TORCH_FN(w4a4_gemm_2l_op));
  m.impl("w8a4_gemm_2l", TORCH_FN(w8a4_gemm_2l_op));
  m.impl("w4a4_gemm_2l_fo", TORCH_FN(w4a4_gemm_2l_fo_op));
  m.impl("w4a4_gemm_2l_fo_ep", TORCH_FN(w4a4_gemm_2l_fo_ep_op));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "svdquant-hf fused W4A4 kernels";
  m.def("quantize_act", &quantize_act, "x, smooth, proj_down, group_size -> (xq, ascales, lr)");
  m.def("w4a4_gemm", &w4a4_gemm, "xq, ascales, qweight, wscales, lr, proj_up, bias, group_size -> y");
  m.def("set_gemm_tile_rows", &svdq::set_gemm_tile_rows, "force 64/128-row GEMM tiles (0: heuristic)");
  m.def("set_gemm_int4_mma", &svdq::set_gemm_int4_mma,
        "int4 GEMM MMA: 0 native 4-bit where the GPU has it (sm_80/86/87/89; default), 1 4-bit everywhere, 2 int8");
  m.def("gemm_int4_mma_mode", &svdq::gemm_int4_mma_mode, "the int4 GEMM's MMA mode (see set_gemm_int4_mma)");
  m.def("gemm_int4_mma", &svdq::gemm_int4_mma, "whether the int4 GEMM runs the 4-bit MMA for this group size");
  m.def("last_error", &last_error, "message of the last rejected call (calls return None on error)");
  m.attr("max_fused_rank") = svdq::kMaxFusedRank;
  m.def(
      "quantize_act_2l",
      [](const at::Tensor& x, const at::Tensor& smooth, const at::Tensor& pd, int64_t gs) {
        return quantize_act_2l(x, smooth, pd, gs);
      },
      "x, smooth, proj_down, group_size -> (xq, xscale, lr)");
  m.def(
      "quantize_act_2l_cat",
      [](const at::Tensor& a, const at::Tensor& b, const at::Tensor& smooth, const at::Tensor& pd, int64_t gs) {
        return quantize_act_2l(a, smooth, pd, gs, b);
      },
      "quantize_act_2l of cat([a, b], 1), read in place: a, b, smooth, proj_down, group_size -> (xq, xscale, lr)");
  m.def("w4a4_gemm_2l", &w4a4_gemm_2l,
        "xq, xscale, qweight, wscales, wchannel, lr, proj_up, bias, group_size -> y (sm_90a)");
  m.def("w4a4_gemm_2l_fo", &w4a4_gemm_2l_fo,
        "w4a4_gemm_2l with qweight in fragment order (svdquant_hf.ops.layout_2l.fragment_order; sm_90a): the "
        "persistent kernel widens the weights into registers");
  m.def("w4a4_gemm_2l_fo_ep", &w4a4_gemm_2l_fo_ep,
        "w4a4_gemm_2l_fo, then activation (0 none, 1 GELU tanh) in the epilogue; with prefix [M, P]: cat([prefix, y], 1)");
  m.def("rms_norm_rope", &rms_norm_rope, "x [B, S, H, D], weight [D], eps, cos, sin [S0 + S, D] (fp32), front "
        "[B, S0, H, D] or None, front_weight -> RMSNorm per head, then the rotary embedding (FLUX's q / k), "
        "cat([front, x], 1)", py::arg("x"), py::arg("weight"), py::arg("eps"), py::arg("cos"), py::arg("sin"),
        py::arg("front") = py::none(), py::arg("front_weight") = py::none());
  m.def("w8a4_gemm_2l", &w8a4_gemm_2l,
        "xq, xscale, wq8 (int8 q * s_int [N, K]), wchannel, lr, proj_up, bias -> y (sm_90a): the int4_2l GEMM "
        "on weights widened once, so its main loop has no widening");
  m.def("quantize_act_2l_supported", &svdq::quantize_act_2l_supported, "K -> whether the 2l quantize kernel runs");
  m.def("set_quantize_act_2l_persistent", &svdq::set_quantize_act_2l_persistent, py::arg("on"),
        py::arg("max_ctas") = 0,
        "the per-row quantizer: persistent CTAs with the next rows streaming into a shared-memory ring (on, the "
        "default) or one CTA per row (0, the kernel before v2.17; benchmarks); max_ctas > 0 caps the persistent grid");
  m.def("quantize_act_2l_last_ctas", &svdq::quantize_act_2l_last_ctas, "CTAs of the last per-row quantizer launch");
  m.def(
      "set_quantize_act_2l_fused",
      [](int mode, int cluster, int probe, int cap_clusters) {
        TORCH_CHECK(mode >= -1 && mode <= 3, "set_quantize_act_2l_fused: mode -1, 0, 1, 2 or 3, got ", mode);
        svdq::set_quantize_act_2l_fused(mode, cluster, probe, cap_clusters);
      },
      py::arg("mode"), py::arg("cluster") = 0,
        py::arg("probe") = 0, py::arg("cap_clusters") = 0,
        "Hopper: the quantizer with the down projection fused (mode 1, q.7: measured slower, perf-notes v2.16; mode 2, "
        "threads on fixed columns, quantize_act_2l_cat too: perf-notes v2.47-v2.49; mode 3, K <= 3072 in CTA pairs, "
        "v2.50; -1, mode 3 from set_quantize_act_2l_pairs_min_tokens tokens where it applies) or the per-row kernel + "
        "cuBLAS (0, "
        "the default); cluster > 0 "
        "forces that many CTAs per cluster where a shape exists; "
        "probe (benchmarks, bfloat16 rank 32, mode 1): 1 / 2 / 3 the fused kernel without its cluster exchange / "
        "without its down projection / without both (WRONG results), 4 waiting for the exchange by spinning on "
        "test_wait (exact); "
        "cap_clusters > 0: launch at most that many clusters (benchmarks: is there a second wave?)");
  m.def("quantize_act_2l_fused_mode", &svdq::quantize_act_2l_fused_mode, "1: the fused quantizer where it applies");
  m.def("quantize_act_2l_fused_last_grid", &svdq::quantize_act_2l_fused_last_grid,
        "CTAs of the last fused quantizer launch (the clusters that fit at once, times the cluster size)");
  m.def(
      "quantize_act_2l_fused_shape",
      [](int M, int K, int R, int G, int sms) {
        const svdq::Q2lfShape s = svdq::q2lf_shape(M, K, R, G, sms);
        return std::make_tuple(s.C, s.S, (int64_t)s.smem);
      },
      "M, K, R, group_size, num_sms -> (cluster CTAs, x stages, shared bytes) of the fused quantizer (cluster 0: it "
      "does not apply)");
  m.def(
      "quantize_act_2l_fused_applies",
      [](int M, int K, int R, int G) {
        return svdq::quantize_act_2l_fused_supported(M, K, R, G,
                                                     at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
      },
      "M, K, R, group_size -> whether the fused quantizer of the current mode takes such a call on this GPU (mode 2: "
      "also whether its cluster is schedulable here)");
  m.def(
      "set_quantize_act_2l_cols_stamps",
      [](int64_t ptr) { svdq::set_quantize_act_2l_cols_stamps(reinterpret_cast<long long*>(ptr)); },
      py::arg("data_ptr"),
      "benchmarks: the fixed-column fused quantizer's first thread of each group of warps (units, mma, producer) of "
      "each CTA writes clock64 at each of its steps of its first blocks into this int64 CUDA buffer (data_ptr; 0: off; "
      "layout: quantize_act_2l_cols_stamp_layout)");
  m.def(
      "set_quantize_act_2l_cols_tuning",
      [](int stagger_cycles, int stagger_phases, int probe, int mma_sets) {
        TORCH_CHECK(stagger_cycles >= 0 && stagger_phases >= 1 && (probe == 0 || probe == 1) &&
                        (mma_sets == 0 || mma_sets == 4),
                    "set_quantize_act_2l_cols_tuning: stagger_cycles >= 0, stagger_phases >= 1, probe 0 / 1, mma_sets "
                    "0 / 4");
        svdq::set_quantize_act_2l_cols_tuning({stagger_cycles, stagger_phases, probe, mma_sets});
      },
      py::arg("stagger_cycles") = 0, py::arg("stagger_phases") = 1, py::arg("probe") = 0, py::arg("mma_sets") = 0,
      "benchmarks, the fixed-column fused quantizer (perf-notes v2.50): cluster c starts its loads (c % "
      "stagger_phases) x stagger_cycles SM clocks late; probe 1 leaves xq unwritten (WRONG results; timing only); "
      "mma_sets 4: rank <= 32's down projection on four accumulator sets (0: two, the default)");
  m.def(
      "quantize_act_2l_cols_tuning",
      []() {
        const svdq::Q2lcTuning t = svdq::quantize_act_2l_cols_tuning();
        return std::make_tuple(t.stagger_cycles, t.stagger_phases, t.probe, t.mma_sets);
      },
      "(stagger_cycles, stagger_phases, probe, mma_sets) of set_quantize_act_2l_cols_tuning");
  m.def("quantize_act_2l_cols_stamp_layout", &svdq::quantize_act_2l_cols_stamp_layout,
        "blocks * 100 + steps of the stamp buffer: stamps[(cta * blocks + block) * steps + step]");
  m.def(
      "set_quantize_act_2l_pairs_min_tokens",
      [](int m) {
        TORCH_CHECK(m >= 1, "set_quantize_act_2l_pairs_min_tokens: m >= 1, got ", m);
        svdq::set_quantize_act_2l_pairs_min_tokens(m);
      },
      py::arg("m"), "set_quantize_act_2l_fused mode -1: the CTA-pair quantizer (mode 3) from m tokens");
  m.def("quantize_act_2l_pairs_min_tokens", &svdq::quantize_act_2l_pairs_min_tokens,
        "the tokens from which set_quantize_act_2l_fused mode -1 takes the CTA-pair quantizer");
  m.def(
      "set_quantize_act_2l_pairs_stamps",
      [](int64_t ptr) { svdq::set_quantize_act_2l_pairs_stamps(reinterpret_cast<long long*>(ptr)); },
      py::arg("data_ptr"),
      "benchmarks: the CTA-pair quantizer's first thread of each group of warps (units, mma, producer) of each CTA "
      "writes clock64 at each of its steps of its first blocks into this int64 CUDA buffer (data_ptr; 0: off; layout: "
      "quantize_act_2l_pairs_stamp_layout)");
  m.def(
      "set_quantize_act_2l_pairs_mma_warps",
      [](int n) {
        TORCH_CHECK(n >= 0 && n <= 16, "set_quantize_act_2l_pairs_mma_warps: n in 0..16, got ", n);
        svdq::set_quantize_act_2l_pairs_mma_warps(n);
      },
      py::arg("n"), "benchmarks: the CTA-pair quantizer's down projection on at most n warps (0: the rule's 8; the "
      "threads left beside the unit warps cap it too)");
  m.def("set_quantize_act_2l_pairs_pd_tma", &svdq::set_quantize_act_2l_pairs_pd_tma, py::arg("on"),
        "the CTA-pair quantizer's form: True, v3 (proj_down's columns loaded by TMA as they lie and read by "
        "ldmatrix.trans); False, v2 (every thread loads them and stores them transposed; the default)");
  m.def("quantize_act_2l_pairs_pd_tma", &svdq::quantize_act_2l_pairs_pd_tma,
        "whether the CTA-pair quantizer loads proj_down by TMA (v3; set_quantize_act_2l_pairs_pd_tma)");
  m.def("set_quantize_act_2l_pairs_lr_t", &svdq::set_quantize_act_2l_pairs_lr_t, py::arg("on"),
        "the CTA-pair quantizer's down projection at rank 32: True, transposed (lr^T = proj_down^T x^T, one mma a "
        "k-step with no zero half); False, x's 8 rows as the upper half of m16 tiles (two mmas a k-step; the default)");
  m.def("quantize_act_2l_pairs_lr_t", &svdq::quantize_act_2l_pairs_lr_t,
        "whether the CTA-pair quantizer's down projection runs transposed (set_quantize_act_2l_pairs_lr_t)");
  m.def(
      "set_quantize_act_2l_pairs_loads",
      [](bool box3d, int ahead) {
        TORCH_CHECK(ahead >= 0 && ahead <= 8, "set_quantize_act_2l_pairs_loads: ahead in 0..8 blocks, got ", ahead);
        svdq::set_quantize_act_2l_pairs_loads(box3d, ahead);
      },
      py::arg("box3d"), py::arg("ahead"),
      "the CTA-pair quantizer's loads of x: box3d, a block's 8 rows as one 3-D TMA box ([unit][row][128 B]) instead "
      "of a box a 64-value unit; ahead > 0, the first CTA of each pair brings the block `ahead` blocks past the one "
      "it loads into L2 (a TMA prefetch). The same bits either way (default False, 0)");
  m.def(
      "quantize_act_2l_pairs_loads",
      []() { return py::make_tuple(svdq::quantize_act_2l_pairs_box3d(), svdq::quantize_act_2l_pairs_ahead()); },
      "(box3d, ahead): the CTA-pair quantizer's loads of x (set_quantize_act_2l_pairs_loads)");
  m.def(
      "set_quantize_act_2l_pairs_units",
      [](int stores, bool warp_max) {
        TORCH_CHECK(stores >= 0 && stores <= 2, "set_quantize_act_2l_pairs_units: stores is 0, 1 or 2, got ", stores);
        svdq::set_quantize_act_2l_pairs_units(stores, warp_max);
      },
      py::arg("stores"), py::arg("warp_max"),
      "the CTA-pair quantizer's unit threads: stores, how xq leaves (0: staged in shared memory, one bulk copy a row "
      "by thread 0; 1: each thread stores its own 64 bytes; 2: staged, then copied out by all unit threads, "
      "consecutive threads on consecutive 16 bytes); warp_max, a row's maximum by shuffles within each warp, then one "
      "value a warp from shared memory instead of one a unit. The same bits either way (default 0, False)");
  m.def(
      "quantize_act_2l_pairs_units",
      []() {
        return py::make_tuple(svdq::quantize_act_2l_pairs_stores(), svdq::quantize_act_2l_pairs_warp_max());
      },
      "(stores, warp_max): the CTA-pair quantizer's unit threads (set_quantize_act_2l_pairs_units)");
  m.def("quantize_act_2l_pairs_stamp_layout", &svdq::quantize_act_2l_pairs_stamp_layout,
        "blocks * 100 + steps of the stamp buffer: stamps[(cta * blocks + block) * steps + step]");
  m.def(
      "quantize_act_2l_pairs_shape",
      [](int M, int K, int R, int G) {
        const svdq::Q2lpShape s = svdq::q2lp_shape(M, K, R, G);
        return std::make_tuple(s.threads, s.mma_warps, (int64_t)s.smem);
      },
      py::arg("M"), py::arg("K"), py::arg("R"), py::arg("group_size"),
      "M, K, R, group_size -> (threads, the warps taking the down projection's mma, shared bytes) of the fused "
      "quantizer in CTA pairs (mode 3, K <= 3072, rank 16 / 32; threads 0: it does not apply)");
  m.def(
      "quantize_act_2l_cols_shape",
      [](int M, int K, int R, int G, int cluster) {
        const svdq::Q2lcShape s = svdq::q2lc_shape(M, K, R, G, cluster);
        return std::make_tuple(s.C, s.threads, (int64_t)s.smem, s.mma_warps);
      },
      py::arg("M"), py::arg("K"), py::arg("R"), py::arg("group_size"), py::arg("cluster") = 0,
      "M, K, R, group_size, forced cluster size (0: its rule) -> (cluster CTAs, threads, shared bytes, the warps "
      "taking the down projection's mma) "
      "of the fixed-column fused quantizer (mode 2; cluster 0: it does not apply)");
  m.def(
      "set_quantize_act_2l_overlap",
      [](bool on, int64_t max_bytes) {
        g_lr_overlap = on;
        g_overlap_max_bytes = max_bytes;
      },
      pybind11::arg("on"), pybind11::arg("max_bytes") = INT64_MAX,
      "false: the down projection after the quantizer on the same stream (benchmarks); max_bytes: the side stream "
      "only while x (16-bit) is at most this size (default: any size)");
  m.def(
      "set_quantize_act_2l_chunk_bytes", [](int64_t n) { g_chunk_bytes = std::max<int64_t>(n, 0); },
      pybind11::arg("n"),
      "quantize_act_2l past n bytes of x (16-bit): the quantizer and its side-stream down projection in row chunks of "
      "about n bytes, each chunk read by both while in L2 (0: off, the default; measured 2-5 % slower on the H100, perf-notes v2.27)");
  m.def("quantize_act_2l_chunk_bytes", [] { return g_chunk_bytes; }, "set_quantize_act_2l_chunk_bytes's value");
  m.def("set_lowrank_down_beside", &svdq::set_lowrank_down_beside, pybind11::arg("mode"), pybind11::arg("share") = -1.0,
        pybind11::arg("ctas") = 0,
        "quantize_act_2l at many tokens (Hopper): the down projection beside the persistent quantizer on the CTAs it "
        "leaves free, each 64-row block once the quantizer has read it, so x is read from L2 (perf-notes v2.30). -1: "
        "where K >= 8192 and x is larger than L2; 0: never (cuBLAS on the side stream); 1: wherever the shape fits "
        "(rank 16 / 32 / 48 / 64, K and the cat's first width multiples of 128). share >= 0: the quantizer's share of "
        "CTAs left free (default 0.2); ctas > 0: the down projection's CTAs forced (0: share x 2 x SMs)");
  m.def("lowrank_down_beside", &svdq::lowrank_down_beside, "set_lowrank_down_beside's mode");
  m.def("lowrank_down_beside_launches", &svdq::lowrank_down_beside_launches,
        "how many quantize_act_2l calls took the down projection beside the quantizer (tests)");
  m.def(
      "set_smooth_rcp_cache", [](bool on) { g_rcp_cache = on; }, pybind11::arg("on"),
      "quantize_act_2l: 1 / smooth cached per smoothing-factor tensor (default) or computed by a launch per call");
  m.def(
      "gemm_2l_plan",
      [](int M, int N, int K, int sms) {
        const svdq::Gemm2lPlan p = svdq::gemm_2l_plan(M, N, K, sms);
        return std::make_tuple(p.tile_tokens, p.splits);
      },
      "M, N, K, num_sms -> (token tile, K splits) of the 2l GEMM");
  m.def("set_rms_norm_rope_version", &svdq::set_rms_norm_rope_version, py::arg("version"),
        "rms_norm_rope's kernel: 4 (default) a warp per token with 16-byte rows, 3 the previous one (benchmarks)");
  m.def("rms_norm_rope_version", &svdq::rms_norm_rope_version, "see set_rms_norm_rope_version");
  m.def("set_gemv_2l_mode", &svdq::set_gemv_2l_mode, py::arg("m"),
        "the int4_2l GEMM's few-token kernel (dp4a weight stream): -1 where measured faster (default), 0 never, "
        "1-8 for every M <= m");
  m.def("gemv_2l_mode", &svdq::gemv_2l_mode, "see set_gemv_2l_mode");
  m.def("gemv_2l_launches", &svdq::gemv_2l_launches, "how many times the few-token kernel was launched (tests)");
  m.def("set_gemm_2l_splits", &svdq::set_gemm_2l_splits, "force a 1/2/4/8-way K split (0: heuristic)");
  m.def("set_gemm_2l_w8_producer", &svdq::set_gemm_2l_w8_producer,
        "int8-weight GEMM: a producer warp on full/empty barriers per stage (True) or the shared loop (False)");
  m.def("gemm_2l_w8_producer", &svdq::gemm_2l_w8_producer, "whether the int8-weight GEMM runs the producer-warp loop");
  m.def("set_gemm_2l_persistent", &svdq::set_gemm_2l_persistent,
        "the persistent GEMM kernels (int8 weights with rank <= 64, packed group 64 with rank <= 32; unsplit plans): "
        "1 wherever they apply, 0 never, -1 (default) where the plan is unsplit with >= 2 tiles per SM (int8 weights: "
        "and K <= 5120)");
  m.def("gemm_2l_persistent", &svdq::gemm_2l_persistent, "the persistent kernels' mode: 1, 0 or -1 (auto)");
  m.def("set_gemm_2l_rf_by_cost", &svdq::set_gemm_2l_rf_by_cost, pybind11::arg("on"),
        "fragment order: the register-fragment GEMM (unsplit, or K split over a cluster) wherever its cost model beats "
        "the plan's kernel, also at split or under-filled plans (default on; off: only unsplit plans with >= 2 tiles "
        "per SM)");
  m.def("gemm_2l_rf_by_cost", &svdq::gemm_2l_rf_by_cost, "whether set_gemm_2l_rf_by_cost is on");
  m.def("set_gemm_2l_rf_splits", &svdq::set_gemm_2l_rf_splits, pybind11::arg("s"),
        "fragment order: the register-fragment GEMM with K split over a cluster of s CTAs, one tile each: 0 (default) "
        "where its cost model says so (with set_gemm_2l_rf_by_cost), 1 never, 2-8 forced");
  m.def("gemm_2l_rf_splits", &svdq::gemm_2l_rf_splits, "the split register-fragment GEMM's mode (0, 1 or 2-8)");
  m.def("set_lowrank_down_max_tokens", &svdq::set_lowrank_down_max_tokens, pybind11::arg("m"),
        pybind11::arg("wide") = false,
        "quantize_act_2l's down projection by our one kernel (sm_90a) for M <= m tokens (default 256; m < 0 restores "
        "it), cuBLAS above; 0: cuBLAS always; by default at K <= 4096 and rank <= 64 only, wide=True: every K and ranks 96 / 128 too");
  m.def("lowrank_down_max_tokens", &svdq::lowrank_down_max_tokens, "the few-token down projection's token limit");
  m.def("set_lowrank_down_deep", &svdq::set_lowrank_down_deep, pybind11::arg("on"),
        "the few-token down projection with up to 8 stages in flight instead of 4, chained or not (opt-in: -5 % to +10 % "
        "on the chain, perf-notes v2.29)");
  m.def("lowrank_down_deep", &svdq::lowrank_down_deep, "whether set_lowrank_down_deep is on");
  m.def("set_lowrank_down_splits", &svdq::set_lowrank_down_splits, pybind11::arg("s"),
        "the few-token down projection's cluster size along K forced to s (1, 2, 4, 8; 0: its rule)");
  m.def("lowrank_down_splits", &svdq::lowrank_down_splits, "the forced cluster size (0: the rule)");
  m.def("set_quantize_act_2l_lean", &svdq::set_quantize_act_2l_lean, pybind11::arg("on"),
        "the per-row quantizer's lean form (on by default): the row's 16 scale reciprocals looked up by "
        "shuffle, no clamp where it cannot bind; the same bits");
  m.def("quantize_act_2l_lean", &svdq::quantize_act_2l_lean, "whether set_quantize_act_2l_lean is on");
  m.def("set_lr_chain_pipes", &svdq::set_lr_chain_pipes, pybind11::arg("pipes"),
        "the chained down projection (set_lr_chain) with this many groups of four warps per CTA, each streaming its "
        "own slices of the CTA's K range on a ring of its own (g.59, perf-notes v2.39 / v2.40): 2 (the default; taken at "
        "ranks <= 64 and an even slice count) or 1; the same bits");
  m.def("lr_chain_pipes", &svdq::lr_chain_pipes, "set_lr_chain_pipes's setting");
  m.def("lr_chain_pipes_launches", &svdq::lr_chain_pipes_launches,
        "chained down projections launched with two groups of warps (tests)");
  m.def("set_lr_chain", &svdq::set_lr_chain, pybind11::arg("mode"),
        "quantize_act_2l at M <= 256 (Hopper): the down projection after the quantizer on the same stream, beside it by "
        "programmatic launch, and under the main loop of the GEMM that reads its xq and lr (that GEMM waits for lr only "
        "before its epilogue). -1 (default): where the GEMM that read this proj_down's lr at this M last time was a "
        "persistent kernel leaving an SM per 16 tokens free, and K <= 4096; 0: never (the side stream); 1: wherever the "
        "shape allows, on 32 CTAs");
  m.def("lr_chain", &svdq::lr_chain, "set_lr_chain's mode: -1, 0 or 1");
  m.def(
      "lr_chain_forget",
      [] {
        std::lock_guard<std::mutex> lock(g_chain_mu);
        g_chain_learned.clear();
      },
      "forget what set_lr_chain's rule learned from the GEMMs so far (tests)");
  m.def("gemm_2l_late_launches", &svdq::gemm_2l_late_launches,
        "how many GEMM launches took their low-rank tile late (after the chained down projection; tests)");
  m.def("set_pdl", &svdq::set_pdl, pybind11::arg("on"),
        "programmatic dependent launch (sm_90+, opt-in: the FLUX.1 forward measured no faster): the int4_2l GEMM, the few-token weight "
        "stream, the per-row quantizer and the few-token down projection may start under the previous kernel's tail "
        "(their set-up, and the weight stream's first weights, before they wait for its writes); off (default): "
        "plain stream order");
  m.def("pdl", &svdq::pdl, "whether set_pdl is on");
  m.def("set_gemm_2l_rf_wide_lr", &svdq::set_gemm_2l_rf_wide_lr, pybind11::arg("on"),
        "the register-fragment loop for branch ranks 33-64 (a LoRA); on by default, off sends them to the non-persistent kernels");
  m.def("gemm_2l_rf_wide_lr", &svdq::gemm_2l_rf_wide_lr, "whether branch ranks 33-64 take the register-fragment loop");
  m.def("set_gemm_2l_rf_warpgroups", &svdq::set_gemm_2l_rf_warpgroups, pybind11::arg("cw"), pybind11::arg("tile") = 0,
        "weights in fragment order, persistent: 3 consumer warpgroups (192-row tiles, N % 192 == 0) or 2; 0 (default): "
        "the cost model picks (one warpgroup too at M <= 512: set_gemm_2l_rf1_auto); tile 128 or 192 forces the "
        "three-warpgroup loop's token tile. 1 (g.56): one warpgroup on 64-row tiles of `tile` tokens (128, else 256), "
        "branch ranks <= 32, persistent or split by set_gemm_2l_rf_splits; the same bits");
  m.def("gemm_2l_rf1_launches", &svdq::gemm_2l_rf1_launches, "GEMM launches of the one-warpgroup kernels (tests)");
  m.def("set_gemm_2l_rf1_auto", &svdq::set_gemm_2l_rf1_auto, pybind11::arg("on"),
        "one consumer warpgroup's 64-row tiles (g.56) also where the register-fragment cost model puts them 5 % below "
        "every other kernel, at M <= 512 (perf-notes v2.38: the best plan at 256 / 512 x 3072 x 3072; the default "
        "since v2.39); False: only when forced by set_gemm_2l_rf_warpgroups(1, tile); the same bits");
  m.def("gemm_2l_rf1_auto", &svdq::gemm_2l_rf1_auto, "whether set_gemm_2l_rf1_auto is on");
  m.def("set_gemm_2l_rf3_stage", &svdq::set_gemm_2l_rf3_stage, pybind11::arg("at128"), pybind11::arg("at192"),
        "the register-fragment cost model's three-warpgroup stage in cycles at 128 / 192 tokens (0, 0: the model's, "
        "see set_gemm_2l_rf3_model)");
  m.def("gemm_2l_rf3_stage", &svdq::gemm_2l_rf3_stage, "the three-warpgroup stage cycles in use, [at 128, at 192]");
  m.def("set_gemm_2l_rf3_model", &svdq::set_gemm_2l_rf3_model, pybind11::arg("version"),
        "the three-warpgroup choice: 1 (default, v2.25) stages of 1100 / 1250 cycles and three warpgroups only where "
        "they beat the two-warpgroup loop's model; 0 the v2.24 rule (1290 / 1525, against the plan's kernel)");
  m.def("gemm_2l_rf3_model", &svdq::gemm_2l_rf3_model, "the three-warpgroup choice in use (set_gemm_2l_rf3_model)");
  m.def("set_gemm_2l_rf_lead", &svdq::set_gemm_2l_rf_lead, pybind11::arg("on"),
        "the unsplit two-warpgroup register-fragment loop at 224 tokens with leading turns (opt-in, perf-notes "
        "v2.30b): per-warp counts of stages issued instead of named barriers, warpgroup 0 up to NS - 2 stages ahead, so "
        "each runs on alone through the other's tile epilogue; the same bits");
  m.def("gemm_2l_rf_lead", &svdq::gemm_2l_rf_lead, "whether set_gemm_2l_rf_lead is on");
  m.def("gemm_2l_rf_lead_launches", &svdq::gemm_2l_rf_lead_launches, "GEMM launches with leading turns (tests)");
  m.def("set_gemm_2l_rf_pipelined", &svdq::set_gemm_2l_rf_pipelined, pybind11::arg("on"),
        "the register-fragment loop pipelined within each warpgroup (on by default since perf-notes v2.32; False: the "
        "warpgroups take turns by named barriers): each k-step's wgmma its own commit group, the next k-step widened "
        "under the three in flight; wherever that loop runs with a branch of rank <= 32 (two warpgroups at any token "
        "tile, unsplit or split, chained; three warpgroups) and, since perf-notes v2.36, with ranks 33-64 (a LoRA: the "
        "64-wide low-rank tile, unsplit, its 224-token tile with the output in halves); the same bits");
  m.def("gemm_2l_rf_pipelined", &svdq::gemm_2l_rf_pipelined, "whether set_gemm_2l_rf_pipelined is on");
  m.def("set_gemm_2l_rf_pingpong", &svdq::set_gemm_2l_rf_pingpong, pybind11::arg("mode"),
        "the GEMM with its two consumer warpgroups in ping-pong over 128 x 128 tiles (opt-in; measured slower than the "
        "default, perf-notes v2.32): each warpgroup computes whole tiles, so one's epilogue runs under the other's main loop; 0 off, 1 (or "
        "True) every tile GEMM it takes (fragment order, group 64, branch rank 0 / 16 / 32, lr not late), 2 those with at "
        "least two tiles per SM; the same bits");
  m.def("gemm_2l_rf_pingpong", &svdq::gemm_2l_rf_pingpong, "set_gemm_2l_rf_pingpong's mode (0: off)");
  m.def("gemm_2l_rf_pingpong_launches", &svdq::gemm_2l_rf_pingpong_launches, "GEMM launches of the ping-pong kernel (tests)");
  m.def("gemm_2l_rf_pipelined_launches", &svdq::gemm_2l_rf_pipelined_launches,
        "GEMM launches of the pipelined register-fragment loop (tests)");
  m.def("set_gemm_2l_lr_by_producer", &svdq::set_gemm_2l_lr_by_producer, pybind11::arg("on"),
        "the register-fragment kernels' low-rank tiles and token scales loaded by the producer warpgroup's idle warps "
        "rather than by the last consumer warpgroup (opt-in until measured, perf-notes v2.33); the same bits");
  m.def("gemm_2l_lr_by_producer", &svdq::gemm_2l_lr_by_producer, "whether set_gemm_2l_lr_by_producer is on");
  m.def("set_gemm_2l_act_in_loop", &svdq::set_gemm_2l_act_in_loop, pybind11::arg("on"),
        "the tile kernels' output staging as before perf-notes v2.34 (GELU tested per octet; A/B only); the same bits");
  m.def("gemm_2l_act_in_loop", &svdq::gemm_2l_act_in_loop, "whether set_gemm_2l_act_in_loop is on");
  m.def("set_gemm_2l_lr_unrolled", &svdq::set_gemm_2l_lr_unrolled, pybind11::arg("on"),
        "the pipelined persistent kernels' last consumer warpgroup issues the next tile's low-rank copies unrolled (on "
        "by default since perf-notes v2.35; off: the loops over runtime counts of before, for A/B, in bfloat16 "
        "224-token two-warpgroup and 192-token three-warpgroup tiles, unsplit, and the stamped kernel); the same bits");
  m.def("gemm_2l_lr_unrolled", &svdq::gemm_2l_lr_unrolled, "whether set_gemm_2l_lr_unrolled is on");
  m.def("gemm_2l_lr_unrolled_launches", &svdq::gemm_2l_lr_unrolled_launches,
        "GEMM launches whose low-rank copies ran unrolled (tests)");
  m.def("set_gemm_2l_release_step", &svdq::set_gemm_2l_release_step, pybind11::arg("j"),
        "the pipelined persistent kernels give each stage back to the producer after the next stage's k-step j, waiting "
        "there until j + 1 wgmma groups remain in flight: 0 (the default since perf-notes v2.35), or 2 as before / 1 "
        "(A/B: bfloat16 224-token two-warpgroup and 192-token three-warpgroup tiles, unsplit; 2 also the one-warpgroup "
        "tiles, unsplit, v2.41); the same bits");
  m.def("gemm_2l_release_step", &svdq::gemm_2l_release_step, "set_gemm_2l_release_step's k-step");
  m.def("gemm_2l_release_step_launches", &svdq::gemm_2l_release_step_launches,
        "GEMM launches of the later-release instances (release step 1 or 2; tests)");
  m.def("set_gemm_2l_out_halves", &svdq::set_gemm_2l_out_halves, pybind11::arg("on"),
        "the three-warpgroup 192-token persistent kernel stages and stores its output in two token halves through half "
        "the memory, which gives its stage ring a fourth stage (unsplit; the default since perf-notes v2.36, measured "
        "3-7 % faster in v2.35; off: the three-stage kernel, for A/B); the same bits");
  m.def("gemm_2l_out_halves", &svdq::gemm_2l_out_halves, "whether set_gemm_2l_out_halves is on");
  m.def("gemm_2l_out_halves_launches", &svdq::gemm_2l_out_halves_launches,
        "GEMM launches of the output-in-halves instances (either tile) (tests)");
  m.def("set_gemm_2l_out_pieces", &svdq::set_gemm_2l_out_pieces, pybind11::arg("tile"), pybind11::arg("pieces"),
        "the persistent register-fragment kernels' output staged and stored in token pieces through 1 / pieces of the "
        "memory, the rest given to the stage ring: tile 256 (two warpgroups, unsplit; g.51) or 192 (three warpgroups; "
        "g.50); 2 (the default since perf-notes v2.36: halves, a fourth stage) or 1 (the whole output, three stages, "
        "for A/B); the same bits. Returns False (nothing changed) for other tiles or counts");
  m.def("gemm_2l_out_pieces", &svdq::gemm_2l_out_pieces, pybind11::arg("tile"),
        "set_gemm_2l_out_pieces' count for the 256- or 192-token tile");
  m.def("set_gemm_2l_split_halves", &svdq::set_gemm_2l_split_halves, pybind11::arg("on"),
        "two warpgroups' 256-token register-fragment kernel with K split over a cluster (a few hundred tokens) staging "
        "its output in halves, each CTA storing only its own octets, which gives it a fourth stage (g.54, the default "
        "since perf-notes v2.37: 6-13 % less GEMM time; False: three stages as before, for A/B); the same bits");
  m.def("gemm_2l_split_halves", &svdq::gemm_2l_split_halves, "whether set_gemm_2l_split_halves is on");
  m.def("gemm_2l_split_halves_launches", &svdq::gemm_2l_split_halves_launches,
        "GEMM launches of the split kernel with its output in halves (tests)");
  m.def("set_gemm_2l_l2_prefetch", &svdq::set_gemm_2l_l2_prefetch, pybind11::arg("on"),
        "the register-fragment kernels' producer asking L2 for the next tile's first stages halfway through each tile "
        "(opt-in until measured, perf-notes v2.33); the same bits");
  m.def("gemm_2l_l2_prefetch", &svdq::gemm_2l_l2_prefetch, "whether set_gemm_2l_l2_prefetch is on");
  m.def("gemm_2l_l2_prefetch_launches", &svdq::gemm_2l_l2_prefetch_launches,
        "GEMM launches whose producer prefetched the next tiles' first stages into L2 (tests)");
  m.def("gemm_2l_lr_by_producer_launches", &svdq::gemm_2l_lr_by_producer_launches,
        "GEMM launches with the low-rank tiles loaded by the producer's warps (tests)");
  m.def(
      "set_gemm_2l_tile_life",
      [](int64_t ptr, bool no_store, bool substeps, int loop_probe) {
        svdq::set_gemm_2l_tile_life(reinterpret_cast<long long*>(ptr), no_store, substeps, loop_probe);
      },
      "benchmarks: the persistent register-fragment GEMM (bfloat16; two warpgroups on 224-token tiles, or three) stamps "
      "clock64 at each tile's steps into the int64 buffer at this address, [4 CTAs][warpgroups][8 tiles][8 steps] "
      "(0: off); the pipelined loop, or with set_gemm_2l_rf_pipelined(False) the turns (two warpgroups only); no_store "
      "(a timing probe, wrong results): the pipelined loop's stamped kernel does not write its output; substeps: the "
      "buffer is twice that, its second half the epilogue's sub-steps (the stamped kernels of the pipelined loop); "
      "loop_probe (timing probes, wrong results; the one-warpgroup kernel, persistent): 1 its loop without widening "
      "(the loaded words as fragments), 2 without its wgmmas, 3 without its activation tiles' loads, 4 without both; "
      "5 (exact) each stage given back at the next stage's third k-step, 6 its wgmmas' A operand from shared memory "
      "(the stage's first 64 activation rows) instead of the widened registers, the widening kept",
      pybind11::arg("ptr"), pybind11::arg("no_store") = false, pybind11::arg("substeps") = false,
      pybind11::arg("loop_probe") = 0);
  m.def("set_gemm_2l_probe", &svdq::set_gemm_2l_probe, pybind11::arg("probe"),
        "timing probes of the persistent register-fragment GEMM (bfloat16, 224-token tiles; wrong results): 1 without "
        "the low-rank mma, 2 without the output's TMA store, 3 without the epilogue after the K loop, 4 the low-rank branch "
        "by mma.sync, 5 CTA barriers around the epilogue (4, 5: the epilogue before v2.18; exact), 6 the widening before "
        "v2.22, 7 no widening, 8 the loop pipelined within each warpgroup (set_gemm_2l_rf_pipelined) with warpgroup 1 "
        "idle in it (one warpgroup's pace alone); 0 off");
  m.def("gemm_2l_rf_warpgroups", &svdq::gemm_2l_rf_warpgroups, "the register-fragment loop's warpgroups: 0 (auto), 1, 2, 3");
  m.def("set_gemm_2l_tma_store", &svdq::set_gemm_2l_tma_store,
        "int4_2l GEMMs: write the output tile by TMA store from shared memory (True) or per-thread stores (False)");
  m.def("gemm_2l_tma_store", &svdq::gemm_2l_tma_store, "whether the int4_2l GEMMs store their output by TMA");
  m.def("set_gemm_2l_tile_tokens", &svdq::set_gemm_2l_tile_tokens, "force 64/128/224/256-token tiles (0: heuristic)");
  m.def("set_gemm_2l_plan_tiles", &svdq::set_gemm_2l_plan_tiles, "the token tiles the plan may pick ([]: all)");
  m.def(
      "set_gemm_2l_trace", [](int64_t ptr) { svdq::set_gemm_2l_trace(reinterpret_cast<long long*>(ptr)); },
      "benchmarks: record per-stage timestamps into the int64 buffer at this address (0: off)");
  m.attr("gemm_2l_tiles") = std::vector<int>{64, 128, 224, 256};
#ifdef SVDQ_BUILT_SM90A
  m.attr("sm90a_built") = true;
#else
  m.attr("sm90a_built") = false;
#endif
  m.attr("max_rank_2l") = svdq::kMaxRank2l;
  m.def("register_fallbacks", &register_fallbacks,
        "the Python CUDA paths (quantize_act_2l, w4a4_gemm_2l, w8a4_gemm_2l, w4a4_gemm_2l_fo, w4a4_gemm_2l_fo_ep) for "
        "inputs the C++ op kernels do not take");
}
