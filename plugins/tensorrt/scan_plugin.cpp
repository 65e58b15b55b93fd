// The plugin and creator shared by the scan ops (see scan_plugin.h).
#include "scan_plugin.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <iomanip>
#include <map>
#include <mutex>
#include <sstream>
#include <utility>

namespace mamba_trt {
namespace {

using nvinfer1::DataType;
using nvinfer1::Dims;

std::string symbol_name(char symbol) {
  switch (symbol) {
    case 'b': return "batch";
    case 'd': return "dim";
    default: return std::string(1, symbol);
  }
}

std::string shape_text(const char* symbols) {
  std::string text = "[";
  for (const char* s = symbols; *s; ++s) text += (s == symbols ? "" : ", ") + symbol_name(*s);
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

std::vector<int64_t> known_dims(Dims const& dims) { return std::vector<int64_t>(dims.d, dims.d + dims.nbDims); }

size_t rank(InputSpec const& spec) { return std::char_traits<char>::length(spec.symbols); }

std::string number_text(float value) {
  std::ostringstream text;
  text << std::setprecision(9) << value;
  return text.str();
}

std::string expected_outputs(int32_t nbOutputs) {
  return "expected 2 outputs (y, final_state), got " + std::to_string(nbOutputs);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Fields

Fields::Fields(std::vector<FieldSpec> const& specs) : specs_(specs), values_(specs.size()) {
  for (size_t i = 0; i < specs_.size(); ++i) {
    if (specs_[i].kind == FieldSpec::kFlag) {
      values_[i].flag = static_cast<int32_t>(specs_[i].default_value);
    } else {
      values_[i].number = specs_[i].default_value;
    }
  }
  describe();
}

// The serialized fields point into this object's values, so a copy builds its own.
Fields::Fields(Fields const& other) : specs_(other.specs_), values_(other.values_) { describe(); }

void Fields::describe() {
  list_.clear();
  std::string text;
  for (size_t i = 0; i < specs_.size(); ++i) {
    FieldSpec const& spec = specs_[i];
    if (spec.kind == FieldSpec::kFlag) {
      list_.emplace_back(spec.name, &values_[i].flag, nvinfer1::PluginFieldType::kINT32, 1);
      text += (i ? "," : "") + std::string(spec.name) + "=" + std::to_string(values_[i].flag);
    } else {
      list_.emplace_back(spec.name, &values_[i].number, nvinfer1::PluginFieldType::kFLOAT32, 1);
      text += (i ? "," : "") + std::string(spec.name) + "=" + number_text(values_[i].number);
    }
  }
  collection_.nbFields = static_cast<int32_t>(list_.size());
  collection_.fields = list_.data();
  text_ = std::move(text);
}

Fields::Value const& Fields::value(const char* name) const {
  for (size_t i = 0; i < specs_.size(); ++i) {
    if (std::string(specs_[i].name) == name) return values_[i];
  }
  static Value const none;  // not reached: the ops ask for their own fields only
  return none;
}

std::string Fields::set(nvinfer1::PluginField const& field) {
  std::string const name = field.name ? field.name : "";
  size_t index = 0;
  while (index < specs_.size() && name != specs_[index].name) ++index;
  if (index == specs_.size()) return "unknown attribute '" + name + "'";
  using Type = nvinfer1::PluginFieldType;
  bool const single = field.length == 1 && field.data;
  if (specs_[index].kind == FieldSpec::kFlag) {
    // The ONNX parser hands INT attributes over as kINT32; kINT64 is what Python callers may pass.
    int64_t value;
    if (single && field.type == Type::kINT32) {
      value = *static_cast<int32_t const*>(field.data);
    } else if (single && field.type == Type::kINT64) {
      value = *static_cast<int64_t const*>(field.data);
    } else {
      return "attribute " + name + " must be a single int (0 or 1)";
    }
    if (value != 0 && value != 1) return "attribute " + name + " must be 0 or 1, got " + std::to_string(value);
    values_[index].flag = static_cast<int32_t>(value);
  } else {
    // FLOAT attributes arrive as kFLOAT32; kFLOAT64 is what Python callers may pass.
    float value;
    if (single && field.type == Type::kFLOAT32) {
      value = *static_cast<float const*>(field.data);
    } else if (single && field.type == Type::kFLOAT64) {
      value = static_cast<float>(*static_cast<double const*>(field.data));
    } else {
      return "attribute " + name + " must be a single float";
    }
    if (std::isnan(value)) return "attribute " + name + " must not be NaN";
    values_[index].number = value;
  }
  describe();
  return {};
}

// ---------------------------------------------------------------------------------------
// ScanPlugin

ScanPlugin::ScanPlugin(OpSpec const& op, std::string name, Fields const& fields)
    : op_(op), name_(std::move(name)), fields_(fields) {
  for (size_t i = 0; i < op_.inputs.size(); ++i) {
    if (!op_.inputs[i].present_if || fields_.flag(op_.inputs[i].present_if)) present_.push_back(i);
  }
}

ScanPlugin::ScanPlugin(ScanPlugin const& other) : ScanPlugin(other.op_, other.name_, other.fields_) {
  recorder_ = other.recorder_;
}

nvinfer1::IPluginCapability* ScanPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* ScanPlugin::clone() noexcept {
  try {
    return new ScanPlugin(*this);
  } catch (...) {
    return nullptr;
  }
}

nvinfer1::IPluginV3* ScanPlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept {
  try {
    auto* plugin = new ScanPlugin(*this);
    plugin->recorder_ = context ? context->getErrorRecorder() : nullptr;
    return plugin;
  } catch (...) {
    return nullptr;
  }
}

int32_t ScanPlugin::fail(std::string const& message) const noexcept {
  try {
    std::string const text = "mamba." + std::string(op_.name) + " (node '" + name_ + "'): " + message;
    log_error(text);
    if (recorder_) recorder_->reportError(nvinfer1::ErrorCode::kINVALID_ARGUMENT, text.c_str());
  } catch (...) {
  }
  return 1;
}

template <typename Fn>
int32_t ScanPlugin::guarded(Fn&& fn) const noexcept {
  try {
    return fn();
  } catch (std::exception const& e) {
    return fail(e.what());
  } catch (...) {
    return fail("unknown error");
  }
}

std::pair<int, int> ScanPlugin::origin(char symbol) const {
  for (size_t i = 0; i < present_.size(); ++i) {
    const char* symbols = op_.inputs[present_[i]].symbols;
    for (int k = 0; symbols[k]; ++k) {
      if (symbols[k] == symbol) return {static_cast<int>(i), k};
    }
  }
  return {-1, -1};
}

std::string ScanPlugin::check(std::vector<std::vector<int64_t>> const& shapes, DataType const* types,
                              int32_t nbInputs) const {
  std::ostringstream problem;
  if (nbInputs != static_cast<int32_t>(present_.size())) {
    problem << "expected " << present_.size() << " inputs (";
    for (size_t i = 0; i < present_.size(); ++i) problem << (i ? ", " : "") << op_.inputs[present_[i]].name;
    problem << ") for " << fields_.text() << ", got " << nbInputs;
    return problem.str();
  }
  // Each symbol's size and the input it was first seen on.
  std::map<char, std::pair<int64_t, const char*>> seen;
  for (size_t i = 0; i < shapes.size(); ++i) {
    InputSpec const& spec = op_.inputs[present_[i]];
    std::vector<int64_t> const& shape = shapes[i];
    if (shape.size() != rank(spec)) {
      problem << spec.name << " must have shape " << shape_text(spec.symbols) << " (rank " << rank(spec)
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
  if (seen.count(op_.groups) && seen.count(op_.grouped)) {
    auto const [groups, groups_from] = seen[op_.groups];
    auto const [size, size_from] = seen[op_.grouped];
    if (groups < 1 || size % groups != 0) {
      problem << symbol_name(op_.grouped) << " (" << size << ", from " << size_from << ") must be a multiple of "
              << symbol_name(op_.groups) << " (" << groups << ", from " << groups_from << ")";
      return problem.str();
    }
  }
  if (types) {
    const char* first = op_.inputs[0].name;
    DataType const T = types[0];
    if (!is_activation_type(T)) {
      return std::string(first) + " must be float32, float16 or bfloat16, got " + type_name(T);
    }
    for (size_t i = 1; i < present_.size(); ++i) {
      InputSpec const& spec = op_.inputs[present_[i]];
      DataType const want = spec.activation ? T : DataType::kFLOAT;
      if (types[i] != want) {
        problem << spec.name << " must be " << type_name(want) << (spec.activation ? " (like " : "")
                << (spec.activation ? first : "") << (spec.activation ? ")" : "") << ", got " << type_name(types[i]);
        return problem.str();
      }
    }
  }
  return {};
}

// dims_of(i): the dimensions of packed input i. Without data, every pointer is a placeholder:
// the kernels' checks and workspace sizes read sizes and presence only.
template <typename DimsOf>
Binding bind_tensors(OpSpec const& op, std::vector<size_t> const& present, DimsOf&& dims_of, DataType type,
                     void const* const* inputs, void* const* outputs) {
  alignas(256) static unsigned char placeholder[256];
  Binding b;
  b.dtype = kernel_dtype(type);
  for (size_t i = present.size(); i-- > 0;) {  // backwards: a symbol's size from the first input that has it
    const char* symbols = op.inputs[present[i]].symbols;
    Dims const& dims = dims_of(i);
    for (int k = 0; symbols[k] && k < dims.nbDims; ++k) b.sizes[static_cast<unsigned char>(symbols[k]) & 127] = dims.d[k];
    b.inputs[present[i]] = inputs ? inputs[i] : placeholder;
  }
  b.outputs = {outputs ? outputs[0] : placeholder, outputs ? outputs[1] : placeholder};
  return b;
}

int32_t ScanPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                       int32_t nbInputs) const noexcept {
  return guarded([&] {
    if (nbOutputs != 2) return fail(expected_outputs(nbOutputs));
    std::string const problem = check({}, inputTypes, nbInputs);
    if (!problem.empty()) return fail(problem);
    outputTypes[0] = inputTypes[0];
    outputTypes[1] = DataType::kFLOAT;
    return 0;
  });
}

int32_t ScanPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                                    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t nbShapeInputs,
                                    nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                                    nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
  return guarded([&] {
    if (nbShapeInputs != 0) return fail("takes no shape inputs, got " + std::to_string(nbShapeInputs));
    if (nbOutputs != 2) return fail(expected_outputs(nbOutputs));
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
    outputs[0] = inputs[0];  // y: the shape of the first input
    outputs[1].nbDims = static_cast<int32_t>(std::char_traits<char>::length(op_.final_state));
    for (int32_t k = 0; k < outputs[1].nbDims; ++k) {
      auto const [input, dim] = origin(op_.final_state[k]);
      outputs[1].d[k] = inputs[input].d[dim];
    }
    return 0;
  });
}

bool ScanPlugin::supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut,
                                           int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (nbInputs != static_cast<int32_t>(present_.size()) || nbOutputs != 2 || pos < 0 || pos >= nbInputs + nbOutputs) {
    return false;
  }
  nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
  if (desc.format != nvinfer1::TensorFormat::kLINEAR) return false;
  if (pos == 0) return is_activation_type(desc.type);
  bool const activation = pos < nbInputs ? op_.inputs[present_[pos]].activation : pos == nbInputs;  // y, final_state
  return desc.type == (activation ? inOut[0].desc.type : DataType::kFLOAT);
}

// The shared part of configurePlugin and onShapeChange: the contract check of the tensors
// desc(i) (a PluginTensorDesc), then the kernels' limits for the sizes dims(i).
template <typename Desc, typename DimsOf>
int32_t ScanPlugin::check_tensors(int32_t nbInputs, int32_t nbOutputs, Desc&& desc, DimsOf&& dims,
                                  const char* limit_context) const noexcept {
  return guarded([&] {
    if (nbOutputs != 2) return fail(expected_outputs(nbOutputs));
    std::vector<std::vector<int64_t>> shapes;
    std::vector<DataType> types;
    for (int32_t i = 0; i < nbInputs; ++i) {
      shapes.push_back(known_dims(desc(i).dims));
      types.push_back(desc(i).type);
    }
    std::string const problem = check(shapes, types.data(), nbInputs);
    if (!problem.empty()) return fail(problem);
    Binding const sizes = bind_tensors(op_, present_, dims, desc(0).type, nullptr, nullptr);
    if (const char* limit = op_.kernels.check(fields_, sizes)) return fail(limit_context + std::string(limit));
    return 0;
  });
}

int32_t ScanPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                    nvinfer1::DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
  return check_tensors(
      nbInputs, nbOutputs, [&](size_t i) -> nvinfer1::PluginTensorDesc const& { return in[i].desc; },
      [&](size_t i) -> Dims const& { return in[i].max; },
      "the largest shapes of this optimisation profile exceed the CUDA kernels: ");
}

// TensorRT reserves one workspace for every shape of the profile, while the kernels' need
// follows their plan for each shape (and the device), which need not grow with the shapes:
// the SSD scan splits long sequences into more segments when the batch is too small to fill
// the GPU. So the size is the largest over every combination of the profile's dynamic
// sizes (batch and sequence length), remembered per op, fields, type and profile.
size_t ScanPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/,
                                    int32_t /*nbOutputs*/) const noexcept {
  try {
    if (nbInputs != static_cast<int32_t>(present_.size())) return 0;
    Binding b = bind_tensors(op_, present_, [&](size_t i) -> Dims const& { return inputs[i].max; },
                             inputs[0].desc.type, nullptr, nullptr);
    std::vector<std::array<int64_t, 3>> ranges;  // symbol, min, max of each dynamic size
    std::string key = std::string(op_.name) + ";" + fields_.text() + ";" + std::to_string(b.dtype);
    for (unsigned char symbol = 0; symbol < 128; ++symbol) {
      auto const [input, dim] = origin(static_cast<char>(symbol));
      if (input < 0) continue;
      int64_t const low = inputs[input].min.d[dim], high = inputs[input].max.d[dim];
      key += ";" + std::to_string(symbol) + ":" + std::to_string(low) + ".." + std::to_string(high);
      if (0 <= low && low < high) ranges.push_back({symbol, low, high});
    }
    static std::mutex mutex;
    static std::map<std::string, size_t> known;
    std::lock_guard<std::mutex> lock(mutex);
    if (auto const it = known.find(key); it != known.end()) return it->second;
    for (auto const& [symbol, low, high] : ranges) b.sizes[symbol] = low;
    size_t largest = 0;
    for (;;) {
      largest = std::max(largest, op_.kernels.workspace_size(fields_, b));
      size_t r = 0;  // the next combination, like an odometer
      while (r < ranges.size() && b.sizes[ranges[r][0]] == ranges[r][2]) b.sizes[ranges[r][0]] = ranges[r][1], ++r;
      if (r == ranges.size()) break;
      ++b.sizes[ranges[r][0]];
    }
    known.emplace(key, largest);
    return largest;
  } catch (...) {
    log_error("mamba." + std::string(op_.name) + " (node '" + name_ + "'): out of memory sizing the workspace");
    return 0;
  }
}

int32_t ScanPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
                                  nvinfer1::PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
  return check_tensors(
      nbInputs, nbOutputs, [&](size_t i) -> nvinfer1::PluginTensorDesc const& { return in[i]; },
      [&](size_t i) -> Dims const& { return in[i].dims; }, "");
}

