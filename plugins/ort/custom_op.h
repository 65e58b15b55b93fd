// What the ops of the mamba domain share as ONNX Runtime custom ops (docs/ops.md): errors,
// attributes, packed optional inputs, input checks, shape-inference helpers and the op
// template, parameterised by the op and by the execution provider.
//
// An op (selective_scan_op.h, ssd_scan_op.h) is a type with
//
//   static constexpr const char* kName;           // the ONNX op type, e.g. "SelectiveScan"
//   static constexpr const char* kQualifiedName;  // "mamba.SelectiveScan": the prefix of its errors
//   static constexpr size_t kRequiredInputs;      // then the present optional inputs, packed
//   struct Attributes;                            // read when ORT creates the kernel
//   static Attributes read_attributes(const OrtKernelInfo* info);
//   using Params = ...;                           // the kernels' parameter block (mamba_kernels.h)
//   // Checks this call's inputs, allocates the outputs, fills the block.
//   static Params bind_inputs(Ort::KernelContext& context, const Attributes& attributes);
//   // OrtCustomOp::InferOutputShapeFn. ORT ignores (and leaks) a status returned from it, so
//   // it returns none: a shape it cannot infer stays unset and the kernel reports the problem.
//   static OrtStatusPtr ORT_API_CALL infer_output_shapes(const OrtCustomOp*, OrtShapeInferContext*) noexcept;
//
// read_attributes and bind_inputs throw ContractViolation. An execution provider is a type with
//
//   static constexpr const char* kName;  // ORT's name of the EP, e.g. "CPUExecutionProvider"
//   // Runs the kernel on checked parameters (outputs already allocated on the EP's device).
//   static void launch(const Op::Params& p, Ort::KernelContext& context);  // for each op it runs
//
// and register.cc registers CustomOp<Op, Provider> once per activation type.
#ifndef MAMBA_ORT_CUSTOM_OP_H
#define MAMBA_ORT_CUSTOM_OP_H

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <exception>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mamba_kernels.h"

namespace mamba_ort {

// An input or attribute that violates docs/ops.md. status_of puts the op's name in front.
struct ContractViolation : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Runs fn, turning exceptions into an OrtStatus for ORT (nullptr when fn succeeds); the
// message of each error of ours starts with `op` ("mamba.SelectiveScan: ...").
template <typename Fn>
OrtStatusPtr status_of(const char* op, Fn&& fn) noexcept {
  try {
    fn();
    return nullptr;
  } catch (const ContractViolation& e) {
    return Ort::Status((std::string(op) + ": " + e.what()).c_str(), ORT_INVALID_ARGUMENT).release();
  } catch (const Ort::Exception& e) {
    return Ort::Status(e).release();
  } catch (const std::exception& e) {
    return Ort::Status((std::string(op) + ": " + e.what()).c_str(), ORT_FAIL).release();
  } catch (...) {
    return Ort::Status((std::string(op) + ": unknown error").c_str(), ORT_FAIL).release();
  }
}

// An int attribute that must be 0 or 1; 0 when absent.
int64_t read_flag(const OrtKernelInfo* info, const char* name);
// A float attribute; `absent` when the node does not have it.
float read_float(const OrtKernelInfo* info, const char* name, float absent);
// Checks the node's output count (names: "y, final_state").
void check_output_count(const OrtKernelInfo* info, size_t count, const char* names);

// One input of a call, or none (an absent optional input: name == nullptr, every check passes).
struct Input {
  const char* name = nullptr;
  Ort::ConstValue value{nullptr};
  std::vector<int64_t> shape;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;

