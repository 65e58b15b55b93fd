"""Custom ops (one contract each, docs/ops.md) and their pure-PyTorch references."""

from .contract import ContractError
from .selective_scan import selective_scan, selective_scan_reference

__all__ = ["ContractError", "selective_scan", "selective_scan_reference"]
