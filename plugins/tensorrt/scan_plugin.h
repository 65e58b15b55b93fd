// The scan ops of docs/ops.md as TensorRT IPluginV3 plugins. Every plugin is named after its
// ONNX op type, version "1", namespace "", so that TensorRT's ONNX parser maps the node to it
// by its op type (docs/tensorrt.md). One plugin class and one creator class serve every op:
// an op is data (OpSpec: its fields, its inputs by shape symbols, its output shape) plus the
// function that fills the kernels' parameter block (plugins/include/mamba_kernels.h). The
// plugin checks shapes and types against the contract at build time and enqueues the shared
// CUDA kernels.
//
// Only TensorRT's headers are used: every TensorRT object the plugin touches is reached
// through virtual calls, so the library does not link libnvinfer and loads into TensorRT
// and TensorRT-RTX alike.
#ifndef MAMBA_TRT_SCAN_PLUGIN_H
#define MAMBA_TRT_SCAN_PLUGIN_H

#include <NvInferRuntime.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "mamba_kernels.h"

namespace mamba_trt {

constexpr const char* kPluginVersion = "1";
constexpr const char* kPluginNamespace = "";

// A field of the plugin: an attribute of the ONNX node.
struct FieldSpec {
  enum Kind {
    kFlag,   // int 0 or 1, default 0; kINT32 (what the ONNX parser passes) or kINT64
    kFloat,  // not NaN; kFLOAT32 (what the ONNX parser passes) or kFLOAT64
  };
  const char* name;
  Kind kind;
  float default_value;
};

// One input of the contract, in the order of its table in docs/ops.md.
struct InputSpec {
  const char* name;
  const char* symbols;               // one shape symbol per dimension: b = batch, d = dim, L, N, G, H, P
  bool activation;                   // of the activation type T (else float32)
  const char* present_if = nullptr;  // optional inputs: the flag field that says they are present
};

// The values of an op's fields.
class Fields {
 public:
  explicit Fields(std::vector<FieldSpec> const& specs);
  Fields(Fields const& other);
  Fields& operator=(Fields const&) = delete;

  int32_t flag(const char* name) const { return value(name).flag; }
  float number(const char* name) const { return value(name).number; }
  // Sets the field from a PluginField; "" when accepted, else why not.
  std::string set(nvinfer1::PluginField const& field);
  // The fields as TensorRT serializes them (pointing into this object).
  nvinfer1::PluginFieldCollection const* collection() const { return &collection_; }
  // "name=value,...": timing-cache id, layer metadata and part of error messages.
  std::string const& text() const { return text_; }

 private:
  struct Value {
    int32_t flag = 0;
    float number = 0;
  };
  Value const& value(const char* name) const;
  void describe();

  std::vector<FieldSpec> const& specs_;
  std::vector<Value> values_;
  std::vector<nvinfer1::PluginField> list_;
  nvinfer1::PluginFieldCollection collection_{};
  std::string text_;
};

// What an op's parameter block is filled from: tensor sizes by shape symbol, the activation
// type, and the tensors in the contract's order, nullptr for an absent optional input.
struct Binding {
  static constexpr size_t kMaxInputs = 16;
  std::array<int64_t, 128> sizes{};  // by symbol character
  mamba_dtype dtype = MAMBA_FLOAT32;
  std::array<void const*, kMaxInputs> inputs{};
  std::array<void*, 2> outputs{};  // y, final_state

