// mamba.SSDScan (docs/ops.md) as an op of custom_op.h: its signature, attributes, input
// checks and shape inference, shared by every execution provider.
#ifndef MAMBA_ORT_SSD_SCAN_OP_H
#define MAMBA_ORT_SSD_SCAN_OP_H

#include <limits>

#include "custom_op.h"

namespace mamba_ort {

struct SSDScan {
  static constexpr const char* kName = "SSDScan";
  static constexpr const char* kQualifiedName = "mamba.SSDScan";
  static constexpr size_t kRequiredInputs = 5;  // x, dt, A, B, C

  struct Attributes {
    PackedInputs inputs;  // D, z, dt_bias, initial_state
    int64_t dt_softplus = 0;
    float dt_min = 0.0f, dt_max = std::numeric_limits<float>::infinity();
  };
  static Attributes read_attributes(const OrtKernelInfo* info);

  using Params = mamba_ssd_scan_params;
  static Params bind_inputs(Ort::KernelContext& context, const Attributes& attributes);

  // y has x's shape, final_state is [batch, H, P, N].
  static OrtStatusPtr ORT_API_CALL infer_output_shapes(const OrtCustomOp* op, OrtShapeInferContext* context) noexcept;
};

}  // namespace mamba_ort

#endif  // MAMBA_ORT_SSD_SCAN_OP_H
