// mamba.SelectiveScan (docs/ops.md) as a TensorRT IPluginV3 plugin: name "SelectiveScan",
// version "1", namespace "", so that TensorRT's ONNX parser maps the ONNX node to it by its
// op type (docs/tensorrt.md). The plugin validates shapes and types against the contract at
// build time and enqueues the shared CUDA kernels (plugins/include/mamba_kernels.h).
//
// Only TensorRT's headers are used: every TensorRT object the plugin touches is reached
// through virtual calls, so the library does not link libnvinfer and loads into TensorRT
// and TensorRT-RTX alike.
#ifndef MAMBA_TRT_SELECTIVE_SCAN_PLUGIN_H
#define MAMBA_TRT_SELECTIVE_SCAN_PLUGIN_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mamba_trt {

constexpr const char* kPluginName = "SelectiveScan";
constexpr const char* kPluginVersion = "1";
constexpr const char* kPluginNamespace = "";

// The ONNX node's attributes, which are also the plugin's fields (all default 0, each 0 or 1).
struct ScanAttributes {
  int32_t delta_softplus = 0, has_D = 0, has_z = 0, has_delta_bias = 0, has_initial_state = 0;
};

// One packed input of the node: its name and shape symbols in docs/ops.md, and whether its
// type is the activation type T (else float32).
struct InputSpec {
  const char* name;
  std::vector<char> symbols;  // b = batch, d = dim, L, N, G
  bool activation;
};

// u, delta, A, B, C, then the optional inputs the attributes declare, in the packed order.
std::vector<InputSpec> input_specs(ScanAttributes const& attributes);

class SelectiveScanPlugin final : public nvinfer1::IPluginV3,
                                  public nvinfer1::IPluginV3OneCore,
                                  public nvinfer1::IPluginV3OneBuild,
                                  public nvinfer1::IPluginV3OneRuntime {
 public:
  SelectiveScanPlugin(std::string name, ScanAttributes attributes);
  SelectiveScanPlugin(SelectiveScanPlugin const& other);
  SelectiveScanPlugin& operator=(SelectiveScanPlugin const&) = delete;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  nvinfer1::AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
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
  char const* getTimingCacheID() noexcept override { return description_.c_str(); }
  char const* getMetadataString() noexcept override { return description_.c_str(); }

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &fields_; }

 private:
  // Logs "mamba.SelectiveScan (node NAME): message" as an error (and records it with the
  // execution context's error recorder once attached); returns the non-zero status TensorRT expects.
  int32_t fail(std::string const& message) const noexcept;
  // "" when the input count, shapes (-1 = not known yet) and types satisfy the contract.
  std::string check(std::vector<std::vector<int64_t>> const& shapes, nvinfer1::DataType const* types,
                    int32_t nbInputs) const;

  std::string name_;
  ScanAttributes attributes_;
  std::vector<InputSpec> inputs_;
  std::string description_;  // the attributes as text: timing-cache id and layer metadata
  std::vector<nvinfer1::PluginField> field_list_;
  nvinfer1::PluginFieldCollection fields_;
  nvinfer1::IErrorRecorder* recorder_ = nullptr;
};

class SelectiveScanPluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  SelectiveScanPluginCreator();
  nvinfer1::IPluginV3* createPlugin(nvinfer1::AsciiChar const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &field_names_; }
  nvinfer1::AsciiChar const* getPluginName() const noexcept override { return kPluginName; }
  nvinfer1::AsciiChar const* getPluginVersion() const noexcept override { return kPluginVersion; }
  nvinfer1::AsciiChar const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

 private:
  std::vector<nvinfer1::PluginField> field_list_;
  nvinfer1::PluginFieldCollection field_names_;
};

// Logs an error through the logger TensorRT handed to setLoggerFinder (stderr before that).
void log_error(std::string const& message) noexcept;

}  // namespace mamba_trt

#endif  // MAMBA_TRT_SELECTIVE_SCAN_PLUGIN_H
