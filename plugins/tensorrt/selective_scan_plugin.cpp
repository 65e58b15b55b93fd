// The SelectiveScan plugin and its creator (see selective_scan_plugin.h).
#include "selective_scan_plugin.h"

#include <exception>
#include <map>
#include <sstream>
#include <utility>

#include "mamba_kernels.h"

namespace mamba_trt {
namespace {

using nvinfer1::DataType;
using nvinfer1::Dims;

constexpr const char* kFieldNames[] = {"delta_softplus", "has_D", "has_z", "has_delta_bias", "has_initial_state"};
constexpr int32_t ScanAttributes::*kFieldMembers[] = {&ScanAttributes::delta_softplus, &ScanAttributes::has_D,
                                                      &ScanAttributes::has_z, &ScanAttributes::has_delta_bias,
                                                      &ScanAttributes::has_initial_state};
constexpr int kNbFields = 5;
constexpr int kRequiredInputs = 5;

const char* symbol_name(char symbol) {
  switch (symbol) {
    case 'b': return "batch";
    case 'd': return "dim";
    case 'N': return "N";
    case 'G': return "G";
    default: return "L";
  }
}

std::string shape_text(std::vector<char> const& symbols) {
  std::string text = "[";
  for (size_t i = 0; i < symbols.size(); ++i) text += std::string(i ? ", " : "") + symbol_name(symbols[i]);
  return text + "]";
}

const char* type_name(DataType type) {
  switch (type) {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kBF16: return "bfloat16";
    case DataType::kINT8: return "int8";
    case DataType::kINT32: return "int32";
    case DataType::kINT64: return "int64";
    case DataType::kBOOL: return "bool";
    case DataType::kUINT8: return "uint8";
    default: return "a non-float type";
  }
}

bool is_activation_type(DataType type) {
  return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16;
}

mamba_dtype kernel_dtype(DataType type) {
  return type == DataType::kHALF ? MAMBA_FLOAT16 : type == DataType::kBF16 ? MAMBA_BFLOAT16 : MAMBA_FLOAT32;
}

// Positions of the optional inputs in the packed input list, -1 when absent.
struct Slots {
  int D = -1, z = -1, delta_bias = -1, initial_state = -1;
  explicit Slots(ScanAttributes const& a) {
    int next = kRequiredInputs;
    if (a.has_D) D = next++;
    if (a.has_z) z = next++;
    if (a.has_delta_bias) delta_bias = next++;
    if (a.has_initial_state) initial_state = next++;
  }
};

// The kernels' parameter block for tensors with these dimensions (u, A, B give every size).
mamba_selective_scan_params make_params(ScanAttributes const& a, Dims const& u, Dims const& A, Dims const& B,
                                        DataType type, void const* const* in, void* const* out) {
  Slots const s(a);
  mamba_selective_scan_params p{};
  p.batch = u.d[0];
  p.dim = u.d[1];
  p.seqlen = u.d[2];
  p.dstate = A.d[1];
  p.groups = B.d[1];
  p.dtype = kernel_dtype(type);
  p.u = in[0];
  p.delta = in[1];
  p.A = static_cast<float const*>(in[2]);
  p.B = in[3];
  p.C = in[4];
  p.D = s.D < 0 ? nullptr : static_cast<float const*>(in[s.D]);
  p.z = s.z < 0 ? nullptr : in[s.z];
  p.delta_bias = s.delta_bias < 0 ? nullptr : static_cast<float const*>(in[s.delta_bias]);
  p.initial_state = s.initial_state < 0 ? nullptr : static_cast<float const*>(in[s.initial_state]);
  p.delta_softplus = a.delta_softplus;
  p.y = out[0];
  p.final_state = static_cast<float*>(out[1]);
  return p;
}

// What the CUDA kernels say about tensors of these dimensions (nullptr: they run them).
// Without data yet, every pointer is a placeholder: the check reads sizes and presence only.
const char* kernel_limits(ScanAttributes const& a, Dims const& u, Dims const& A, Dims const& B, DataType type) {
  alignas(256) static unsigned char placeholder[256];
  void* const pointers[16] = {placeholder, placeholder, placeholder, placeholder, placeholder, placeholder,
                              placeholder, placeholder, placeholder, placeholder, placeholder, placeholder,
                              placeholder, placeholder, placeholder, placeholder};
  mamba_selective_scan_params const p = make_params(a, u, A, B, type, pointers, pointers);
  return mamba_selective_scan_cuda_check(&p);
}

std::vector<int64_t> known_dims(Dims const& dims) { return std::vector<int64_t>(dims.d, dims.d + dims.nbDims); }

// Runs fn, turning an exception (out of memory) into a failure status.
template <typename Fn>
int32_t guarded(Fn&& fn) noexcept {
  try {
    return fn();
  } catch (std::exception const& e) {
    log_error(std::string("mamba.SelectiveScan: ") + e.what());
  } catch (...) {
    log_error("mamba.SelectiveScan: unknown error");
  }
  return 1;
}

}  // namespace

std::vector<InputSpec> input_specs(ScanAttributes const& a) {
  std::vector<InputSpec> specs = {
      {"u", {'b', 'd', 'L'}, true},           {"delta", {'b', 'd', 'L'}, true},
      {"A", {'d', 'N'}, false},               {"B", {'b', 'G', 'N', 'L'}, true},
      {"C", {'b', 'G', 'N', 'L'}, true},
  };
  if (a.has_D) specs.push_back({"D", {'d'}, false});
  if (a.has_z) specs.push_back({"z", {'b', 'd', 'L'}, true});
  if (a.has_delta_bias) specs.push_back({"delta_bias", {'d'}, false});
  if (a.has_initial_state) specs.push_back({"initial_state", {'b', 'd', 'N'}, false});
  return specs;
}

// ---------------------------------------------------------------------------------------
// SelectiveScanPlugin

SelectiveScanPlugin::SelectiveScanPlugin(std::string name, ScanAttributes attributes)
    : name_(std::move(name)), attributes_(attributes), inputs_(input_specs(attributes)) {
  std::ostringstream text;
  for (int i = 0; i < kNbFields; ++i) {
    text << (i ? "," : "") << kFieldNames[i] << '=' << attributes_.*kFieldMembers[i];
    field_list_.emplace_back(kFieldNames[i], &(attributes_.*kFieldMembers[i]), nvinfer1::PluginFieldType::kINT32, 1);
  }
  description_ = text.str();
  fields_.nbFields = kNbFields;
  fields_.fields = field_list_.data();
}

// The serialized fields point into this object's attributes, so a copy builds its own.
SelectiveScanPlugin::SelectiveScanPlugin(SelectiveScanPlugin const& other)
    : SelectiveScanPlugin(other.name_, other.attributes_) {
  recorder_ = other.recorder_;
}

nvinfer1::IPluginCapability* SelectiveScanPlugin::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* SelectiveScanPlugin::clone() noexcept {
  try {
    return new SelectiveScanPlugin(*this);
  } catch (...) {
    return nullptr;
  }
}

nvinfer1::IPluginV3* SelectiveScanPlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept {
  try {
    auto* plugin = new SelectiveScanPlugin(*this);
    plugin->recorder_ = context ? context->getErrorRecorder() : nullptr;
    return plugin;
  } catch (...) {
    return nullptr;
  }
}

int32_t SelectiveScanPlugin::fail(std::string const& message) const noexcept {
  try {
    std::string const text = "mamba.SelectiveScan (node '" + name_ + "'): " + message;
    log_error(text);
    if (recorder_) recorder_->reportError(nvinfer1::ErrorCode::kINVALID_ARGUMENT, text.c_str());
  } catch (...) {
  }
  return 1;
}

std::string SelectiveScanPlugin::check(std::vector<std::vector<int64_t>> const& shapes, DataType const* types,
                                       int32_t nbInputs) const {
  std::ostringstream problem;
  if (nbInputs != static_cast<int32_t>(inputs_.size())) {
    problem << "expected " << inputs_.size() << " inputs (";
    for (size_t i = 0; i < inputs_.size(); ++i) problem << (i ? ", " : "") << inputs_[i].name;
    problem << ") for " << description_ << ", got " << nbInputs;
    return problem.str();
  }
  // Each symbol's value and the input it was first seen on.
  std::map<char, std::pair<int64_t, const char*>> seen;
  for (size_t i = 0; i < shapes.size(); ++i) {
    InputSpec const& spec = inputs_[i];
    std::vector<int64_t> const& shape = shapes[i];
    if (shape.size() != spec.symbols.size()) {
      problem << spec.name << " must have shape " << shape_text(spec.symbols) << " (rank " << spec.symbols.size()
              << "), got rank " << shape.size();
      return problem.str();
    }
    for (size_t k = 0; k < shape.size(); ++k) {
      if (shape[k] < 0) continue;  // known only at run time; checked again then
      auto const [it, fresh] = seen.emplace(spec.symbols[k], std::make_pair(shape[k], spec.name));
      if (!fresh && it->second.first != shape[k]) {
        problem << spec.name << " must have shape " << shape_text(spec.symbols) << " with "
                << symbol_name(spec.symbols[k]) << " = " << it->second.first << " (from " << it->second.second
                << "), got " << shape[k] << " in dimension " << k;
        return problem.str();
      }
    }
  }
  if (seen.count('G') && seen.count('d')) {
    int64_t const G = seen['G'].first, dim = seen['d'].first;
    if (G < 1 || dim % G != 0) {
      problem << "dim (" << dim << ", from " << seen['d'].second << ") must be a multiple of G (" << G << ", from "
              << seen['G'].second << ")";
      return problem.str();
    }
  }
  if (types) {
    DataType const T = types[0];
    if (!is_activation_type(T)) return std::string("u must be float32, float16 or bfloat16, got ") + type_name(T);
    for (size_t i = 1; i < inputs_.size(); ++i) {
      DataType const want = inputs_[i].activation ? T : DataType::kFLOAT;
      if (types[i] != want) {
        problem << inputs_[i].name << " must be " << type_name(want) << (inputs_[i].activation ? " (like u)" : "")
                << ", got " << type_name(types[i]);
        return problem.str();
      }
    }
  }
  return {};
}

int32_t SelectiveScanPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                                int32_t nbInputs) const noexcept {
  return guarded([&] {
    if (nbOutputs != 2) return fail("expected 2 outputs (y, final_state), got " + std::to_string(nbOutputs));
    std::string const problem = check({}, inputTypes, nbInputs);
    if (!problem.empty()) return fail(problem);
    outputTypes[0] = inputTypes[0];
    outputTypes[1] = DataType::kFLOAT;
    return 0;
  });
}

