"""Export any PyTorch model that calls a selective scan (docs/custom-models.md).

During export, calls to mamba_ssm's ``selective_scan_fn`` / ``selective_scan_ref`` /
``mamba_inner_fn``, to transformers' Mamba-1 scan functions and to functions registered with
``register_scan_function`` run adapters built on ``torch.ops.mamba.selective_scan``, so each
scan becomes one ``mamba.SelectiveScan`` node. ``install_mamba_ssm_shim()`` lets code that
imports mamba_ssm run where mamba_ssm is not installed.
"""

from .adapters import UnsupportedScanError, mamba_inner_fn, selective_scan_fn, selective_scan_ref
from .routing import KNOWN_FUNCTIONS, register_scan_function, route_scans, unregister_scan_function
from .shim import install_mamba_ssm_shim, mamba_ssm_installed, uninstall_mamba_ssm_shim

__all__ = [
    "KNOWN_FUNCTIONS",
    "UnsupportedScanError",
    "install_mamba_ssm_shim",
    "mamba_inner_fn",
    "mamba_ssm_installed",
    "register_scan_function",
    "route_scans",
    "selective_scan_fn",
    "selective_scan_ref",
    "uninstall_mamba_ssm_shim",
    "unregister_scan_function",
]
