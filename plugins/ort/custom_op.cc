// The pieces every op of the mamba domain shares (see custom_op.h).
#include "custom_op.h"

#include <sstream>
#include <utility>

namespace mamba_ort {
namespace {

// For the ORT calls that answer with a status we only test: releases it, says whether it was OK.
bool ok(OrtStatus* status) {
  if (!status) return true;
  Ort::GetApi().ReleaseStatus(status);
  return false;
}

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

// ORT answers "no such attribute" for a name of another type too: probing every kind tells
// an absent attribute from one of the wrong type.
bool has_attribute(const OrtKernelInfo* info, const char* name) {
  const OrtApi& api = Ort::GetApi();
  int64_t i;
  float f;
  size_t size = 0;
  return ok(api.KernelInfoGetAttribute_int64(info, name, &i)) || ok(api.KernelInfoGetAttribute_float(info, name, &f)) ||
         ok(api.KernelInfoGetAttribute_string(info, name, nullptr, &size)) ||
         ok(api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size)) ||
         ok(api.KernelInfoGetAttributeArray_float(info, name, nullptr, &size));
}

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

int64_t read_flag(const OrtKernelInfo* info, const char* name) {
  int64_t value = 0;
  if (!ok(Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &value))) {
    if (has_attribute(info, name)) {
      throw ContractViolation(std::string("attribute ") + name + " must be an int, 0 or 1");
    }
    return 0;
  }
  if (value != 0 && value != 1) {
    throw ContractViolation(std::string("attribute ") + name + " must be 0 or 1, got " + std::to_string(value));
  }
  return value;
}

float read_float(const OrtKernelInfo* info, const char* name, float absent) {
  float value = 0.0f;
  if (!ok(Ort::GetApi().KernelInfoGetAttribute_float(info, name, &value))) {
    if (has_attribute(info, name)) throw ContractViolation(std::string("attribute ") + name + " must be a float");
    return absent;
  }
  return value;
}

void check_output_count(const OrtKernelInfo* info, size_t count, const char* names) {
  const size_t actual = Ort::ConstKernelInfo(info).GetOutputCount();
  if (actual != count) {
    throw ContractViolation("expected " + std::to_string(count) + " outputs (" + names + "), got " +
                            std::to_string(actual));
  }
}

void Input::expect(const char* symbols, const std::vector<int64_t>& dims, ONNXTensorElementDataType want,
                   const char* type_rule) const {
  if (!name) return;
  if (shape != dims) {
    throw ContractViolation(std::string(name) + " must have shape " + symbols + " = " + shape_string(dims) + ", got " +
                            shape_string(shape));
  }
  if (type != want) {
    throw ContractViolation(std::string(name) + " must be " + type_name(want) + type_rule + ", got " +
                            type_name(type));
  }
}

void Input::expect_rank(const char* symbols, size_t rank) const {
  if (name && shape.size() != rank) {
    throw ContractViolation(std::string(name) + " must have shape " + symbols + ", got " + shape_string(shape));
  }
}

mamba_dtype Input::activation_dtype() const {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return MAMBA_FLOAT32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return MAMBA_FLOAT16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return MAMBA_BFLOAT16;
    default:
      throw ContractViolation(std::string(name) + " must be float32, float16 or bfloat16, got " + type_name(type));
  }
}

void expect_multiple_of_groups(const char* what, int64_t count, const char* count_from, int64_t groups) {
  if (groups < 1 || count % groups != 0) {
    throw ContractViolation(std::string(what) + " (" + std::to_string(count) + ", from " + count_from +
                            ") must be a multiple of G (" + std::to_string(groups) + ", from B)");
  }
}

void PackedInputs::read(const OrtKernelInfo* info) {
  for (size_t i = 0; i < optional_.size(); ++i) {
    present_[i] = read_flag(info, (std::string("has_") + optional_[i]).c_str());
  }
  check_count(Ort::ConstKernelInfo(info).GetInputCount());
}

size_t PackedInputs::count() const {
  size_t n = required_.size();
  for (int64_t p : present_) n += static_cast<size_t>(p);
  return n;
}

void PackedInputs::check_count(size_t count) const {
  if (count == this->count()) return;
  std::ostringstream s;
  s << "expected " << this->count() << " inputs (";
  const char* separator = "";
  for (const char* name : required_) s << std::exchange(separator, ", ") << name;
  for (size_t i = 0; i < optional_.size(); ++i) {
    if (present_[i]) s << ", " << optional_[i];
  }
  s << ") for";
  for (size_t i = 0; i < optional_.size(); ++i) s << " has_" << optional_[i] << '=' << present_[i];
  s << ", got " << count;
  throw ContractViolation(s.str());
}

std::vector<Input> PackedInputs::bind(Ort::KernelContext& context) const {
  check_count(context.GetInputCount());
  std::vector<Input> inputs;
  inputs.reserve(required_.size() + optional_.size());
  size_t next = 0;
  for (const char* name : required_) inputs.push_back(input(context, next++, name));
  for (size_t i = 0; i < optional_.size(); ++i) {
    inputs.push_back(present_[i] ? input(context, next++, optional_[i]) : Input{});
  }
  return inputs;
}

size_t ShapeInference::input_count() const {
  size_t count = 0;
  return ok(Ort::GetApi().ShapeInferContext_GetInputCount(context_, &count)) ? count : 0;
}

bool ShapeInference::read(size_t index, size_t rank, Dims& dims) const {
  const OrtApi& api = Ort::GetApi();
  OrtTensorTypeAndShapeInfo* info = nullptr;  // owned by the context
  size_t count = 0;
  if (!ok(api.ShapeInferContext_GetInputTypeShape(context_, index, &info)) || !info ||
      !ok(api.GetTensorElementType(info, &dims.type)) || !ok(api.GetDimensionsCount(info, &count)) || count != rank) {
    return false;
  }
  dims.values.resize(count);
  dims.symbols.resize(count);
  return ok(api.GetDimensions(info, dims.values.data(), count)) &&
         ok(api.GetSymbolicDimensions(info, dims.symbols.data(), count));
}

void ShapeInference::write(size_t index, const Dims& dims) const {
  const OrtApi& api = Ort::GetApi();
  std::vector<const char*> symbols = dims.symbols;
  for (size_t i = 0; i < dims.values.size(); ++i) {
    if (!symbols[i]) symbols[i] = "";
    if (dims.values[i] < 0 && !*symbols[i]) return;  // unknown and unnamed: leave this output to run time
  }
  OrtTensorTypeAndShapeInfo* info = nullptr;
  if (!ok(api.CreateTensorTypeAndShapeInfo(&info))) return;
  if (ok(api.SetTensorElementType(info, dims.type)) &&
      ok(api.SetDimensions(info, dims.values.data(), dims.values.size())) &&
      ok(api.SetSymbolicDimensions(info, symbols.data(), symbols.size()))) {
    ok(api.ShapeInferContext_SetOutputTypeShape(context_, index, info));
  }
  api.ReleaseTensorTypeAndShapeInfo(info);
}

}  // namespace mamba_ort
