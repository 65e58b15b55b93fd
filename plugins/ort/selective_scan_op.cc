// Attributes, input checks and shape inference of mamba.SelectiveScan (selective_scan_op.h).
#include "selective_scan_op.h"

namespace mamba_ort {

SelectiveScan::Attributes SelectiveScan::read_attributes(const OrtKernelInfo* info) {
  Attributes a{PackedInputs({"u", "delta", "A", "B", "C"}, {"D", "z", "delta_bias", "initial_state"})};
  a.delta_softplus = read_flag(info, "delta_softplus");
  a.inputs.read(info);
  check_output_count(info, 2, "y, final_state");
  return a;
}

mamba_selective_scan_params SelectiveScan::bind_inputs(Ort::KernelContext& context, const Attributes& a) {
  const std::vector<Input> in = a.inputs.bind(context);
  const Input &u = in[0], &delta = in[1], &A = in[2], &B = in[3], &C = in[4];
  const Input &D = in[5], &z = in[6], &delta_bias = in[7], &initial_state = in[8];

  u.expect_rank("[batch, dim, L]", 3);
  A.expect_rank("[dim, N]", 2);
  B.expect_rank("[batch, G, N, L]", 4);
  const int64_t batch = u.shape[0], dim = u.shape[1], L = u.shape[2], N = A.shape[1], G = B.shape[1];
  expect_multiple_of_groups("dim", dim, "u", G);
  const mamba_dtype dtype = u.activation_dtype();
  const ONNXTensorElementDataType T = u.type;
  constexpr auto f32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  const char* like_u = " (like u)";
  delta.expect("[batch, dim, L]", {batch, dim, L}, T, like_u);
  A.expect("[dim, N]", {dim, N}, f32, "");
  B.expect("[batch, G, N, L]", {batch, G, N, L}, T, like_u);
  C.expect("[batch, G, N, L]", {batch, G, N, L}, T, like_u);
  D.expect("[dim]", {dim}, f32, "");
  z.expect("[batch, dim, L]", {batch, dim, L}, T, like_u);
  delta_bias.expect("[dim]", {dim}, f32, "");
  initial_state.expect("[batch, dim, N]", {batch, dim, N}, f32, "");

  mamba_selective_scan_params p{};
  p.batch = batch;
  p.dim = dim;
  p.seqlen = L;
  p.dstate = N;
  p.groups = G;
  p.dtype = dtype;
  p.u = u.data();
  p.delta = delta.data();
  p.A = A.floats();
  p.B = B.data();
  p.C = C.data();
  p.D = D.floats();
  p.z = z.data();
  p.delta_bias = delta_bias.floats();
  p.initial_state = initial_state.floats();
  p.delta_softplus = static_cast<int>(a.delta_softplus);
  p.y = context.GetOutput(0, {batch, dim, L}).GetTensorMutableRawData();
  p.final_state = static_cast<float*>(context.GetOutput(1, {batch, dim, N}).GetTensorMutableRawData());
  if (const char* problem = mamba_selective_scan_check(&p)) throw ContractViolation(problem);
  return p;
}

OrtStatusPtr ORT_API_CALL SelectiveScan::infer_output_shapes(const OrtCustomOp* /*op*/,
                                                             OrtShapeInferContext* context) noexcept {
  const ShapeInference shapes(context);
  ShapeInference::Dims u, A;
  if (shapes.input_count() < kRequiredInputs || !shapes.read(0, 3, u) || !shapes.read(2, 2, A)) return nullptr;
  shapes.write(0, u);
  shapes.write(1, {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, {u.values[0], u.values[1], A.values[1]},
                   {u.symbols[0], u.symbols[1], A.symbols[1]}});
  return nullptr;
}

}  // namespace mamba_ort
