// Attribute parsing, input validation and shape inference of mamba.SelectiveScan, shared by
// every execution provider (see selective_scan_op.h).
#include "selective_scan_op.h"

#include <sstream>
#include <vector>

namespace mamba_ort {
namespace {

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << ']';
  return s.str();
}

const char* type_name(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return "int16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    default: return "a non-float type";
  }
}

// Reads one 0/1 attribute. ORT answers "no such int attribute" both when it is absent
// (default 0) and when it has another type (an error): probing the other kinds tells them apart.
int64_t read_flag(const OrtKernelInfo* info, const char* name) {
  const OrtApi& api = Ort::GetApi();
  auto ok = [&api](OrtStatus* status) {
    if (!status) return true;
    api.ReleaseStatus(status);
    return false;
  };
  int64_t value = 0;
  if (!ok(api.KernelInfoGetAttribute_int64(info, name, &value))) {
    float f;
    size_t size = 0;
    if (ok(api.KernelInfoGetAttribute_float(info, name, &f)) ||
        ok(api.KernelInfoGetAttribute_string(info, name, nullptr, &size)) ||
        ok(api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size)) ||
        ok(api.KernelInfoGetAttributeArray_float(info, name, nullptr, &size))) {
      throw ContractViolation(std::string("attribute ") + name + " must be an int, 0 or 1");
    }
    return 0;
  }
  if (value != 0 && value != 1) {
    throw ContractViolation(std::string("attribute ") + name + " must be 0 or 1, got " + std::to_string(value));
  }
  return value;
}

void check_input_count(size_t count, const ScanAttributes& a) {
  if (count == a.input_count()) return;
  std::ostringstream s;
  s << "expected " << a.input_count() << " inputs (u, delta, A, B, C" << (a.has_D ? ", D" : "")
    << (a.has_z ? ", z" : "") << (a.has_delta_bias ? ", delta_bias" : "")
    << (a.has_initial_state ? ", initial_state" : "")
    << ") for has_D=" << a.has_D << " has_z=" << a.has_z << " has_delta_bias=" << a.has_delta_bias
    << " has_initial_state=" << a.has_initial_state << ", got " << count;
  throw ContractViolation(s.str());
}

struct Input {
  const char* name = nullptr;
  Ort::ConstValue value{nullptr};
  std::vector<int64_t> shape;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;

  const void* data() const { return name ? value.GetTensorRawData() : nullptr; }

  // Rank, every dimension (named as in docs/ops.md) and the element type.
  void expect(const char* symbols, const std::vector<int64_t>& dims, ONNXTensorElementDataType want,
              const char* type_rule) const {
    if (!name) return;
    if (shape != dims) {
      throw ContractViolation(std::string(name) + " must have shape " + symbols + " = " + shape_string(dims) +
                              ", got " + shape_string(shape));
    }
    if (type != want) {
      throw ContractViolation(std::string(name) + " must be " + type_name(want) + type_rule + ", got " +
                              type_name(type));
    }
  }
  void expect_rank(const char* symbols, size_t rank) const {
    if (shape.size() != rank) {
      throw ContractViolation(std::string(name) + " must have shape " + symbols + ", got " + shape_string(shape));
    }
  }
};

Input input(Ort::KernelContext& context, size_t index, const char* name) {
  Input in;
  in.name = name;
  in.value = context.GetInput(index);
  if (!in.value) throw ContractViolation(std::string("input ") + name + " is missing");
  const Ort::TensorTypeAndShapeInfo info = in.value.GetTensorTypeAndShapeInfo();
  in.shape = info.GetShape();
  in.type = info.GetElementType();
  return in;
}

}  // namespace

ScanAttributes read_attributes(const OrtKernelInfo* info) {
  ScanAttributes a;
  a.delta_softplus = read_flag(info, "delta_softplus");
  a.has_D = read_flag(info, "has_D");
  a.has_z = read_flag(info, "has_z");
  a.has_delta_bias = read_flag(info, "has_delta_bias");
  a.has_initial_state = read_flag(info, "has_initial_state");
  const Ort::ConstKernelInfo kernel_info(info);
  check_input_count(kernel_info.GetInputCount(), a);
  if (kernel_info.GetOutputCount() != 2) {
    throw ContractViolation("expected 2 outputs (y, final_state), got " + std::to_string(kernel_info.GetOutputCount()));
  }
  return a;
}

