"""CUDA kernel of ``mamba::selective_scan``: the shared kernels (plugins/kernels/cuda,
libmamba_kernels.so) called through their C ABI with ctypes.

Registering the kernel touches no GPU and loads nothing; the library is loaded the first
time the op runs on CUDA tensors, so machines without a GPU never open it. The call only
allocates outputs with torch and enqueues on torch's current stream (no host sync), so it
can be captured in a CUDA graph.
"""

from __future__ import annotations

import ctypes
import threading
import warnings

import torch

from ..errors import MissingDependencyError
from ..native import kernels_library
from .contract import ContractError, check_selective_scan
from .selective_scan import selective_scan, selective_scan_reference

_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # mamba_dtype


class ScanParams(ctypes.Structure):
    """mamba_selective_scan_params of plugins/include/mamba_kernels.h."""

    _fields_ = [
        ("batch", ctypes.c_int64),
        ("dim", ctypes.c_int64),
        ("seqlen", ctypes.c_int64),
        ("dstate", ctypes.c_int64),
        ("groups", ctypes.c_int64),
        ("dtype", ctypes.c_int),
        ("u", ctypes.c_void_p),
        ("delta", ctypes.c_void_p),
        ("A", ctypes.c_void_p),
        ("B", ctypes.c_void_p),
        ("C", ctypes.c_void_p),
        ("D", ctypes.c_void_p),
        ("z", ctypes.c_void_p),
        ("delta_bias", ctypes.c_void_p),
        ("initial_state", ctypes.c_void_p),
        ("delta_softplus", ctypes.c_int),
        ("y", ctypes.c_void_p),
        ("final_state", ctypes.c_void_p),
    ]


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_missing: str | None = None  # why the library could not be loaded, once known


def load_library() -> ctypes.CDLL:
    """The kernel library with its C signatures (loaded once). Raises MissingDependencyError."""
    global _lib
    with _lock:
        if _lib is None:
            lib = ctypes.CDLL(kernels_library())
            params = ctypes.POINTER(ScanParams)
            lib.mamba_selective_scan_cuda_check.argtypes = [params]
            lib.mamba_selective_scan_cuda_check.restype = ctypes.c_char_p
            lib.mamba_selective_scan_cuda_workspace_size.argtypes = [params]
            lib.mamba_selective_scan_cuda_workspace_size.restype = ctypes.c_size_t
            lib.mamba_selective_scan_cuda.argtypes = [params, ctypes.c_void_p, ctypes.c_void_p]
            lib.mamba_selective_scan_cuda.restype = ctypes.c_int
            _lib = lib
        return _lib


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def scan_params(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, y, final_state) -> ScanParams:
    """The parameter block for contiguous tensors (outputs y and final_state included)."""
    batch, dim, length = u.shape
    return ScanParams(
        batch, dim, length, A.shape[1], B.shape[1], _DTYPES[u.dtype],
        _ptr(u), _ptr(delta), _ptr(A), _ptr(B), _ptr(C), _ptr(D), _ptr(z), _ptr(delta_bias), _ptr(initial_state),
        int(bool(delta_softplus)), _ptr(y), _ptr(final_state),
    )  # fmt: skip


def launch(lib: ctypes.CDLL, params: ScanParams, device: torch.device) -> None:
    """Checks the block and enqueues the scan on the current stream of `device`."""
    message = lib.mamba_selective_scan_cuda_check(ctypes.byref(params))
    if message:
        raise ContractError(message.decode())
    workspace = None
    size = lib.mamba_selective_scan_cuda_workspace_size(ctypes.byref(params))
    if size:
        workspace = torch.empty(size, dtype=torch.uint8, device=device)
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        err = lib.mamba_selective_scan_cuda(ctypes.byref(params), _ptr(workspace), stream)
    if err:
        raise RuntimeError(f"mamba::selective_scan: the CUDA kernel failed to launch (cudaError {err})")


def _library_or_none() -> ctypes.CDLL | None:
    """The library, or None (with one warning) when it is not built or cannot load."""
    global _missing
    if _missing is None:
        try:
            return load_library()
        except (MissingDependencyError, OSError) as err:
            _missing = str(err)
            warnings.warn(f"mamba::selective_scan runs the slow reference on CUDA: {_missing}", stacklevel=3)
    return None


@selective_scan.register_kernel("cuda")
def _selective_scan_cuda(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                         delta_softplus=False):
    check_selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state)
    tensors = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    for name, t in tensors.items():
        if t is not None and t.device != u.device:
            raise ContractError(f"mamba::selective_scan: {name} is on {t.device}, u on {u.device}")
    lib = _library_or_none()
    if lib is None:
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
    args = {name: t.contiguous() if t is not None else None for name, t in tensors.items()}
    y = torch.empty_like(args["u"])
    final_state = torch.empty(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32, device=u.device)
    params = scan_params(**args, delta_softplus=delta_softplus, y=y, final_state=final_state)
    limit = lib.mamba_selective_scan_cuda_check(ctypes.byref(params))
    if limit:  # the contract holds (checked above): a limit of the CUDA kernels, not an error
        warnings.warn(f"{limit.decode()}; running the slow reference on CUDA", stacklevel=2)
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
    launch(lib, params, u.device)
    return y, final_state
