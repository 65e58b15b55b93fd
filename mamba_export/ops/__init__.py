"""Custom ops (one contract each, docs/ops.md) and their pure-PyTorch references."""

from .contract import ContractError
from .selective_scan import selective_scan, selective_scan_reference
from .ssd_scan import ssd_scan, ssd_scan_reference
from . import cuda as _cuda  # noqa: E402,F401  registers the CUDA kernel; its library loads on first use

__all__ = ["ContractError", "selective_scan", "selective_scan_reference", "ssd_scan", "ssd_scan_reference"]