mamba_selective_scan_params bind_inputs(Ort::KernelContext& context, const ScanAttributes& a) {
  check_input_count(context.GetInputCount(), a);
  const Input u = input(context, 0, "u"), delta = input(context, 1, "delta"), A = input(context, 2, "A"),
              B = input(context, 3, "B"), C = input(context, 4, "C");
  size_t next = kRequiredInputs;  // the optional inputs are packed in this order
  const Input D = a.has_D ? input(context, next++, "D") : Input{};
  const Input z = a.has_z ? input(context, next++, "z") : Input{};
  const Input delta_bias = a.has_delta_bias ? input(context, next++, "delta_bias") : Input{};
  const Input initial_state = a.has_initial_state ? input(context, next++, "initial_state") : Input{};

  u.expect_rank("[batch, dim, L]", 3);
  A.expect_rank("[dim, N]", 2);
  B.expect_rank("[batch, G, N, L]", 4);
  const int64_t batch = u.shape[0], dim = u.shape[1], L = u.shape[2], N = A.shape[1], G = B.shape[1];
  if (G < 1 || dim % G != 0) {
    throw ContractViolation("dim (" + std::to_string(dim) + ", from u) must be a multiple of G (" + std::to_string(G) +
                            ", from B)");
  }
  const ONNXTensorElementDataType T = u.type;
  mamba_dtype dtype;
  switch (T) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: dtype = MAMBA_FLOAT32; break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: dtype = MAMBA_FLOAT16; break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: dtype = MAMBA_BFLOAT16; break;
    default: throw ContractViolation(std::string("u must be float32, float16 or bfloat16, got ") + type_name(T));
  }
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
  p.A = static_cast<const float*>(A.data());
  p.B = B.data();
  p.C = C.data();
  p.D = static_cast<const float*>(D.data());
  p.z = z.data();
  p.delta_bias = static_cast<const float*>(delta_bias.data());
  p.initial_state = static_cast<const float*>(initial_state.data());
  p.delta_softplus = static_cast<int>(a.delta_softplus);
  p.y = context.GetOutput(0, {batch, dim, L}).GetTensorMutableRawData();
  p.final_state = static_cast<float*>(context.GetOutput(1, {batch, dim, N}).GetTensorMutableRawData());
  if (const char* problem = mamba_selective_scan_check(&p)) throw ContractViolation(problem);
  return p;
}

OrtStatusPtr ORT_API_CALL infer_output_shapes(const OrtCustomOp* /*op*/, OrtShapeInferContext* context) noexcept {
  // ORT ignores (and leaks) a status returned from here, so this never returns one: when
  // a shape cannot be inferred it is left unset and the kernel reports the problem at run time.
  const OrtApi& api = Ort::GetApi();
  auto ok = [&api](OrtStatus* status) {
    if (!status) return true;
    api.ReleaseStatus(status);
    return false;
  };
  struct Dims {  // a shape as ORT's inference sees it: a value, or a symbol, or unknown
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    std::vector<int64_t> values;
    std::vector<const char*> symbols;
  };
  auto read = [&](size_t index, size_t rank, Dims& dims) {
    OrtTensorTypeAndShapeInfo* info = nullptr;  // owned by the context
    size_t count = 0;
    if (!ok(api.ShapeInferContext_GetInputTypeShape(context, index, &info)) || !info ||
        !ok(api.GetTensorElementType(info, &dims.type)) || !ok(api.GetDimensionsCount(info, &count)) || count != rank) {
      return false;
    }
    dims.values.resize(count);
    dims.symbols.resize(count);
    return ok(api.GetDimensions(info, dims.values.data(), count)) &&
           ok(api.GetSymbolicDimensions(info, dims.symbols.data(), count));
  };
  auto write = [&](size_t index, ONNXTensorElementDataType type, const std::vector<int64_t>& values,
                   std::vector<const char*> symbols) {
    for (size_t i = 0; i < values.size(); ++i) {
      if (!symbols[i]) symbols[i] = "";
      if (values[i] < 0 && !*symbols[i]) return;  // unknown and unnamed: leave this output to run time
    }
    OrtTensorTypeAndShapeInfo* info = nullptr;
    if (!ok(api.CreateTensorTypeAndShapeInfo(&info))) return;
    if (ok(api.SetTensorElementType(info, type)) && ok(api.SetDimensions(info, values.data(), values.size())) &&
        ok(api.SetSymbolicDimensions(info, symbols.data(), symbols.size()))) {
      ok(api.ShapeInferContext_SetOutputTypeShape(context, index, info));
    }
    api.ReleaseTensorTypeAndShapeInfo(info);
  };

  size_t count = 0;
  Dims u, A;
  if (!ok(api.ShapeInferContext_GetInputCount(context, &count)) || count < kRequiredInputs || !read(0, 3, u) ||
      !read(2, 2, A)) {
    return nullptr;
  }
  write(0, u.type, u.values, u.symbols);
  write(1, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, {u.values[0], u.values[1], A.values[1]},
        {u.symbols[0], u.symbols[1], A.symbols[1]});
  return nullptr;
}

}  // namespace mamba_ort
