// Test driver for libmamba_trt.so without TensorRT (tests/test_tensorrt.py): loads the
// library the way TensorRT does (dlopen, setLoggerFinder, getCreators) and calls the plugin's
// build-time and serialization methods through TensorRT's public interfaces. The few
// TensorRT-owned objects those methods receive (dimension expressions, a logger) are
// implemented here from the public headers. A C ABI for ctypes.
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

std::string last_error;

class RecordingLogger : public ILogger {
 public:
  void log(Severity severity, AsciiChar const* msg) noexcept override {
    if (severity <= Severity::kERROR) last_error = msg;
  }
} logger;

class Finder : public ILoggerFinder {
 public:
  ILogger* findLogger() override { return &logger; }
} finder;

// A dimension expression: a constant, or a run-time dimension known by its (negative) id.
class ExprImpl : public apiv::VDimensionExpr {
 public:
  ExprImpl(int64_t value, bool constant) : value_(value), constant_(constant) {}
  bool isConstant() const override { return constant_; }
  int64_t getConstantValue() const override { return constant_ ? value_ : -1; }
  bool isSizeTensor() const override { return false; }
  int64_t value_;
  bool constant_;
};

class Expr : public IDimensionExpr {
 public:
  Expr(int64_t value, bool constant) : impl_(value, constant) { mImpl = &impl_; }
  ~Expr() noexcept override = default;
  int64_t id() const { return impl_.value_; }

 private:
  ExprImpl impl_;
};

std::deque<Expr> expressions;

class BuilderImpl : public apiv::VExprBuilder {
 public:
  IDimensionExpr const* constant(int64_t value) override { return &expressions.emplace_back(value, true); }
  IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override {
    return nullptr;
  }
  IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
    return nullptr;
  }
} builder_impl;

class ExprBuilder : public IExprBuilder {
 public:
  ExprBuilder() { mImpl = &builder_impl; }
  ~ExprBuilder() noexcept override = default;
};

std::vector<IPluginCreatorV3One*> creators;
IPluginCreatorV3One* creator = nullptr;  // the one probe_use chose

IPluginCreatorV3One* find_creator(char const* name) {
  for (IPluginCreatorV3One* c : creators) {
    if (std::strcmp(c->getPluginName(), name) == 0 && std::strcmp(c->getPluginVersion(), "1") == 0 &&
        std::strcmp(c->getPluginNamespace(), "") == 0) {
      return c;
    }
  }
  return nullptr;
}

IPluginV3OneBuild* build(void* plugin) {
  return static_cast<IPluginV3OneBuild*>(static_cast<IPluginV3*>(plugin)->getCapabilityInterface(PluginCapabilityType::kBUILD));
}

IPluginV3OneRuntime* runtime(void* plugin) {
  return static_cast<IPluginV3OneRuntime*>(
      static_cast<IPluginV3*>(plugin)->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
}

Dims make_dims(int rank, int64_t const* values) {
  Dims dims{};
  dims.nbDims = rank;
  for (int k = 0; k < rank; ++k) dims.d[k] = values[k];
  return dims;
}

int copy_out(std::string const& text, char* out, int size) {
  std::snprintf(out, size, "%s", text.c_str());
  return static_cast<int>(text.size());
}

}  // namespace

extern "C" {

// Loads the plugin library; writes one line "kind|name|version|namespace|field:type:length,..."
// per creator and returns the number of creators (-1 when an entry point is missing).
int probe_load(char const* path, char* info, int size) {
  void* library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!library) return copy_out(dlerror(), info, size), -1;
  auto set_finder = reinterpret_cast<void (*)(ILoggerFinder*)>(dlsym(library, "setLoggerFinder"));
  auto get_creators = reinterpret_cast<IPluginCreatorInterface* const* (*)(int32_t&)>(dlsym(library, "getCreators"));
  if (!set_finder || !get_creators) return copy_out("missing entry point", info, size), -1;
  set_finder(&finder);
  int32_t count = 0;
  IPluginCreatorInterface* const* found = get_creators(count);
  std::string text;
  for (int32_t c = 0; c < count; ++c) {
    std::string const kind = found[c]->getInterfaceInfo().kind;
    text += std::string(c ? "\n" : "") + kind;
    if (kind != "PLUGIN CREATOR_V3ONE") continue;  // not an IPluginCreatorV3One: nothing more to ask
    auto* v3 = static_cast<IPluginCreatorV3One*>(found[c]);
    creators.push_back(v3);
    text += std::string("|") + v3->getPluginName() + "|" +
            v3->getPluginVersion() + "|" + v3->getPluginNamespace() + "|";
    PluginFieldCollection const* fields = v3->getFieldNames();
    for (int i = 0; i < fields->nbFields; ++i) {
      text += std::string(i ? "," : "") + fields->fields[i].name + ":" +
              std::to_string(static_cast<int>(fields->fields[i].type)) + ":" + std::to_string(fields->fields[i].length);
    }
  }
  copy_out(text, info, size);
  return count;
}

