"""Cross-backend latency benchmark: prefill, per-token decode with the state, memory, load time.

Every backend is validated against the eager float32 reference before it is timed; one that
fails is reported as failed and never timed, so a fast wrong backend cannot win.
"""

from __future__ import annotations

import copy
import gc
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import console
from ..errors import MambaExportError, first_line
from ..backends.factory import BACKENDS, backend_unavailable, ensure_engine, ensure_export, needs_export, open_backend
from ..backends.torch_backend import TorchBackend
from ..loading import resolve_dtype
from ..validate import TOLERANCES, compare
from .measure import Stats, peak_rss_mb, reset_peak_rss, synchronizer, time_calls


@dataclass
class Settings:
    backends: list[str]
    device: str = "cpu"
    dtype: str = "fp32"
    batches: list[int] = field(default_factory=lambda: [1])
    prompt_lens: list[int] = field(default_factory=lambda: [128])
    decode_tokens: int = 32
    warmup: int = 2
    repeat: int = 5
    seed: int = 0
    cuda_graphs: bool = True  # ort-cuda's decode steps


def _device_memory_used_mb(device: torch.device) -> float | None:
    """Memory in use on the whole device: what ONNX Runtime's arena and TensorRT's context
    hold is invisible to torch's own counters."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    return (total - free) / 2**20


def _measure_setting(backend, vocab_size: int, batch: int, prompt_len: int, s: Settings, sync) -> dict:
    gen = torch.Generator().manual_seed(s.seed)
    ids = torch.randint(0, vocab_size, (batch, prompt_len), generator=gen)
    prefill = Stats.of(time_calls(lambda: backend.forward(ids, backend.empty_state(batch)),
                                  warmup=s.warmup, repeat=s.repeat, sync=sync))  # fmt: skip
    logits, state = backend.forward(ids, backend.empty_state(batch))
    token = ids[:, -1:]
    steps = []
    for i in range(s.warmup + s.decode_tokens):
        start = time.perf_counter()
        logits, state = backend.forward(token, state)
        sync()
        if i >= s.warmup:
            steps.append(time.perf_counter() - start)
    decode = Stats.of(steps)
    return {
        "batch": batch,
        "prompt_len": prompt_len,
        "prefill": asdict(prefill),
        "prefill_tokens_per_s": batch * prompt_len / (prefill.median_ms / 1e3),
        "decode_per_token": asdict(decode),
        "decode_tokens_per_s": batch / (decode.median_ms / 1e3),
    }


def _bench_backend(name: str, model: torch.nn.Module, reference: TorchBackend, s: Settings,
                   work_dir: Path) -> dict:
    result = {"backend": name, "status": "ok"}
    reason = backend_unavailable(name, s.device)
    if reason:
        return {**result, "status": "skipped", "reason": reason}
    try:
        return _measure_backend(result, name, model, reference, s, work_dir)
    except Exception as e:  # one backend that breaks must not lose the others' measurements
        console.info(f"{name} failed: {type(e).__name__}: {e}")
        # The work directory is gone when the report is read: say what it was, not where.
        reason = f"{type(e).__name__}: {first_line(e)}".replace(str(work_dir), "<bench temp dir>")
        return {**result, "status": "failed", "reason": reason[:500]}


def _measure_backend(result: dict, name: str, model: torch.nn.Module, reference: TorchBackend, s: Settings,
                     work_dir: Path) -> dict:
    device = torch.device(s.device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    base_device_mb = _device_memory_used_mb(device)
    rss_reset = reset_peak_rss()
    export_dir = work_dir / name
    # Export, engine build and session/engine load timed apart: open_backend reuses the first two.
    if needs_export(name):
        started = time.perf_counter()
        ensure_export(model, export_dir, portable=name == "ort-portable")
        result["export_s"] = round(time.perf_counter() - started, 2)
    if name == "trt":
        started = time.perf_counter()
        ensure_engine(export_dir)
        result["build_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    backend = open_backend(name, model, export_dir=export_dir, device=device, cuda_graphs=s.cuda_graphs)
    result["load_s"] = round(time.perf_counter() - started, 2)

    errors = compare(backend, reference, batch=2, prompt_len=16, decode_steps=4,
                     vocab_size=model.config.vocab_size, seed=s.seed)  # fmt: skip
    dtype = str(model.lm_head.weight.dtype).removeprefix("torch.")
    rel_tol, state_tol, greedy_tol = TOLERANCES[dtype]
    passed = errors["max_rel_err"] <= rel_tol and errors["state_max_rel_err"] <= state_tol and \
        errors["greedy_match"] >= greedy_tol  # fmt: skip
    result["validation"] = {**errors, "passed": passed}
    if not passed:
        return {**result, "status": "failed validation", "reason": f"logits rel err {errors['max_rel_err']:.2e}"}

    sync = synchronizer(device)
    result["runs"] = []
    with console.progress(len(s.batches) * len(s.prompt_lens), f"bench {name}") as bar:
        for batch in s.batches:
            for prompt_len in s.prompt_lens:
                result["runs"].append(_measure_setting(backend, model.config.vocab_size, batch, prompt_len, s, sync))
                bar.update(1)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["peak_rss_scope"] = "backend" if rss_reset else "process"
    if base_device_mb is not None:
        # Allocators keep what they grew to (torch's cache, ORT's arena): after the runs this
        # is the backend's high-water mark on the device, its weights included.
        result["device_memory_mb"] = round(_device_memory_used_mb(device) - base_device_mb, 1)
    del backend
    return result


def check_backend_names(names: list[str]) -> None:
    unknown = [b for b in names if b not in BACKENDS]
    if not names or unknown:
        what = f"unknown backends {', '.join(unknown)}" if unknown else "no backend named"
        raise MambaExportError(f"{what}; choose from {', '.join(BACKENDS)}")
    repeated = sorted({b for b in names if names.count(b) > 1})
    if repeated:  # a second run would be reported as another backend, and compared with the first
        raise MambaExportError(f"backends named twice: {', '.join(repeated)}")


def run_bench(model: torch.nn.Module, settings: Settings, work_dir: Path) -> list[dict]:
    """``model``: the eager model in float32 on the CPU (also the validation reference)."""
    check_backend_names(settings.backends)
    reference = TorchBackend(model, name="reference")
    dtype = resolve_dtype(settings.dtype)
    run_model = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    results = []
    for name in settings.backends:
        console.info(f"Backend {name}")
        results.append(_bench_backend(name, run_model, reference, settings, work_dir))
    return results
