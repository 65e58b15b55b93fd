"""Validate a backend against the eager float32 PyTorch reference.

Prefill on a batch of prompts, then teacher-forced decode: at every step both sides get the
token the reference chose greedily, so an early near-tie cannot make the rest incomparable.
Compared: logits (max abs / max relative error), the final recurrent state, and how often
the greedy (argmax) token agrees.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import jsonio
from .backends.base import Backend, State

# Per exported dtype: (max relative logits error, max relative state error, min greedy agreement).
# float32 differs from the reference only by summation order; half types by their rounding.
# docs/export.md (Validation) has this table and the reasons; tests/test_cli.py holds the two equal.
TOLERANCES = {
    "float32": (1e-4, 1e-4, 1.0),
    "float16": (2e-2, 2e-2, 0.9),
    "bfloat16": (6e-2, 6e-2, 0.8),
}


@dataclass
class ValidationReport:
    backend: str
    model: str
    dtype: str
    batch: int
    prompt_len: int
    decode_steps: int
    max_abs_err: float
    max_rel_err: float
    state_max_rel_err: float
    greedy_match: float
    tolerance: dict
    passed: bool

    def to_json(self) -> str:
        return jsonio.dumps(asdict(self), indent=2)

    def table(self) -> str:
        rel, state_tol, greedy_tol = (self.tolerance[k] for k in ("max_rel_err", "state_max_rel_err", "greedy_match"))
        rows = [
            ("logits max abs error", f"{self.max_abs_err:.3e}", ""),
            ("logits max rel error", f"{self.max_rel_err:.3e}", f"<= {rel:.0e}"),
            ("state max rel error", f"{self.state_max_rel_err:.3e}", f"<= {state_tol:.0e}"),
            ("greedy tokens agree", f"{self.greedy_match:.1%}", f">= {greedy_tol:.0%}"),
        ]
        head = (f"{self.backend} vs eager PyTorch (float32) | {self.model} | {self.dtype} | batch {self.batch}, "
                f"prompt {self.prompt_len}, decode {self.decode_steps}")  # fmt: skip
        lines = [head, *(f"  {a:<22} {b:>12}  {c}" for a, b, c in rows)]
        lines.append(f"  {'result':<22} {'PASSED' if self.passed else 'FAILED':>12}")
        return "\n".join(lines)


def _max_abs_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref|, infinite when out has a NaN/inf (max() would silently skip a NaN)."""
    if out.numel() == 0:
        return 0.0
    if not torch.isfinite(out).all():
        return float("inf")
    return (out.double().cpu() - ref.double().cpu()).abs().max().item()


def _state_rel_err(state: State, ref: State) -> float:
    worst = 0.0
    for pair, ref_pair in zip(state, ref):
        for t, r in zip(pair, ref_pair):
            scale = max(r.abs().max().item(), 1e-12) if r.numel() else 1.0
            worst = max(worst, _max_abs_diff(t, r) / scale)
    return worst


def compare(backend: Backend, reference: Backend, *, batch: int = 2, prompt_len: int = 32,
            decode_steps: int = 16, vocab_size: int, seed: int = 0, progress=None) -> dict:
    """Runs both backends on the same tokens; returns the raw error measures."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, prompt_len), generator=gen)
    ref_logits, ref_state = reference.forward(ids, reference.empty_state(batch))
    logits, state = backend.forward(ids, backend.empty_state(batch))
    pairs = [(logits, ref_logits)]
    for _ in range(decode_steps):
        token = ref_logits[:, -1:].argmax(-1).cpu()
        ref_logits, ref_state = reference.forward(token, ref_state)
        logits, state = backend.forward(token, state)
        pairs.append((logits, ref_logits))
        if progress:
            progress.update(1)
    max_abs, max_ref, agree, total = 0.0, 0.0, 0, 0
    for out, ref in pairs:
        max_abs = max(max_abs, _max_abs_diff(out, ref))
        out, ref = out.cpu(), ref.cpu()
        max_ref = max(max_ref, ref.abs().max().item())
        agree += (out.argmax(-1) == ref.argmax(-1)).sum().item()
        total += out.shape[0] * out.shape[1]
    return {
        "max_abs_err": max_abs,
        "max_rel_err": max_abs / max(max_ref, 1e-12),
        "state_max_rel_err": _state_rel_err(state, ref_state),
        "greedy_match": agree / total,
    }


def validate(backend: Backend, reference: Backend, *, model_name: str, dtype: str, batch: int = 2,
             prompt_len: int = 32, decode_steps: int = 16, vocab_size: int, seed: int = 0,
             json_path: str | Path | None = None, progress=None) -> ValidationReport:
    rel_tol, state_tol, greedy_tol = TOLERANCES[dtype]
    errors = compare(backend, reference, batch=batch, prompt_len=prompt_len, decode_steps=decode_steps,
                     vocab_size=vocab_size, seed=seed, progress=progress)  # fmt: skip
    passed = (
        errors["max_rel_err"] <= rel_tol
        and errors["state_max_rel_err"] <= state_tol
        and errors["greedy_match"] >= greedy_tol
    )
    report = ValidationReport(
        backend=backend.name, model=model_name, dtype=dtype, batch=batch, prompt_len=prompt_len,
        decode_steps=decode_steps, **errors, passed=passed,
        tolerance={"max_rel_err": rel_tol, "state_max_rel_err": state_tol, "greedy_match": greedy_tol},
    )  # fmt: skip
    if json_path:
        Path(json_path).write_text(report.to_json() + "\n")
    return report