// Makes the creator of plugin `name` the one probe_create uses, as TensorRT's registry looks
// it up (name, version "1", namespace ""); 0 when found.
int probe_use(char const* name) {
  creator = find_creator(name);
  return creator ? 0 : -1;
}

char const* probe_last_error() { return last_error.c_str(); }

// Creates a plugin from fields given as values of PluginFieldType `types`: kINT32, kINT64,
// kFLOAT32, kFLOAT64, anything else sent as one int32; phase 0 = build, 1 = runtime.
void* probe_create(char const* name, int nb_fields, char const* const* names, double const* values, int const* types,
                   int phase) {
  last_error.clear();
  std::vector<int32_t> int32s(values, values + nb_fields);
  std::vector<int64_t> int64s(values, values + nb_fields);
  std::vector<float> floats(values, values + nb_fields);
  std::vector<PluginField> fields;
  for (int i = 0; i < nb_fields; ++i) {
    auto type = static_cast<PluginFieldType>(types[i]);
    void const* data = type == PluginFieldType::kINT64     ? static_cast<void const*>(&int64s[i])
                       : type == PluginFieldType::kFLOAT32 ? static_cast<void const*>(&floats[i])
                       : type == PluginFieldType::kFLOAT64 ? static_cast<void const*>(&values[i])
                                                           : static_cast<void const*>(&int32s[i]);
    fields.emplace_back(names[i], data, type, 1);
  }
  PluginFieldCollection collection{nb_fields, fields.data()};
  return creator->createPlugin(name, &collection, phase ? TensorRTPhase::kRUNTIME : TensorRTPhase::kBUILD);
}

void probe_destroy(void* plugin) { delete static_cast<IPluginV3*>(plugin); }

// Which capability interfaces the plugin has: bit 0 core, 1 build, 2 runtime.
int probe_capabilities(void* plugin) {
  auto* p = static_cast<IPluginV3*>(plugin);
  return (p->getCapabilityInterface(PluginCapabilityType::kCORE) ? 1 : 0) |
         (p->getCapabilityInterface(PluginCapabilityType::kBUILD) ? 2 : 0) |
         (p->getCapabilityInterface(PluginCapabilityType::kRUNTIME) ? 4 : 0);
}

// "name:type=value,..." of getFieldsToSerialize: a kINT32 in decimal, a kFLOAT32 as a C99
// hexadecimal float (exact), "?" for anything that is not one value of these types.
int probe_serialized(void* plugin, char* out, int size) {
  PluginFieldCollection const* fields = runtime(plugin)->getFieldsToSerialize();
  std::string text;
  for (int i = 0; i < fields->nbFields; ++i) {
    PluginField const& f = fields->fields[i];
    char value[64] = "?";
    if (f.length == 1 && f.type == PluginFieldType::kINT32) {
      std::snprintf(value, sizeof value, "%d", *static_cast<int32_t const*>(f.data));
    } else if (f.length == 1 && f.type == PluginFieldType::kFLOAT32) {
      std::snprintf(value, sizeof value, "%a", static_cast<double>(*static_cast<float const*>(f.data)));
    }
    text += std::string(i ? "," : "") + f.name + ":" + std::to_string(static_cast<int>(f.type)) + "=" + value;
  }
  return copy_out(text, out, size);
}

// The plugin TensorRT would deserialize: the creator registered under the plugin's name,
// createPlugin(kRUNTIME) from the serialized fields.
void* probe_deserialize(void* plugin) {
  auto* core = static_cast<IPluginV3OneCore*>(static_cast<IPluginV3*>(plugin)->getCapabilityInterface(PluginCapabilityType::kCORE));
  IPluginCreatorV3One* registered = find_creator(core->getPluginName());
  return registered ? registered->createPlugin("deserialized", runtime(plugin)->getFieldsToSerialize(),
                                               TensorRTPhase::kRUNTIME)
                    : nullptr;
}

int probe_timing_cache_id(void* plugin, char* out, int size) {
  char const* id = build(plugin)->getTimingCacheID();
  return copy_out(id ? id : "(null)", out, size);
}

