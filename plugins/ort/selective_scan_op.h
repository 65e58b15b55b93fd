// mamba.SelectiveScan (docs/ops.md) as an op of custom_op.h: its signature, attributes,
// input checks and shape inference, shared by every execution provider.
#ifndef MAMBA_ORT_SELECTIVE_SCAN_OP_H
#define MAMBA_ORT_SELECTIVE_SCAN_OP_H

#include "custom_op.h"

namespace mamba_ort {

struct SelectiveScan {
  static constexpr const char* kName = "SelectiveScan";
  static constexpr const char* kQualifiedName = "mamba.SelectiveScan";
  static constexpr size_t kRequiredInputs = 5;  // u, delta, A, B, C

  struct Attributes {
    PackedInputs inputs;  // D, z, delta_bias, initial_state
    int64_t delta_softplus = 0;
  };
  static Attributes read_attributes(const OrtKernelInfo* info);

  using Params = mamba_selective_scan_params;
  static Params bind_inputs(Ort::KernelContext& context, const Attributes& attributes);

  // y has u's shape, final_state is [batch, dim, N].
  static OrtStatusPtr ORT_API_CALL infer_output_shapes(const OrtCustomOp* op, OrtShapeInferContext* context) noexcept;
};

}  // namespace mamba_ort

#endif  // MAMBA_ORT_SELECTIVE_SCAN_OP_H