int32_t SelectiveScanPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                             nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t nbShapeInputs,
                                             nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                                             nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
  return guarded([&] {
    if (nbShapeInputs != 0) return fail("takes no shape inputs, got " + std::to_string(nbShapeInputs));
    if (nbOutputs != 2) return fail("expected 2 outputs (y, final_state), got " + std::to_string(nbOutputs));
    std::vector<std::vector<int64_t>> shapes;
    for (int32_t i = 0; i < nbInputs; ++i) {
      std::vector<int64_t> shape;
      for (int32_t k = 0; k < inputs[i].nbDims; ++k) {
        shape.push_back(inputs[i].d[k]->isConstant() ? inputs[i].d[k]->getConstantValue() : -1);
      }
      shapes.push_back(std::move(shape));
    }
    std::string const problem = check(shapes, nullptr, nbInputs);
    if (!problem.empty()) return fail(problem);
    outputs[0] = inputs[0];  // y: [batch, dim, L]
    outputs[1].nbDims = 3;   // final_state: [batch, dim, N]
    outputs[1].d[0] = inputs[0].d[0];
    outputs[1].d[1] = inputs[0].d[1];
    outputs[1].d[2] = inputs[2].d[1];
    return 0;
  });
}

bool SelectiveScanPlugin::supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                                    int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (nbInputs != static_cast<int32_t>(inputs_.size()) || nbOutputs != 2 || pos < 0 || pos >= nbInputs + nbOutputs) {
    return false;
  }
  nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
  if (desc.format != nvinfer1::TensorFormat::kLINEAR) return false;
  if (pos == 0) return is_activation_type(desc.type);
  bool const activation = pos < nbInputs ? inputs_[pos].activation : pos == nbInputs;  // outputs: y, final_state
  return desc.type == (activation ? inOut[0].desc.type : DataType::kFLOAT);
}