  int64_t size(char symbol) const { return sizes[static_cast<unsigned char>(symbol) & 127]; }
  void const* in(size_t index) const { return inputs[index]; }
  float const* floats(size_t index) const { return static_cast<float const*>(inputs[index]); }
};

// The CUDA entry points of an op on the block filled from a binding (see kernel_calls).
struct KernelCalls {
  const char* (*check)(Fields const& fields, Binding const& binding);  // nullptr: the kernels run it
  size_t (*workspace_size)(Fields const& fields, Binding const& binding);
  int (*run)(Fields const& fields, Binding const& binding, void* workspace, cudaStream_t stream);  // a cudaError_t
};

// An op of docs/ops.md as the plugin sees it.
struct OpSpec {
  const char* name;  // the ONNX op type: plugin name and prefix "mamba.<name>" of its errors
  std::vector<FieldSpec> fields;
  std::vector<InputSpec> inputs;  // required ones first, then the optional ones (at most Binding::kMaxInputs)
  const char* final_state;        // symbols of output 1 (output 0, y, has input 0's shape)
  char groups, grouped;           // the number of groups must divide this size
  std::string (*check_fields)(Fields const& fields);  // checks across fields ("" = fine), or nullptr
  KernelCalls kernels;
};

// KernelCalls of an op whose block `fill` makes and whose CUDA entry points are `check`,
// `workspace_size`, `run` (mamba_kernels.h).
template <typename Params, Params (*fill)(Fields const&, Binding const&), const char* (*check)(Params const*),
          size_t (*workspace_size)(Params const*), int (*run)(Params const*, void*, void*)>
constexpr KernelCalls kernel_calls() {
  return {
      [](Fields const& f, Binding const& b) {
        Params const p = fill(f, b);
        return check(&p);
      },
      [](Fields const& f, Binding const& b) {
        Params const p = fill(f, b);
        return workspace_size(&p);
      },
      [](Fields const& f, Binding const& b, void* workspace, cudaStream_t stream) {
        Params const p = fill(f, b);
        return run(&p, workspace, stream);
      },
  };
}

// The ops (selective_scan_plugin.cpp, ssd_scan_plugin.cpp).
OpSpec const& selective_scan_op();
OpSpec const& ssd_scan_op();

class ScanPlugin final : public nvinfer1::IPluginV3,
                         public nvinfer1::IPluginV3OneCore,
                         public nvinfer1::IPluginV3OneBuild,
                         public nvinfer1::IPluginV3OneRuntime {
 public:
  ScanPlugin(OpSpec const& op, std::string name, Fields const& fields);
  ScanPlugin(ScanPlugin const& other);
  ScanPlugin& operator=(ScanPlugin const&) = delete;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  nvinfer1::AsciiChar const* getPluginName() const noexcept override { return op_.name; }
  nvinfer1::AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  nvinfer1::AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return 2; }
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
  char const* getTimingCacheID() noexcept override { return fields_.text().c_str(); }
  char const* getMetadataString() noexcept override { return fields_.text().c_str(); }

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override { return fields_.collection(); }

 private:
  // Logs "mamba.<op> (node 'NAME'): message" as an error (and records it with the execution
  // context's error recorder once attached); returns the non-zero status TensorRT expects.
  int32_t fail(std::string const& message) const noexcept;
  // Runs fn, turning an exception (out of memory) into a failure.
  template <typename Fn>
  int32_t guarded(Fn&& fn) const noexcept;
  // "" when the input count, shapes (-1 = not known yet) and types (nullptr = not known) satisfy the contract.
  std::string check(std::vector<std::vector<int64_t>> const& shapes, nvinfer1::DataType const* types,
                    int32_t nbInputs) const;
  // configurePlugin's and onShapeChange's checks (scan_plugin.cpp).
  template <typename Desc, typename DimsOf>
  int32_t check_tensors(int32_t nbInputs, int32_t nbOutputs, Desc&& desc, DimsOf&& dims,
                        const char* limit_context) const noexcept;
  // Where each symbol is first seen: (input in packed order, dimension).
  std::pair<int, int> origin(char symbol) const;

  OpSpec const& op_;
  std::string name_;
  Fields fields_;
  std::vector<size_t> present_;  // contract index of each packed input
  nvinfer1::IErrorRecorder* recorder_ = nullptr;
};

class ScanPluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  explicit ScanPluginCreator(OpSpec const& op);
  nvinfer1::IPluginV3* createPlugin(nvinfer1::AsciiChar const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &field_names_; }
  nvinfer1::AsciiChar const* getPluginName() const noexcept override { return op_.name; }
  nvinfer1::AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  nvinfer1::AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

 private:
  OpSpec const& op_;
  std::vector<nvinfer1::PluginField> field_list_;
  nvinfer1::PluginFieldCollection field_names_;
};

// Logs an error through the logger TensorRT handed to setLoggerFinder (stderr before that).
void log_error(std::string const& message) noexcept;

}  // namespace mamba_trt

#endif  // MAMBA_TRT_SCAN_PLUGIN_H
