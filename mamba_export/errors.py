"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class MambaExportError(Exception):
    """Base class of the errors mamba_export raises for bad input or a missing dependency."""


class CheckpointError(MambaExportError):
    """A checkpoint cannot be read: missing or corrupt file, bad config, wrong tensors."""


class MissingDependencyError(MambaExportError):
    """An optional package (onnxruntime, TensorRT, ...) is needed and not installed."""
