# ONNX Runtime's C/C++ API headers, as the INTERFACE target onnxruntime_headers.
#
# The op library only needs the headers: the onnxruntime that loads it hands over the API
# table at run time. ORT_INCLUDE_DIR (CMake cache variable or environment variable) names
# a directory holding onnxruntime_cxx_api.h; without it, Debian's libonnxruntime-dev
# (headers of ORT 1.21) is downloaded once into the build directory and unpacked there,
# nothing is installed.
set(ORT_INCLUDE_DIR "" CACHE PATH
    "Directory with onnxruntime_cxx_api.h (default: download Debian's libonnxruntime-dev into the build directory)")

set(_ort_include "${ORT_INCLUDE_DIR}")
if(NOT _ort_include AND DEFINED ENV{ORT_INCLUDE_DIR})
  set(_ort_include "$ENV{ORT_INCLUDE_DIR}")
endif()

if(_ort_include)
  if(NOT EXISTS "${_ort_include}/onnxruntime_cxx_api.h")
    message(FATAL_ERROR "ORT_INCLUDE_DIR=${_ort_include} has no onnxruntime_cxx_api.h")
  endif()
else()
  set(_deb_name libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb)
  set(_deb_url http://deb.debian.org/debian/pool/main/o/onnxruntime/${_deb_name})
  set(_deb_sha256 14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08)
  set(_dir ${CMAKE_BINARY_DIR}/onnxruntime-headers)
  set(_ort_include ${_dir}/usr/include/onnxruntime)
  set(_deb ${_dir}/${_deb_name})
  if(NOT EXISTS "${_ort_include}/onnxruntime_cxx_api.h")
    set(_have "")
    if(EXISTS ${_deb})
      file(SHA256 ${_deb} _have)
    endif()
    if(NOT _have STREQUAL _deb_sha256)
      message(STATUS "mamba_export: downloading ONNX Runtime headers (${_deb_url})")
      file(DOWNLOAD ${_deb_url} ${_deb}.part STATUS _status)
      list(GET _status 0 _code)
      list(GET _status 1 _reason)
      if(_code EQUAL 0)
        file(SHA256 ${_deb}.part _have)
        if(NOT _have STREQUAL _deb_sha256)
          set(_code 1)
          set(_reason "SHA256 ${_have}, expected ${_deb_sha256}")
        endif()
      endif()
      if(NOT _code EQUAL 0)
        file(REMOVE ${_deb}.part)
        message(FATAL_ERROR
          "Could not download the ONNX Runtime headers from ${_deb_url}: ${_reason}\n"
          "Set ORT_INCLUDE_DIR to a directory holding onnxruntime_cxx_api.h (ONNX Runtime >= 1.17), for example "
          "/usr/include/onnxruntime after `apt install libonnxruntime-dev`, or the include/ folder of an "
          "onnxruntime release archive: `ORT_INCLUDE_DIR=... make native`.")
      endif()
      file(RENAME ${_deb}.part ${_deb})
    endif()
    # A .deb is an ar archive holding data.tar.*; CMake's libarchive reads both.
    file(ARCHIVE_EXTRACT INPUT ${_deb} DESTINATION ${_dir}/deb)
    file(GLOB _data ${_dir}/deb/data.tar.*)
    file(ARCHIVE_EXTRACT INPUT ${_data} DESTINATION ${_dir} PATTERNS usr/include/onnxruntime)
    if(NOT EXISTS "${_ort_include}/onnxruntime_cxx_api.h")
      message(FATAL_ERROR "${_deb_name} did not contain usr/include/onnxruntime/onnxruntime_cxx_api.h; "
                          "set ORT_INCLUDE_DIR to a directory holding the ONNX Runtime headers")
    endif()
  endif()
endif()

# The custom-op API the library uses (CreateKernelV2, KernelContext_ParallelFor, shape
# inference) arrived in C API version 17 (ORT 1.17).
file(STRINGS "${_ort_include}/onnxruntime_c_api.h" _version_line REGEX "^#define ORT_API_VERSION [0-9]+")
string(REGEX REPLACE "^#define ORT_API_VERSION ([0-9]+).*" "\\1" _ort_api_version "${_version_line}")
if(NOT _ort_api_version OR _ort_api_version LESS 17)
  message(FATAL_ERROR "ONNX Runtime headers in ${_ort_include} have C API version '${_ort_api_version}'; need >= 17")
endif()
message(STATUS "mamba_export: ONNX Runtime headers ${_ort_include} (C API version ${_ort_api_version})")

add_library(onnxruntime_headers INTERFACE)
# SYSTEM: ORT's headers are not held to this project's warning flags.
target_include_directories(onnxruntime_headers SYSTEM INTERFACE ${_ort_include})
