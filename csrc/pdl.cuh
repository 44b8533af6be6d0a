// Programmatic dependent launch (PDL, sm_90+): a kernel launched with it may start while the kernel before it on the
// stream is still running, once every CTA of that kernel has signalled (pdl_trigger) or exited. The later kernel must
// call pdl_wait before it reads anything the earlier one writes, and before it writes anything at all (its output may
// lie in memory the caching allocator freed after the earlier kernel's launch); work on the layer's own constants
// (weights, scales, barriers, descriptors) may come first. Both instructions are no-ops where the launch did not ask for
// PDL, and are compiled out before sm_90. set_pdl (launch.h) switches the launches; pdl_launch_attr fills them in.
#pragma once
#include <cuda_runtime.h>

#include <utility>

#include "launch.h"

namespace svdq {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::);  // a scheduling hint: no memory ordering
#endif
}

// Appends the PDL launch attribute at attrs[n] where set_pdl is on (or `force`: the chained down projection and the
// GEMM after it, set_lr_chain) and the current device is sm_90+; returns the new attribute count.
inline unsigned pdl_launch_attr(cudaLaunchAttribute* attrs, unsigned n, bool force = false) {
  if (!(force || pdl()) || !pdl_device()) return n;
  attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attrs[n].val.programmaticStreamSerializationAllowed = 1;
  return n + 1;
}

// plain<<<grid, block, smem, stream>>>(args...) where set_pdl is off or the device lacks PDL (the launch as before);
// otherwise with_pdl (the same kernel, or its PDL form) launched with the attribute.
template <typename... P, typename... A>
cudaError_t launch_plain_or_pdl(void (*plain)(P...), void (*with_pdl)(P...), dim3 grid, dim3 block, size_t smem,
                                cudaStream_t stream, A&&... args) {
  cudaLaunchAttribute attr[1];
  cudaLaunchConfig_t cfg = {};
  cfg.numAttrs = pdl_launch_attr(attr, 0);
  if (cfg.numAttrs == 0) {
    plain<<<grid, block, smem, stream>>>(std::forward<A>(args)...);
    return cudaGetLastError();
  }
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  return cudaLaunchKernelEx(&cfg, with_pdl, std::forward<A>(args)...);
}

}  // namespace svdq
