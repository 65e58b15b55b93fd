"""Routing scan calls to ``mamba::selective_scan`` while a model is traced.

User code holds its own references to scan functions (``from mamba_ssm.ops.selective_scan_interface
import selective_scan_fn`` binds a global of the user's module), so replacing the function in
its home module is not enough: ``route_scans()`` replaces every reference it can see — globals
of every loaded module, attributes of the model's submodules and their classes, also wrapped
in ``staticmethod`` or ``functools.partial`` — by the adapter, and puts everything back after.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator

import torch

from ..errors import MambaExportError
from . import adapters
from .shim import is_shim

_MAMBA_SSM = "mamba_ssm.ops.selective_scan_interface"
# transformers' Mamba-1 mixers share these two functions' names and signatures.
_TRANSFORMERS_MODELS = ("mamba", "falcon_mamba", "jamba", "zamba")

# (module, attribute) -> adapter: the functions routed without registration (docs/custom-models.md).
KNOWN_FUNCTIONS: dict[tuple[str, str], Callable] = {
    (_MAMBA_SSM, "selective_scan_fn"): adapters.selective_scan_fn,
    (_MAMBA_SSM, "selective_scan_ref"): adapters.selective_scan_ref,
    (_MAMBA_SSM, "mamba_inner_fn"): adapters.mamba_inner_fn,
    **{
        (f"transformers.models.{m}.modeling_{m}", name): adapter
        for m in _TRANSFORMERS_MODELS
        for name, adapter in (("mamba_selective_scan", adapters.transformers_selective_scan),
                              ("mamba_selective_state_update", adapters.transformers_selective_state_update))
    },
}  # fmt: skip

# What register_scan_function added: a function or its dotted path -> adapter.
_REGISTERED: dict[object, Callable] = {}


def _check_path(path: str) -> tuple[str, str]:
    module, sep, attr = path.partition(":") if ":" in path else path.rpartition(".")
    names = [*module.split("."), *attr.split(".")]
    if not sep or not all(n.isidentifier() for n in names):
        raise MambaExportError(f"'{path}' is not a dotted path to a function ('package.module.function')")
    return module, attr


def register_scan_function(fn_or_path, adapter: Callable | None = None):
    """Routes a scan function of your own to mamba.SelectiveScan during export.

    ``fn_or_path``: the function, or its dotted path ('pkg.module.scan' or 'pkg.module:scan',
    imported when a model is exported). ``adapter``: what runs instead, computing the same
    result with ``torch.ops.mamba.selective_scan``; by default mamba_ssm's ``selective_scan_fn``
    signature is assumed. Returns ``fn_or_path``, so it also works as a decorator.
    """
    if isinstance(fn_or_path, str):
        _check_path(fn_or_path)
    elif not callable(fn_or_path):
        raise MambaExportError(f"register_scan_function: expected a function or a dotted path, got {fn_or_path!r}")
    if adapter is not None and not callable(adapter):
        raise MambaExportError(f"register_scan_function: adapter must be callable, got {adapter!r}")
    _REGISTERED[fn_or_path] = adapter or adapters.selective_scan_fn
    return fn_or_path


def unregister_scan_function(fn_or_path) -> None:
    """Undoes ``register_scan_function`` (same argument); unknown ones are ignored."""
    _REGISTERED.pop(fn_or_path, None)


def _resolve(path: str):
    module, attr = _check_path(path)
    try:
        obj = importlib.import_module(module)
    except Exception as e:
        raise MambaExportError(f"registered scan function '{path}': cannot import {module} ({e})") from e
    for name in attr.split("."):
        if not hasattr(obj, name):
            raise MambaExportError(f"registered scan function '{path}': {obj.__name__} has no attribute '{name}'")
        obj = getattr(obj, name)
    return obj


def _known_module(name: str):
    """The module if it is loaded, or (mamba_ssm only) installed and importable; else None.

    transformers' model modules are only looked at when loaded: a model built from them
    has loaded them. mamba_ssm is imported when installed, for code that imports it lazily.
    """
    if name in sys.modules or not name.startswith("mamba_ssm"):
        return sys.modules.get(name)
    if sys.modules.get("mamba_ssm") is None and importlib.util.find_spec("mamba_ssm") is None:
        return None
    try:
        return importlib.import_module(name)
    except Exception:  # an installed but unusable build (no CUDA, no triton): nothing of it is in use
        return None


def _targets() -> dict[int, tuple[object, Callable]]:
    """id(original) -> (original, adapter), following ``__wrapped__`` (transformers' fallback wrappers)."""
    pairs = []
    for (module_name, attr), adapter in KNOWN_FUNCTIONS.items():
        module = _known_module(module_name)
        if module is not None and not is_shim(module) and hasattr(module, attr):
            pairs.append((getattr(module, attr), adapter))
    pairs += [(_resolve(key) if isinstance(key, str) else key, adapter) for key, adapter in _REGISTERED.items()]
    targets = {}
    for fn, adapter in pairs:
        while fn is not None and fn is not adapter:
            targets[id(fn)] = (fn, adapter)
            fn = getattr(fn, "__wrapped__", None)
    return targets


def _replacement(value, targets):
    """What ``value`` becomes while routing, or None when it is not a scan function."""
    hit = targets.get(id(value))
    if hit is not None and hit[0] is value:
        return hit[1]
    # type() rather than isinstance(), which reads __class__ and so wakes deprecation shims.
    kind = type(value)
    if issubclass(kind, staticmethod):
        inner = _replacement(value.__func__, targets)
        return None if inner is None else staticmethod(inner)
    if issubclass(kind, functools.partial):
        inner = _replacement(value.func, targets)
        return None if inner is None else functools.partial(inner, *value.args, **value.keywords)
    return None


class _Patches:
    def __init__(self, targets):
        self.targets, self.done = targets, []

    def scan_dict(self, owner, namespace) -> None:
        """Replaces scan functions among the values of ``namespace`` (the __dict__ of ``owner``)."""
        for key, value in list(namespace.items()):
            new = _replacement(value, self.targets)
            if new is not None:
                self.set(owner, namespace, key, new)
                self.done.append((owner, namespace, key, value, new))

    @staticmethod
    def set(owner, namespace, key, value) -> None:
        if isinstance(owner, type):
            setattr(owner, key, value)  # a class __dict__ is read-only
        else:
            namespace[key] = value

    def restore(self) -> None:
        for owner, namespace, key, old, new in reversed(self.done):
            if namespace.get(key) is new:  # leave alone what the code itself changed meanwhile
                self.set(owner, namespace, key, old)


def _namespaces(model: torch.nn.Module | None) -> Iterator[tuple[object, dict]]:
    for module in list(sys.modules.values()):
        try:
            namespace = getattr(module, "__dict__", None)
        except Exception:  # sys.modules may hold odd objects; none of them is a user's model code
            continue
        if isinstance(namespace, dict):
            yield module, namespace
    if model is None:
        return
    classes = set()
    for sub in model.modules():
        yield sub, sub.__dict__
        classes.update(c for c in type(sub).__mro__ if c not in (torch.nn.Module, object))
    for cls in classes:
        yield cls, cls.__dict__


@contextlib.contextmanager
def route_scans(model: torch.nn.Module | None = None):
    """While active, calls to the known scan functions and to registered ones run the adapters.

    Replaced: the functions in their home modules, every global of a loaded module that is
    one of them, and attributes of ``model``'s submodules (and of their classes) that are.
    Everything is restored on exit, also after an error. Not seen: references held in
    closures, default argument values or containers.
    """
    patches = _Patches(_targets())
    try:
        if patches.targets:
            for owner, namespace in _namespaces(model):
                patches.scan_dict(owner, namespace)
        yield
    finally:
        patches.restore()
