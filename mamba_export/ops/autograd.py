"""Backward of the scan ops: autograd through a pure-PyTorch formulation, recomputed.

Training is not the hot path here (inference export is): rather than keep a second,
hand-written backward kernel per op, the backward recomputes the op's function with a
differentiable formulation from the saved inputs and differentiates that.
"""

from __future__ import annotations

from typing import Callable

import torch


def register_recompute_autograd(op, differentiable: Callable, n_tensors: int) -> None:
    """Registers the backward of ``op`` (a torch.library custom op).

    ``op``'s first ``n_tensors`` arguments are (optional) tensors, the rest non-tensor options;
    ``differentiable`` takes the same arguments and returns the same outputs as ``op``.
    """

    def setup_context(ctx, inputs, output):
        tensors = inputs[:n_tensors]
        ctx.save_for_backward(*(t for t in tensors if t is not None))
        ctx.present = [t is not None for t in tensors]
        ctx.options = inputs[n_tensors:]

    def backward(ctx, *grad_outputs):
        saved = iter(ctx.saved_tensors)
        args = [next(saved).detach().requires_grad_() if present else None for present in ctx.present]
        with torch.enable_grad():
            outputs = differentiable(*args, *ctx.options)
            pairs = [(out, grad) for out, grad in zip(outputs, grad_outputs) if grad is not None]
            wrt = [a for a in args if a is not None]
            grads = iter(torch.autograd.grad([p[0] for p in pairs], wrt, [p[1] for p in pairs], allow_unused=True))
        return (*[next(grads) if a is not None else None for a in args], *[None] * len(ctx.options))

    op.register_autograd(backward, setup_context=setup_context)