int32_t ScanPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* /*outputDesc*/,
                            void const* const* inputs, void* const* outputs, void* workspace,
                            cudaStream_t stream) noexcept {
  return guarded([&] {
    Binding const b = bind_tensors(op_, present_, [&](size_t i) -> Dims const& { return inputDesc[i].dims; },
                                   inputDesc[0].type, inputs, outputs);
    int const status = op_.kernels.run(fields_, b, workspace, stream);
    if (status == 0) return 0;
    const char* why = op_.kernels.check(fields_, b);
    return fail(why ? why : "the CUDA kernel launch failed (cudaError_t " + std::to_string(status) + ")");
  });
}

// ---------------------------------------------------------------------------------------
// ScanPluginCreator

ScanPluginCreator::ScanPluginCreator(OpSpec const& op) : op_(op) {
  Fields const defaults(op_.fields);
  nvinfer1::PluginFieldCollection const* fields = defaults.collection();
  for (int32_t i = 0; i < fields->nbFields; ++i) {
    field_list_.emplace_back(fields->fields[i].name, nullptr, fields->fields[i].type, 1);
  }
  field_names_.nbFields = static_cast<int32_t>(field_list_.size());
  field_names_.fields = field_list_.data();
}

nvinfer1::IPluginV3* ScanPluginCreator::createPlugin(nvinfer1::AsciiChar const* name,
                                                     nvinfer1::PluginFieldCollection const* fc,
                                                     nvinfer1::TensorRTPhase /*phase*/) noexcept {
  std::string const node = name ? name : "";
  try {
    auto reject = [&](std::string const& message) -> nvinfer1::IPluginV3* {
      log_error("mamba." + std::string(op_.name) + " (node '" + node + "'): " + message);
      return nullptr;
    };
    Fields fields(op_.fields);  // fields the node does not carry keep the ONNX default
    for (int32_t i = 0; fc && i < fc->nbFields; ++i) {
      std::string const problem = fields.set(fc->fields[i]);
      if (!problem.empty()) return reject(problem);
    }
    if (op_.check_fields) {
      std::string const problem = op_.check_fields(fields);
      if (!problem.empty()) return reject(problem);
    }
    return new ScanPlugin(op_, node, fields);
  } catch (std::exception const& e) {
    log_error("mamba." + std::string(op_.name) + " (node '" + node + "'): " + e.what());
  } catch (...) {
  }
  return nullptr;
}

}  // namespace mamba_trt
