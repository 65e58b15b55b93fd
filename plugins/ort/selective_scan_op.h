// mamba.SelectiveScan as an ONNX Runtime custom op (docs/ops.md).
//
// What every execution provider shares lives here and in selective_scan_op.cc: the op's
// signature, attribute parsing, validation of the inputs against the contract, output
// allocation and shape inference. An execution provider only adds a Provider type:
//
//   struct Provider {
//     static constexpr const char* kName;  // ORT's name of the EP, e.g. "CPUExecutionProvider"
//     // Runs the kernel on checked parameters (outputs already allocated on the EP's device).
//     static void launch(const mamba_selective_scan_params& p, Ort::KernelContext& context);
//   };
//
// and registers SelectiveScanOp<Provider> for each activation type (register.cc).
#ifndef MAMBA_ORT_SELECTIVE_SCAN_OP_H
#define MAMBA_ORT_SELECTIVE_SCAN_OP_H

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <exception>
#include <stdexcept>
#include <string>

#include "mamba_kernels.h"

namespace mamba_ort {

constexpr const char* kOpName = "SelectiveScan";
constexpr size_t kRequiredInputs = 5;  // u, delta, A, B, C; then the present optional ones, packed

// An input or attribute that violates docs/ops.md. The message starts with the op name.
struct ContractViolation : std::runtime_error {
  explicit ContractViolation(const std::string& message) : std::runtime_error("mamba.SelectiveScan: " + message) {}
};

// The node's attributes (all default 0), checked to be 0 or 1.
struct ScanAttributes {
  int64_t delta_softplus = 0, has_D = 0, has_z = 0, has_delta_bias = 0, has_initial_state = 0;
  size_t input_count() const {
    return kRequiredInputs + static_cast<size_t>(has_D + has_z + has_delta_bias + has_initial_state);
  }
};

// Reads the attributes when ORT creates the kernel and checks the node's input count
// against them. Throws ContractViolation.
ScanAttributes read_attributes(const OrtKernelInfo* info);

// Checks this call's inputs against docs/ops.md, allocates the outputs and fills the
// kernel parameter block. Throws ContractViolation (or Ort::Exception from ORT itself).
mamba_selective_scan_params bind_inputs(Ort::KernelContext& context, const ScanAttributes& attributes);

// OrtCustomOp::InferOutputShapeFn: y has u's shape, final_state is [batch, dim, N]. Leaves
// the shapes unknown when the inputs do not say them (the kernel then reports any error).
OrtStatusPtr ORT_API_CALL infer_output_shapes(const OrtCustomOp* op, OrtShapeInferContext* context) noexcept;

// Runs fn, turning exceptions into an OrtStatus for ORT (nullptr when fn succeeds).
template <typename Fn>
OrtStatusPtr status_of(Fn&& fn) noexcept {
  try {
    fn();
    return nullptr;
  } catch (const ContractViolation& e) {
    return Ort::Status(e.what(), ORT_INVALID_ARGUMENT).release();
  } catch (const Ort::Exception& e) {
    return Ort::Status(e).release();
  } catch (const std::exception& e) {
    return Ort::Status((std::string("mamba.SelectiveScan: ") + e.what()).c_str(), ORT_FAIL).release();
  } catch (...) {
    return Ort::Status("mamba.SelectiveScan: unknown error", ORT_FAIL).release();
  }
}

template <typename Provider>
struct SelectiveScanKernel {
  ScanAttributes attributes;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) noexcept {
    return status_of([&] {
      Ort::KernelContext context(raw_context);
      const mamba_selective_scan_params params = bind_inputs(context, attributes);
      Provider::launch(params, context);
    });
  }
};

// One registration per activation type T (ORT picks the kernel by u's type and takes the
// type of y from it). The other inputs are declared with any type and checked by
// bind_inputs, so a mismatch gets this op's message rather than "no kernel found".
template <typename Provider>
struct SelectiveScanOp : Ort::CustomOpBase<SelectiveScanOp<Provider>, SelectiveScanKernel<Provider>, true> {
  explicit SelectiveScanOp(ONNXTensorElementDataType activation) : activation_(activation) {
    this->InferOutputShapeFn = infer_output_shapes;
  }

  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const noexcept {
    *kernel = nullptr;
    return status_of([&] { *kernel = new SelectiveScanKernel<Provider>{read_attributes(info)}; });
  }

  const char* GetName() const { return kOpName; }
  const char* GetExecutionProviderType() const { return Provider::kName; }

  size_t GetInputTypeCount() const { return kRequiredInputs + 1; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 0 ? activation_ : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
  // The last declared input is variadic: the packed optional inputs, 0 to 4 of them.
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == kRequiredInputs ? INPUT_OUTPUT_VARIADIC : INPUT_OUTPUT_REQUIRED;
  }
  int GetVariadicInputMinArity() const { return 0; }
  bool GetVariadicInputHomogeneity() const { return false; }

  size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(size_t index) const {
    return index == 0 ? activation_ : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }

 private:
  ONNXTensorElementDataType activation_;
};

}  // namespace mamba_ort

#endif  // MAMBA_ORT_SELECTIVE_SCAN_OP_H
