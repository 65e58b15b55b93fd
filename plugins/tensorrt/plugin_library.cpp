// The entry points TensorRT looks up in a dynamically loaded plugin library
// (IPluginRegistry::loadLibrary, `trtexec --dynamicPlugins`, `--setPluginsToSerialize`):
// getCreators hands over the creators, setLoggerFinder gives the library TensorRT's logger.
#include <atomic>
#include <cstdio>

#include "scan_plugin.h"

#define MAMBA_TRT_EXPORT extern "C" __attribute__((visibility("default")))

namespace mamba_trt {
namespace {
std::atomic<nvinfer1::ILoggerFinder*> logger_finder{nullptr};
}  // namespace

void log_error(std::string const& message) noexcept {
  nvinfer1::ILoggerFinder* finder = logger_finder.load();
  nvinfer1::ILogger* logger = finder ? finder->findLogger() : nullptr;
  if (logger) {
    logger->log(nvinfer1::ILogger::Severity::kERROR, message.c_str());
  } else {
    std::fprintf(stderr, "%s\n", message.c_str());
  }
}

}  // namespace mamba_trt

MAMBA_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static mamba_trt::ScanPluginCreator selective_scan(mamba_trt::selective_scan_op());
  static mamba_trt::ScanPluginCreator ssd_scan(mamba_trt::ssd_scan_op());
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&selective_scan, &ssd_scan};
  nbCreators = 2;
  return creators;
}

MAMBA_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) { mamba_trt::logger_finder.store(finder); }
