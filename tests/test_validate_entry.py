"""`mamba-export validate --entry` asks once, before exporting, whether the backend can run
here: a backend that cannot is the one-line error, and no export directory is made."""

import sys

import pytest

from mamba_export import validate_module
from mamba_export.backends.factory import backend_unavailable
from mamba_export.cli import main
from mamba_export.intercept import uninstall_mamba_ssm_shim

VISION = ("validate", "--entry", "module_models:build_vision", "--input-shape", "1,3,16,12", "-q")


@pytest.fixture
def cli(capsys):
    """main(argv) -> (exit status, stdout, stderr)."""

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    uninstall_mamba_ssm_shim()  # the entry point installed it; other test modules must not see a mamba_ssm


@pytest.mark.parametrize("backend", ["ort-cuda", "trt"])
def test_a_backend_that_cannot_run_here_is_refused_before_the_export(cli, tmp_path, backend):
    reason = backend_unavailable(backend)
    if reason is None:
        pytest.skip(f"{backend} runs here")
    code, out, err = cli(*VISION, "--backend", backend, "--onnx", tmp_path / "onnx")
    assert (code, out, err) == (2, "", f"mamba-export validate: error: backend {backend}: {reason}\n")
    assert not (tmp_path / "onnx").exists(), "nothing is exported for a backend that cannot run"


@pytest.mark.parametrize("backend", list(validate_module.MODULE_BACKENDS))
def test_every_backend_is_asked_once_before_the_export(cli, monkeypatch, tmp_path, backend):
    """Wherever the tests run (with a GPU or not): a stub says no."""
    asked = []
    monkeypatch.setattr(validate_module, "backend_unavailable", lambda *args: asked.append(args) or "no such thing")
    monkeypatch.setattr(validate_module, "export_module", lambda *_, **__: pytest.fail("exported"))
    code, out, err = cli(*VISION, "--backend", backend, "--onnx", tmp_path / "onnx")
    assert (code, out, err) == (2, "", f"mamba-export validate: error: backend {backend}: no such thing\n")
    assert asked == [(backend,)] and not (tmp_path / "onnx").exists()


def test_ort_without_its_custom_op_library_is_refused_before_the_export(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("MAMBA_EXPORT_ORT_LIBRARY", str(tmp_path / "missing.so"))
    code, out, err = cli(*VISION, "--backend", "ort", "--onnx", tmp_path / "onnx")
    assert (code, out) == (2, "")
    assert err == f"mamba-export validate: error: backend ort: MAMBA_EXPORT_ORT_LIBRARY={tmp_path / 'missing.so'}: no such file\n"
    assert not (tmp_path / "onnx").exists()


@pytest.mark.parametrize("backend", ["ort", "ort-portable", "ort-cuda"])
def test_without_onnxruntime_the_reason_says_how_to_install_it(monkeypatch, backend):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    assert backend_unavailable(backend).startswith("onnxruntime is not installed: pip install onnxruntime")
