// The two driver functions that encode TMA descriptors, for CUTLASS. The Hopper kernels (sm90_*.cu) encode two
// or three descriptors on the host at every launch; CUTLASS's default wrapper finds each function by looking
// its name up in the driver (cudaGetDriverEntryPoint[ByVersion]) on every call, a host cost per launch that
// others have measured (NVIDIA/cutlass issue 3003; TransformerEngine caches these pointers for the same
// reason). The build defines CUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL (build_config.CUTLASS_MACROS), so CUTLASS
// calls the functions by name; they are defined here, each finding the driver's entry point once. The
// extension does not link the driver library (it loads on machines without one), hence no direct symbol.
// Framework-free: the CUDA runtime only.
#if defined(FASTINFER_WITH_CUTLASS)
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

namespace {

// The driver's entry point of `name` as of CUDA 12.0 (the version CUTLASS asks for), or null.
void* driver_entry(const char* name) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found;
#if CUDART_VERSION >= 12050
  const cudaError_t e = cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &found);
#else
  const cudaError_t e = cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault, &found);
#endif
  if (e != cudaSuccess || found != cudaDriverEntryPointSuccess) {
    cudaGetLastError();  // clear it: the caller reports CUDA_ERROR_UNKNOWN, as CUTLASS's own wrapper does
    return nullptr;
  }
  return fn;
}

}  // namespace

extern "C" CUresult CUDAAPI cuTensorMapEncodeTiled(CUtensorMap* tensorMap, CUtensorMapDataType tensorDataType,
                                                   cuuint32_t tensorRank, void* globalAddress,
                                                   const cuuint64_t* globalDim, const cuuint64_t* globalStrides,
                                                   const cuuint32_t* boxDim, const cuuint32_t* elementStrides,
                                                   CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
                                                   CUtensorMapL2promotion l2Promotion,
                                                   CUtensorMapFloatOOBfill oobFill) {
  static const auto fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(driver_entry("cuTensorMapEncodeTiled"));
  if (fn == nullptr) return CUDA_ERROR_UNKNOWN;
  return fn(tensorMap, tensorDataType, tensorRank, globalAddress, globalDim, globalStrides, boxDim, elementStrides,
            interleave, swizzle, l2Promotion, oobFill);
}

extern "C" CUresult CUDAAPI cuTensorMapEncodeIm2col(CUtensorMap* tensorMap, CUtensorMapDataType tensorDataType,
                                                    cuuint32_t tensorRank, void* globalAddress,
                                                    const cuuint64_t* globalDim, const cuuint64_t* globalStrides,
                                                    const int* pixelBoxLowerCorner, const int* pixelBoxUpperCorner,
                                                    cuuint32_t channelsPerPixel, cuuint32_t pixelsPerColumn,
                                                    const cuuint32_t* elementStrides, CUtensorMapInterleave interleave,
                                                    CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2Promotion,
                                                    CUtensorMapFloatOOBfill oobFill) {
  static const auto fn =
      reinterpret_cast<PFN_cuTensorMapEncodeIm2col_v12000>(driver_entry("cuTensorMapEncodeIm2col"));
  if (fn == nullptr) return CUDA_ERROR_UNKNOWN;
  return fn(tensorMap, tensorDataType, tensorRank, globalAddress, globalDim, globalStrides, pixelBoxLowerCorner,
            pixelBoxUpperCorner, channelsPerPixel, pixelsPerColumn, elementStrides, interleave, swizzle, l2Promotion,
            oobFill);
}
#endif
