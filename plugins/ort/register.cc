// Entry point ONNX Runtime calls when the library is registered (register_custom_ops_library
// in Python, RegisterCustomOpsLibrary in C): adds the "mamba" domain to the session options.
#include <string>

#include "cpu_provider.h"
#include "selective_scan_op.h"
#include "ssd_scan_op.h"
#ifdef MAMBA_ORT_WITH_CUDA
#include "cuda_provider.h"
#endif

namespace {

constexpr ONNXTensorElementDataType kActivationTypes[] = {
    ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16};

// CustomOp<Op, Provider> for every activation type, added to `domain`.
template <typename Op, typename Provider>
void add_op(Ort::CustomOpDomain& domain) {
  using Registered = mamba_ort::CustomOp<Op, Provider>;
  static const Registered ops[] = {Registered(kActivationTypes[0]), Registered(kActivationTypes[1]),
                                   Registered(kActivationTypes[2])};
  for (const Registered& op : ops) domain.Add(&op);
}

// The ops and their domain live as long as the library: sessions created from these
// options keep pointers to them, so they are never released. A session without the CUDA
// execution provider never creates a CUDA kernel, so the library runs where no GPU is.
OrtCustomOpDomain* mamba_domain() {
  static OrtCustomOpDomain* domain = [] {
    using namespace mamba_ort;
    Ort::CustomOpDomain created("mamba");
    add_op<SelectiveScan, CpuProvider>(created);
    add_op<SSDScan, CpuProvider>(created);
#ifdef MAMBA_ORT_WITH_CUDA
    add_op<SelectiveScan, CudaProvider>(created);
    add_op<SSDScan, CudaProvider>(created);
#endif
    return created.release();
  }();
  return domain;
}

}  // namespace

// The execution providers this build has kernels for, comma-separated (read by
// mamba_export.runtime.ort with ctypes, to tell a CPU-only build from a CUDA one).
extern "C" __attribute__((visibility("default"))) const char* mamba_ort_execution_providers() {
#ifdef MAMBA_ORT_WITH_CUDA
  return "CPUExecutionProvider,CUDAExecutionProvider";
#else
  return "CPUExecutionProvider";
#endif
}

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(
    OrtSessionOptions* options, const OrtApiBase* api_base) {
  // The C API of the headers this library was built with (ORT_API_VERSION); any newer
  // onnxruntime serves it, an older one answers nullptr.
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (!api) {
    const std::string message = "mamba_export's custom-op library needs onnxruntime >= 1." +
                                std::to_string(ORT_API_VERSION) + " (C API version " +
                                std::to_string(ORT_API_VERSION) + "); this onnxruntime is " +
                                api_base->GetVersionString();
    return api_base->GetApi(1)->CreateStatus(ORT_FAIL, message.c_str());
  }
  Ort::InitApi(api);
  return mamba_ort::status_of("mamba", [&] { Ort::ThrowOnError(api->AddCustomOpDomain(options, mamba_domain())); });
}