  const void* data() const { return name ? value.GetTensorRawData() : nullptr; }
  const float* floats() const { return static_cast<const float*>(data()); }
  // Shape `dims` (named by `symbols`, e.g. "[batch, L]") and element type `want`; type_rule
  // is appended to the type in the message (" (like u)").
  void expect(const char* symbols, const std::vector<int64_t>& dims, ONNXTensorElementDataType want,
              const char* type_rule) const;
  void expect_rank(const char* symbols, size_t rank) const;
  // The kernels' activation type T of this input (float32, float16 or bfloat16).
  mamba_dtype activation_dtype() const;
};

// "dim (4, from u) must be a multiple of G (3, from B)" unless G >= 1 divides `what`.
void expect_multiple_of_groups(const char* what, int64_t count, const char* count_from, int64_t groups);

// An op's inputs: the required ones, then the present optional ones packed in a fixed
// order, the attribute has_<name> of each optional input saying whether it is there.
class PackedInputs {
 public:
  PackedInputs(std::vector<const char*> required, std::vector<const char*> optional)
      : required_(std::move(required)), optional_(std::move(optional)), present_(optional_.size(), 0) {}

  // Reads the has_* attributes and checks the node's input count against them.
  void read(const OrtKernelInfo* info);
  bool has(size_t optional) const { return present_[optional] != 0; }
  // This call's inputs: the required ones, then every optional one (absent: an empty Input).
  std::vector<Input> bind(Ort::KernelContext& context) const;

 private:
  size_t count() const;
  void check_count(size_t count) const;

  std::vector<const char*> required_, optional_;
  std::vector<int64_t> present_;
};

// Types and shapes of inputs and outputs as an op's shape inference sees them. Every read
// answers false when ORT does not know the input; writes leave unknown, unnamed shapes unset.
class ShapeInference {
 public:
  struct Dims {  // each dimension a value, or a symbol (value -1), or unknown
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    std::vector<int64_t> values;
    std::vector<const char*> symbols;
  };

  explicit ShapeInference(OrtShapeInferContext* context) : context_(context) {}
  size_t input_count() const;
  bool read(size_t index, size_t rank, Dims& dims) const;
  void write(size_t index, const Dims& dims) const;

 private:
  OrtShapeInferContext* context_;
};

template <typename Op, typename Provider>
struct Kernel {
  typename Op::Attributes attributes;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) noexcept {
    return status_of(Op::kQualifiedName, [&] {
      Ort::KernelContext context(raw_context);
      const typename Op::Params params = Op::bind_inputs(context, attributes);
      Provider::launch(params, context);
    });
  }
};

// One registration per activation type T (ORT picks the kernel by the first input's type
// and takes the type of the first output from it). The other inputs are declared with any
// type and checked by bind_inputs, so a mismatch gets the op's message, not "no kernel found".
template <typename Op, typename Provider>
struct CustomOp : Ort::CustomOpBase<CustomOp<Op, Provider>, Kernel<Op, Provider>, true> {
  explicit CustomOp(ONNXTensorElementDataType activation) : activation_(activation) {
    this->InferOutputShapeFn = Op::infer_output_shapes;
  }

  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const noexcept {
    *kernel = nullptr;
    return status_of(Op::kQualifiedName, [&] { *kernel = new Kernel<Op, Provider>{Op::read_attributes(info)}; });
  }

  const char* GetName() const { return Op::kName; }
  const char* GetExecutionProviderType() const { return Provider::kName; }

  size_t GetInputTypeCount() const { return Op::kRequiredInputs + 1; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 0 ? activation_ : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
  // The last declared input is variadic: the packed optional inputs, 0 or more of them.
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == Op::kRequiredInputs ? INPUT_OUTPUT_VARIADIC : INPUT_OUTPUT_REQUIRED;
  }
  int GetVariadicInputMinArity() const { return 0; }
  bool GetVariadicInputHomogeneity() const { return false; }

  // y (type T) and final_state (float32).
  size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(size_t index) const {
    return index == 0 ? activation_ : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }

 private:
  ONNXTensorElementDataType activation_;
};

}  // namespace mamba_ort

#endif  // MAMBA_ORT_CUSTOM_OP_H
