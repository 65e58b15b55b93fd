"""CUDA kernels of ``mamba::selective_scan`` and ``mamba::ssd_scan``: the shared kernels
(plugins/kernels/cuda, libmamba_kernels.so) called through their C ABI with ctypes.

Registering the kernel touches no GPU and loads nothing; the library is loaded the first
time the op runs on CUDA tensors, so machines without a GPU never open it. The call only
allocates outputs with torch and enqueues on torch's current stream (no host sync), so it
can be captured in a CUDA graph.
"""

from __future__ import annotations

import ctypes
import math
import threading
import warnings

import torch

from ..errors import MissingDependencyError
from ..native import kernels_library
from .contract import SELECTIVE_SCAN, SSD_SCAN, ContractError
from .selective_scan import selective_scan, selective_scan_reference
from .ssd_scan import ssd_scan, ssd_scan_reference

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


class SsdParams(ctypes.Structure):
    """mamba_ssd_scan_params of plugins/include/mamba_kernels.h."""

    _fields_ = [
        ("batch", ctypes.c_int64),
        ("seqlen", ctypes.c_int64),
        ("nheads", ctypes.c_int64),
        ("headdim", ctypes.c_int64),
        ("dstate", ctypes.c_int64),
        ("groups", ctypes.c_int64),
        ("dtype", ctypes.c_int),
        ("x", ctypes.c_void_p),
        ("dt", ctypes.c_void_p),
        ("A", ctypes.c_void_p),
        ("B", ctypes.c_void_p),
        ("C", ctypes.c_void_p),
        ("D", ctypes.c_void_p),
        ("z", ctypes.c_void_p),
        ("dt_bias", ctypes.c_void_p),
        ("initial_state", ctypes.c_void_p),
        ("dt_softplus", ctypes.c_int),
        ("dt_min", ctypes.c_float),
        ("dt_max", ctypes.c_float),
        ("y", ctypes.c_void_p),
        ("final_state", ctypes.c_void_p),
    ]


# The C entry points of each parameter block: mamba_<name>_cuda_check / _workspace_size / _cuda.
_OPS = {ScanParams: "selective_scan", SsdParams: "ssd_scan"}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_missing: str | None = None  # why the library could not be loaded, once known


def load_library() -> ctypes.CDLL:
    """The kernel library with its C signatures (loaded once). Raises MissingDependencyError."""
    global _lib
    with _lock:
        if _lib is None:
            lib = ctypes.CDLL(kernels_library())
            for struct, name in _OPS.items():
                params = ctypes.POINTER(struct)
                check = getattr(lib, f"mamba_{name}_cuda_check")
                check.argtypes, check.restype = [params], ctypes.c_char_p
                size = getattr(lib, f"mamba_{name}_cuda_workspace_size")
                size.argtypes, size.restype = [params], ctypes.c_size_t
                run = getattr(lib, f"mamba_{name}_cuda")
                run.argtypes, run.restype = [params, ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int
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


def ssd_params(x, dt, A, B, C, D, z, dt_bias, initial_state, dt_softplus, dt_min, dt_max, y,
               final_state) -> SsdParams:
    """The SSDScan parameter block for contiguous tensors (outputs y and final_state included);
    dt_max None is +inf."""
    batch, length, heads, head_dim = x.shape
    return SsdParams(
        batch, length, heads, head_dim, B.shape[3], B.shape[2], _DTYPES[x.dtype],
        _ptr(x), _ptr(dt), _ptr(A), _ptr(B), _ptr(C), _ptr(D), _ptr(z), _ptr(dt_bias), _ptr(initial_state),
        int(bool(dt_softplus)), float(dt_min), math.inf if dt_max is None else float(dt_max), _ptr(y), _ptr(final_state),
    )  # fmt: skip


def cuda_limit(lib: ctypes.CDLL, params) -> str | None:
    """Why the CUDA kernels cannot run this block (the contract or their limits), or None."""
    message = getattr(lib, f"mamba_{_OPS[type(params)]}_cuda_check")(ctypes.byref(params))
    return message.decode() if message else None


def launch(lib: ctypes.CDLL, params, device: torch.device) -> None:
    """Checks the block (ScanParams or SsdParams) and enqueues its op on the current stream of `device`."""
    name = _OPS[type(params)]
    message = cuda_limit(lib, params)
    if message:
        raise ContractError(message)
    workspace = None
    size = getattr(lib, f"mamba_{name}_cuda_workspace_size")(ctypes.byref(params))
    with torch.cuda.device(device):
        if size:
            workspace = torch.empty(size, dtype=torch.uint8, device=device)
        stream = torch.cuda.current_stream(device).cuda_stream
        err = getattr(lib, f"mamba_{name}_cuda")(ctypes.byref(params), _ptr(workspace), stream)
    if err:
        raise RuntimeError(f"mamba::{name}: the CUDA kernel failed to launch (cudaError {err})")


def _library_or_none(op: str) -> ctypes.CDLL | None:
    """The library, or None (with one warning) when it is not built or cannot load."""
    global _missing
    if _missing is None:
        try:
            return load_library()
        except (MissingDependencyError, OSError) as err:
            _missing = str(err)
            warnings.warn(f"{op} runs the slow reference on CUDA: {_missing}", stacklevel=3)
    return None


def _same_device(op: str, first: str, tensors: dict) -> None:
    device = tensors[first].device
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ContractError(f"{op}: {name} is on {t.device}, {first} on {device}")


@selective_scan.register_kernel("cuda")
def _selective_scan_cuda(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                         delta_softplus=False):
    SELECTIVE_SCAN.check(u, delta, A, B, C, D, z, delta_bias, initial_state)
    tensors = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    _same_device("mamba::selective_scan", "u", tensors)
    lib = _library_or_none("mamba::selective_scan")
    if lib is None:
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
    args = {name: t.contiguous() if t is not None else None for name, t in tensors.items()}
    y = torch.empty_like(args["u"])
    final_state = torch.empty(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32, device=u.device)
    params = scan_params(**args, delta_softplus=delta_softplus, y=y, final_state=final_state)
    limit = cuda_limit(lib, params)
    if limit:  # the contract holds (checked above): a limit of the CUDA kernels, not an error
        warnings.warn(f"{limit}; running the slow reference on CUDA", stacklevel=2)
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
    launch(lib, params, u.device)
    return y, final_state


@ssd_scan.register_kernel("cuda")
def _ssd_scan_cuda(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_state=None, dt_softplus=False, dt_min=0.0,
                   dt_max=None):
    SSD_SCAN.check(x, dt, A, B, C, D, z, dt_bias, initial_state, dt_min=dt_min, dt_max=dt_max)
    tensors = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_state=initial_state)
    _same_device("mamba::ssd_scan", "x", tensors)
    options = dict(dt_softplus=dt_softplus, dt_min=dt_min, dt_max=dt_max)
    lib = _library_or_none("mamba::ssd_scan")
    if lib is None:
        return ssd_scan_reference(**tensors, **options)
    args = {name: t.contiguous() if t is not None else None for name, t in tensors.items()}
    y = torch.empty_like(args["x"])
    final_state = torch.empty(*x.shape[:1], *x.shape[2:], B.shape[3], dtype=torch.float32, device=x.device)
    params = ssd_params(**args, **options, y=y, final_state=final_state)
    limit = cuda_limit(lib, params)
    if limit:  # the contract holds (checked above): a limit of the CUDA kernels, not an error
        warnings.warn(f"{limit}; running the slow reference on CUDA", stacklevel=2)
        return ssd_scan_reference(**tensors, **options)
    launch(lib, params, x.device)
    return y, final_state