int32_t SelectiveScanPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                             nvinfer1::DynamicPluginTensorDesc const* /*out*/,
                                             int32_t nbOutputs) noexcept {
  return guarded([&] {
    if (nbOutputs != 2) return fail("expected 2 outputs (y, final_state), got " + std::to_string(nbOutputs));
    std::vector<std::vector<int64_t>> shapes;
    std::vector<DataType> types;
    for (int32_t i = 0; i < nbInputs; ++i) {
      shapes.push_back(known_dims(in[i].desc.dims));
      types.push_back(in[i].desc.type);
    }
    std::string const problem = check(shapes, types.data(), nbInputs);
    if (!problem.empty()) return fail(problem);
    if (const char* limit = kernel_limits(attributes_, in[0].max, in[2].max, in[3].max, in[0].desc.type)) {
      return fail(std::string("the largest shapes of this optimisation profile exceed the CUDA kernels: ") + limit);
    }
    return 0;
  });
}

size_t SelectiveScanPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                             nvinfer1::DynamicPluginTensorDesc const* /*outputs*/,
                                             int32_t /*nbOutputs*/) const noexcept {
  if (nbInputs != static_cast<int32_t>(inputs_.size())) return 0;
  void* const none[16] = {};
  mamba_selective_scan_params const p =
      make_params(attributes_, inputs[0].max, inputs[2].max, inputs[3].max, inputs[0].desc.type, none, none);
  return mamba_selective_scan_cuda_workspace_size(&p);
}

