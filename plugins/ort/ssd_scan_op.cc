// Attributes, input checks and shape inference of mamba.SSDScan (ssd_scan_op.h).
#include "ssd_scan_op.h"

#include <cmath>
#include <sstream>

namespace mamba_ort {

SSDScan::Attributes SSDScan::read_attributes(const OrtKernelInfo* info) {
  Attributes a{PackedInputs({"x", "dt", "A", "B", "C"}, {"D", "z", "dt_bias", "initial_state"})};
  a.dt_softplus = read_flag(info, "dt_softplus");
  a.dt_min = read_float(info, "dt_min", a.dt_min);
  a.dt_max = read_float(info, "dt_max", a.dt_max);
  if (std::isnan(a.dt_min)) throw ContractViolation("attribute dt_min must not be NaN");
  if (std::isnan(a.dt_max)) throw ContractViolation("attribute dt_max must not be NaN");
  if (a.dt_min > a.dt_max) {  // the clamp of docs/ops.md would give dt_max everywhere
    std::ostringstream s;
    s << "attribute dt_min (" << a.dt_min << ") must be <= dt_max (" << a.dt_max << ")";
    throw ContractViolation(s.str());
  }
  a.inputs.read(info);
  check_output_count(info, 2, "y, final_state");
  return a;
}

mamba_ssd_scan_params SSDScan::bind_inputs(Ort::KernelContext& context, const Attributes& a) {
  const std::vector<Input> in = a.inputs.bind(context);
  const Input &x = in[0], &dt = in[1], &A = in[2], &B = in[3], &C = in[4];
  const Input &D = in[5], &z = in[6], &dt_bias = in[7], &initial_state = in[8];

  x.expect_rank("[batch, L, H, P]", 4);
  B.expect_rank("[batch, L, G, N]", 4);
  const int64_t batch = x.shape[0], L = x.shape[1], H = x.shape[2], P = x.shape[3], G = B.shape[2], N = B.shape[3];
  expect_multiple_of_groups("H", H, "x", G);
  const mamba_dtype dtype = x.activation_dtype();
  const ONNXTensorElementDataType T = x.type;
  constexpr auto f32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  const char* like_x = " (like x)";
  dt.expect("[batch, L, H]", {batch, L, H}, T, like_x);
  A.expect("[H]", {H}, f32, "");
  B.expect("[batch, L, G, N]", {batch, L, G, N}, T, like_x);
  C.expect("[batch, L, G, N]", {batch, L, G, N}, T, like_x);
  D.expect("[H]", {H}, f32, "");
  z.expect("[batch, L, H, P]", {batch, L, H, P}, T, like_x);
  dt_bias.expect("[H]", {H}, f32, "");
  initial_state.expect("[batch, H, P, N]", {batch, H, P, N}, f32, "");

  mamba_ssd_scan_params p{};
  p.batch = batch;
  p.seqlen = L;
  p.nheads = H;
  p.headdim = P;
  p.dstate = N;
  p.groups = G;
  p.dtype = dtype;
  p.x = x.data();
  p.dt = dt.data();
  p.A = A.floats();
  p.B = B.data();
  p.C = C.data();
  p.D = D.floats();
  p.z = z.data();
  p.dt_bias = dt_bias.floats();
  p.initial_state = initial_state.floats();
  p.dt_softplus = static_cast<int>(a.dt_softplus);
  p.dt_min = a.dt_min;
  p.dt_max = a.dt_max;
  p.y = context.GetOutput(0, {batch, L, H, P}).GetTensorMutableRawData();
  p.final_state = static_cast<float*>(context.GetOutput(1, {batch, H, P, N}).GetTensorMutableRawData());
  if (const char* problem = mamba_ssd_scan_check(&p)) throw ContractViolation(problem);
  return p;
}

OrtStatusPtr ORT_API_CALL SSDScan::infer_output_shapes(const OrtCustomOp* /*op*/,
                                                       OrtShapeInferContext* context) noexcept {
  const ShapeInference shapes(context);
  ShapeInference::Dims x, B;
  if (shapes.input_count() < kRequiredInputs || !shapes.read(0, 4, x) || !shapes.read(3, 4, B)) return nullptr;
  shapes.write(0, x);
  shapes.write(1, {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, {x.values[0], x.values[2], x.values[3], B.values[3]},
                   {x.symbols[0], x.symbols[2], x.symbols[3], B.symbols[3]}});
  return nullptr;
}

}  // namespace mamba_ort
