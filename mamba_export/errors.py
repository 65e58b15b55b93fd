"""Errors a user can act on. The CLI prints them as one line, without a traceback.

Messages name the command line's options (--overwrite, --max-batch), also where a Python
function raises them: its keyword arguments have the same names (overwrite=True, max_batch).
Only functions that no command calls (save_pretrained) name their keywords.
"""

import contextlib


class MambaExportError(Exception):
    """Base class of the errors mamba_export raises for bad input or a missing dependency."""


class CheckpointError(MambaExportError):
    """A checkpoint cannot be read: missing or corrupt file, bad config, wrong tensors."""


class MissingDependencyError(MambaExportError):
    """An optional package (onnxruntime, TensorRT, ...) is needed and not installed."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or "" (torch.export's and ONNX Runtime's run long)."""
    return (str(error).strip().splitlines() or [""])[0]


@contextlib.contextmanager
def errors_as_one_line(what: str):
    """Any error but a MambaExportError becomes one: ``what``, the error's type and the first
    line of its message; the cause stays chained."""
    try:
        yield
    except MambaExportError:
        raise
    except Exception as e:
        raise MambaExportError(f"{what}: {type(e).__name__}: {first_line(e)}") from e