int32_t SelectiveScanPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                                           nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
  return guarded([&] {
    if (nbOutputs != 2) return fail("expected 2 outputs (y, final_state), got " + std::to_string(nbOutputs));
    std::vector<std::vector<int64_t>> shapes;
    std::vector<DataType> types;
    for (int32_t i = 0; i < nbInputs; ++i) {
      shapes.push_back(known_dims(in[i].dims));
      types.push_back(in[i].type);
    }
    std::string const problem = check(shapes, types.data(), nbInputs);
    if (!problem.empty()) return fail(problem);
    if (const char* limit = kernel_limits(attributes_, in[0].dims, in[2].dims, in[3].dims, in[0].type)) {
      return fail(limit);
    }
    return 0;
  });
}

int32_t SelectiveScanPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
                                     nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs,
                                     void* const* outputs, void* workspace, cudaStream_t stream) noexcept {
  mamba_selective_scan_params const p =
      make_params(attributes_, inputDesc[0].dims, inputDesc[2].dims, inputDesc[3].dims, inputDesc[0].type, inputs,
                  outputs);
  int const status = mamba_selective_scan_cuda(&p, workspace, stream);
  if (status == 0) return 0;
  const char* why = mamba_selective_scan_cuda_check(&p);
  return fail(why ? why : "the CUDA kernel launch failed (cudaError_t " + std::to_string(status) + ")");
}

// ---------------------------------------------------------------------------------------
// SelectiveScanPluginCreator

SelectiveScanPluginCreator::SelectiveScanPluginCreator() {
  for (const char* name : kFieldNames) field_list_.emplace_back(name, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
  field_names_.nbFields = kNbFields;
  field_names_.fields = field_list_.data();
}

nvinfer1::IPluginV3* SelectiveScanPluginCreator::createPlugin(nvinfer1::AsciiChar const* name,
                                                              nvinfer1::PluginFieldCollection const* fc,
                                                              nvinfer1::TensorRTPhase /*phase*/) noexcept {
  try {
    std::string const node = name ? name : "";
    auto reject = [&node](std::string const& message) -> nvinfer1::IPluginV3* {
      log_error("mamba.SelectiveScan (node '" + node + "'): " + message);
      return nullptr;
    };
    ScanAttributes attributes;  // fields the node does not carry keep the ONNX default, 0
    for (int32_t i = 0; fc && i < fc->nbFields; ++i) {
      nvinfer1::PluginField const& field = fc->fields[i];
      std::string const field_name = field.name ? field.name : "";
      int index = 0;
      while (index < kNbFields && field_name != kFieldNames[index]) ++index;
      if (index == kNbFields) return reject("unknown attribute '" + field_name + "'");
      int64_t value;
      // The ONNX parser hands INT attributes over as kINT32; kINT64 is what Python callers may pass.
      if (field.type == nvinfer1::PluginFieldType::kINT32 && field.length == 1 && field.data) {
        value = *static_cast<int32_t const*>(field.data);
      } else if (field.type == nvinfer1::PluginFieldType::kINT64 && field.length == 1 && field.data) {
        value = *static_cast<int64_t const*>(field.data);
      } else {
        return reject("attribute " + field_name + " must be a single int (0 or 1)");
      }
      if (value != 0 && value != 1) {
        return reject("attribute " + field_name + " must be 0 or 1, got " + std::to_string(value));
      }
      attributes.*kFieldMembers[index] = static_cast<int32_t>(value);
    }
    return new SelectiveScanPlugin(node, attributes);
  } catch (std::exception const& e) {
    log_error(std::string("mamba.SelectiveScan: ") + e.what());
  } catch (...) {
  }
  return nullptr;
}

}  // namespace mamba_trt
