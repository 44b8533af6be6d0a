// Thin torch binding of the svdquant kernels: checks, allocation, stream; the kernels live in *.cu.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <string>
#include <tuple>

#include "launch.h"

namespace {

svdq::DType dtype_of(const at::Tensor& t, const char* name) {
  if (t.scalar_type() == at::kBFloat16) return svdq::DType::kBF16;
  if (t.scalar_type() == at::kHalf) return svdq::DType::kFP16;
  TORCH_CHECK(false, "svdquant kernels: ", name, " must be bfloat16 or float16, got ", t.scalar_type());
}

// Contiguous and 16-byte aligned (the kernels use 16-byte vector loads).
at::Tensor prep(const at::Tensor& t, const at::Tensor& like, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.device() == like.device(), "svdquant kernels: ", name, " is on ", t.device(), ", expected ",
              like.device());
  TORCH_CHECK(t.scalar_type() == dtype, "svdquant kernels: ", name, " has dtype ", t.scalar_type(), ", expected ",
              dtype);
  at::Tensor c = t.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone();
  return c;
}

void check(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "svdquant kernels: ", what, " failed: ", cudaGetErrorString(e));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_act(const at::Tensor& x_in, const at::Tensor& smooth_in,
                                                            const at::Tensor& pd_in, int64_t group_size) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() == 2, "svdquant quantize_act: x must be a 2-D CUDA tensor");
  const auto dt = x_in.scalar_type();
  const svdq::DType kd = dtype_of(x_in, "x");
  const int64_t M = x_in.size(0), K = x_in.size(1);
  TORCH_CHECK(group_size == 32 || group_size == 64 || group_size == 128,
              "svdquant quantize_act: group_size must be 32, 64 or 128, got ", group_size);
  TORCH_CHECK(K % group_size == 0, "svdquant quantize_act: K=", K, " is not a multiple of group_size=", group_size);
  TORCH_CHECK(smooth_in.dim() == 1 && smooth_in.size(0) == K, "svdquant quantize_act: smooth must be [", K, "]");
  TORCH_CHECK(pd_in.dim() == 2 && pd_in.size(0) == K, "svdquant quantize_act: proj_down must be [", K, ", R]");
  c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor x = prep(x_in, x_in, dt, "x");
  at::Tensor smooth = prep(smooth_in, x_in, dt, "smooth");
  at::Tensor pd = prep(pd_in, x_in, dt, "proj_down");
  const int64_t R = pd.size(1);
  auto xq = at::empty({M, K}, x.options().dtype(at::kChar));
  auto ascales = at::empty({M, K / group_size}, x.options());
  auto lr = at::empty({M, R}, x.options());
  const bool fused = R <= svdq::kMaxFusedRank;
  svdq::QuantizeActArgs a{kd,
                          x.data_ptr(),
                          smooth.data_ptr(),
                          pd.data_ptr(),
                          xq.data_ptr<int8_t>(),
                          ascales.data_ptr(),
                          lr.data_ptr(),
                          (int)M,
                          (int)K,
                          fused ? (int)R : 0,
                          (int)group_size};
  check(svdq::launch_quantize_act(a, c10::cuda::getCurrentCUDAStream().stream()), "quantize_act launch");
  if (!fused && R > 0) lr.copy_(at::matmul(x.to(at::kFloat), pd.to(at::kFloat)));
  return {xq, ascales, lr};
}

at::Tensor w4a4_gemm(const at::Tensor& xq_in, const at::Tensor& asc_in, const at::Tensor& qw_in,
                     const at::Tensor& wsc_in, const at::Tensor& lr_in, const at::Tensor& pu_in,
                     const c10::optional<at::Tensor>& bias_in, int64_t group_size) {
  TORCH_CHECK(xq_in.is_cuda() && xq_in.dim() == 2 && xq_in.scalar_type() == at::kChar,
              "svdquant w4a4_gemm: xq must be a 2-D int8 CUDA tensor");
  const auto dt = lr_in.scalar_type();
  const svdq::DType kd = dtype_of(lr_in, "lr_act");
  const int64_t M = xq_in.size(0), K = xq_in.size(1), N = qw_in.size(0), R = lr_in.size(1);
  TORCH_CHECK(group_size == 32 || group_size == 64 || group_size == 128,
              "svdquant w4a4_gemm: group_size must be 32, 64 or 128, got ", group_size);
  TORCH_CHECK(K % group_size == 0, "svdquant w4a4_gemm: K=", K, " is not a multiple of group_size=", group_size);
  TORCH_CHECK(N % 8 == 0, "svdquant w4a4_gemm: N=", N, " must be a multiple of 8");
  TORCH_CHECK(qw_in.dim() == 2 && qw_in.size(1) * 2 == K && qw_in.scalar_type() == at::kChar,
              "svdquant w4a4_gemm: qweight must be int8 [N, K/2] = [", N, ", ", K / 2, "]");
  TORCH_CHECK(asc_in.dim() == 2 && asc_in.size(0) == M && asc_in.size(1) == K / group_size,
              "svdquant w4a4_gemm: ascales must be [", M, ", ", K / group_size, "]");
  TORCH_CHECK(wsc_in.dim() == 2 && wsc_in.size(0) == K / group_size && wsc_in.size(1) == N,
              "svdquant w4a4_gemm: wscales must be [", K / group_size, ", ", N, "]");
  TORCH_CHECK(lr_in.dim() == 2 && lr_in.size(0) == M, "svdquant w4a4_gemm: lr_act must be [", M, ", R]");
  TORCH_CHECK(pu_in.dim() == 2 && pu_in.size(0) == N && pu_in.size(1) == R,
              "svdquant w4a4_gemm: proj_up must be [", N, ", ", R, "]");
  c10::cuda::CUDAGuard guard(xq_in.device());
  at::Tensor xq = prep(xq_in, xq_in, at::kChar, "xq");
  at::Tensor qw = prep(qw_in, xq_in, at::kChar, "qweight");
  at::Tensor asc = prep(asc_in, xq_in, dt, "ascales");
  at::Tensor wsc = prep(wsc_in, xq_in, dt, "wscales");
  at::Tensor lr = prep(lr_in, xq_in, dt, "lr_act");
  at::Tensor pu = prep(pu_in, xq_in, dt, "proj_up");
  at::Tensor bias;
  if (bias_in.has_value()) {
    TORCH_CHECK(bias_in->dim() == 1 && bias_in->size(0) == N, "svdquant w4a4_gemm: bias must be [", N, "]");
    bias = prep(*bias_in, xq_in, dt, "bias");
  }
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
  check(svdq::launch_w4a4_gemm(a, c10::cuda::getCurrentCUDAStream().stream()), "w4a4_gemm launch");
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "svdquant-hf fused W4A4 kernels";
  m.def("quantize_act", &quantize_act, "x, smooth, proj_down, group_size -> (xq, ascales, lr)");
  m.def("w4a4_gemm", &w4a4_gemm, "xq, ascales, qweight, wscales, lr, proj_up, bias, group_size -> y");
  m.attr("max_fused_rank") = svdq::kMaxFusedRank;
}