// getOutputShapes on inputs of the given ranks; a dimension >= 0 is a constant, < 0 a
// run-time dimension named by that id. Writes both outputs' ranks and dimensions the same way.
int probe_output_shapes(void* plugin, int nb_inputs, int const* ranks, int64_t const* dims, int* out_ranks,
                        int64_t* out_dims) {
  last_error.clear();
  std::vector<DimsExprs> inputs(nb_inputs);
  for (int i = 0, flat = 0; i < nb_inputs; ++i) {
    inputs[i].nbDims = ranks[i];
    for (int k = 0; k < ranks[i]; ++k, ++flat) inputs[i].d[k] = &expressions.emplace_back(dims[flat], dims[flat] >= 0);
  }
  DimsExprs outputs[2]{};
  ExprBuilder expr_builder;
  int const status = build(plugin)->getOutputShapes(inputs.data(), nb_inputs, nullptr, 0, outputs, 2, expr_builder);
  for (int o = 0; o < 2; ++o) {
    out_ranks[o] = outputs[o].nbDims;
    for (int k = 0; k < outputs[o].nbDims; ++k) {
      out_dims[o * 8 + k] = outputs[o].d[k] ? static_cast<Expr const*>(outputs[o].d[k])->id() : INT64_MIN;
    }
  }
  return status;
}

int probe_output_types(void* plugin, int nb_inputs, int const* types, int* out) {
  last_error.clear();
  std::vector<DataType> in(nb_inputs);
  for (int i = 0; i < nb_inputs; ++i) in[i] = static_cast<DataType>(types[i]);
  DataType result[2] = {DataType::kINT8, DataType::kINT8};
  int const status = build(plugin)->getOutputDataTypes(result, 2, in.data(), nb_inputs);
  out[0] = static_cast<int>(result[0]);
  out[1] = static_cast<int>(result[1]);
  return status;
}

// supportsFormatCombination(pos) with nb_inputs inputs and 2 outputs of these types/formats.
int probe_supports(void* plugin, int pos, int nb_inputs, int const* types, int const* formats) {
  std::vector<DynamicPluginTensorDesc> in_out(nb_inputs + 2);
  for (int i = 0; i < nb_inputs + 2; ++i) {
    in_out[i].desc.type = static_cast<DataType>(types[i]);
    in_out[i].desc.format = static_cast<TensorFormat>(formats[i]);
  }
  return build(plugin)->supportsFormatCombination(pos, in_out.data(), nb_inputs, 2);
}

// configurePlugin with desc.dims = dims (-1 = run-time dimension) and max = max_dims.
int probe_configure(void* plugin, int nb_inputs, int const* ranks, int64_t const* dims, int64_t const* max_dims,
                    int const* types) {
  last_error.clear();
  std::vector<DynamicPluginTensorDesc> in(nb_inputs), out(2);
  for (int i = 0, flat = 0; i < nb_inputs; flat += ranks[i], ++i) {
    in[i].desc.dims = make_dims(ranks[i], dims + flat);
    in[i].desc.type = static_cast<DataType>(types[i]);
    in[i].desc.format = TensorFormat::kLINEAR;
    in[i].min = in[i].opt = in[i].max = make_dims(ranks[i], max_dims + flat);
  }
  return build(plugin)->configurePlugin(in.data(), nb_inputs, out.data(), 2);
}

// getWorkspaceSize for a profile from min_dims to max_dims.
size_t probe_workspace(void* plugin, int nb_inputs, int const* ranks, int64_t const* min_dims, int64_t const* max_dims,
                       int const* types) {
  std::vector<DynamicPluginTensorDesc> in(nb_inputs), out(2);
  for (int i = 0, flat = 0; i < nb_inputs; flat += ranks[i], ++i) {
    in[i].min = make_dims(ranks[i], min_dims + flat);
    in[i].opt = in[i].max = in[i].desc.dims = make_dims(ranks[i], max_dims + flat);
    in[i].desc.type = static_cast<DataType>(types[i]);
    in[i].desc.format = TensorFormat::kLINEAR;
  }
  return build(plugin)->getWorkspaceSize(in.data(), nb_inputs, out.data(), 2);
}

// onShapeChange with concrete dimensions.
int probe_shape_change(void* plugin, int nb_inputs, int const* ranks, int64_t const* dims, int const* types) {
  last_error.clear();
  std::vector<PluginTensorDesc> in(nb_inputs), out(2);
  for (int i = 0, flat = 0; i < nb_inputs; flat += ranks[i], ++i) {
    in[i].dims = make_dims(ranks[i], dims + flat);
    in[i].type = static_cast<DataType>(types[i]);
    in[i].format = TensorFormat::kLINEAR;
  }
  return runtime(plugin)->onShapeChange(in.data(), nb_inputs, out.data(), 2);
}

}  // extern "C"
