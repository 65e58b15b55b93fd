"""What mamba_export.native says when a native library is missing: what its build needs
beyond `make native`, which otherwise succeeds and skips the library (plugins/CMakeLists.txt)."""

import re
from pathlib import Path

import pytest

from mamba_export import native
from mamba_export.errors import MissingDependencyError

ROOT = Path(__file__).resolve().parents[1]

# The library, its override variable, and the CMake variables without which it is not built.
NEEDS = {
    "kernels": (native.kernels_library, "MAMBA_EXPORT_KERNELS_LIBRARY", ["MAMBA_EXPORT_CUDA"]),
    "tensorrt plugin": (native.tensorrt_plugin_library, "MAMBA_EXPORT_TRT_PLUGIN",
                        ["MAMBA_EXPORT_CUDA", "TENSORRT_INCLUDE_DIR"]),
}


@pytest.mark.parametrize("name", list(NEEDS))
def test_a_missing_library_names_what_its_build_needs(name, monkeypatch, tmp_path):
    library, env, variables = NEEDS[name]
    monkeypatch.setattr(native, "LIB_DIR", tmp_path)
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(MissingDependencyError) as error:
        library()
    message = str(error.value)
    cmake = (ROOT / "plugins" / "CMakeLists.txt").read_text()
    for variable in variables:
        assert variable in cmake and variable in message, message
    assert "nvcc" in message and env in message, message
    for doc, section in re.findall(r"\((docs/\S+), '([^']+)'\)", message):  # the pointers lead somewhere
        assert f"\n## {section}\n" in (ROOT / doc).read_text()
