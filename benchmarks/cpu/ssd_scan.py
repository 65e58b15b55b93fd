"""CPU throughput of mamba.SSDScan in ONNX Runtime (the custom-op library's CPU kernel) for one
Mamba-2 layer, prefill and decode, per intra-op thread count; the torch reference
(mamba_export.ops.ssd_scan_reference) on the same inputs as a baseline.

    .venv/bin/python benchmarks/cpu/ssd_scan.py                 # mamba2-130m layer: H 24, P 64, N 128
    .venv/bin/python benchmarks/cpu/ssd_scan.py --length 4096 --threads 1 2 4 --dtype bfloat16

Times are the median of --repeats runs after one warm-up, inputs and outputs bound once
(io_binding), so they are the op's alone. The machine should be otherwise idle.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from mamba_export import ort_session
from mamba_export.ops import ssd_scan_reference

TYPES = {"float32": (torch.float32, TensorProto.FLOAT), "float16": (torch.float16, TensorProto.FLOAT16),
         "bfloat16": (torch.bfloat16, TensorProto.BFLOAT16)}


def layer_inputs(batch, length, heads, head_dim, d_state, groups, dtype):
    """A layer's scan inputs with Mamba-2's magnitudes (dt around softplus' knee, A in [-16, -1])."""
    g = torch.Generator().manual_seed(0)
    rnd = lambda *shape, scale=1.0: (torch.randn(*shape, generator=g) * scale).to(dtype)  # noqa: E731
    return dict(x=rnd(batch, length, heads, head_dim), dt=rnd(batch, length, heads, scale=0.5),
                A=-torch.exp(torch.rand(heads, generator=g) * 2.77), B=rnd(batch, length, groups, d_state),
                C=rnd(batch, length, groups, d_state), D=torch.randn(heads, generator=g),
                dt_bias=torch.randn(heads, generator=g) * 0.5 - 1,
                initial_state=torch.randn(batch, heads, head_dim, d_state, generator=g))


def ortvalue(t: torch.Tensor):
    if t.dtype == torch.bfloat16:
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(t.view(torch.int16).numpy().view(np.uint16),
                                                               TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(t.numpy())


def ssd_session(element_type, threads):
    """One SSDScan node as Mamba-2 uses it: D, dt_bias and the state present, softplus, no gate."""
    names = ["x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state"]
    activation = {"x", "dt", "B", "C"}
    node = helper.make_node("SSDScan", names, ["y", "final_state"], domain="mamba", dt_softplus=1, has_D=1,
                            has_dt_bias=1, has_initial_state=1)
    graph = helper.make_graph(
        [node], "ssd_scan",
        [helper.make_tensor_value_info(n, element_type if n in activation else TensorProto.FLOAT, None) for n in names],
        [helper.make_tensor_value_info("y", element_type, None),
         helper.make_tensor_value_info("final_state", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("mamba", 1)],
                              ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort_session(model.SerializeToString(), session_options=options)


def median_seconds(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, default in [("batch", 1), ("length", 1024), ("heads", 24), ("head-dim", 64), ("d-state", 128),
                          ("groups", 1), ("repeats", 10)]:
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dtype", choices=list(TYPES), default="float32")
    args = parser.parse_args()
    dtype, element_type = TYPES[args.dtype]
    shape = (args.batch, args.heads, args.head_dim, args.d_state, args.groups)
    print(f"SSDScan {args.dtype}, batch {args.batch}, H {args.heads}, P {args.head_dim}, N {args.d_state}, "
          f"G {args.groups}; onnxruntime {ort.__version__}, torch {torch.__version__}")
    print(f"{'what':<26} {'threads':>7} {'ms':>10} {'tokens/s':>10} {'G updates/s':>12}")
    for length in (args.length, 1):
        inputs = layer_inputs(args.batch, length, *shape[1:], dtype)
        updates = args.batch * length * args.heads * args.head_dim * args.d_state
        y = torch.empty(args.batch, length, args.heads, args.head_dim, dtype=dtype)
        state = torch.empty(args.batch, args.heads, args.head_dim, args.d_state)
        rows = []
        for threads in args.threads:
            sess = ssd_session(element_type, threads)
            binding = sess.io_binding()
            for name, t in inputs.items():
                binding.bind_ortvalue_input(name, ortvalue(t))
            binding.bind_ortvalue_output("y", ortvalue(y))
            binding.bind_ortvalue_output("final_state", ortvalue(state))
            rows.append((f"ORT CPU, L {length}", threads,
                         median_seconds(lambda: sess.run_with_iobinding(binding), args.repeats)))
        for threads in args.threads:
            torch.set_num_threads(threads)
            rows.append((f"torch reference, L {length}", threads,
                         median_seconds(lambda: ssd_scan_reference(**inputs, dt_softplus=True), args.repeats)))
        for what, threads, seconds in rows:
            print(f"{what:<26} {threads:>7} {seconds * 1e3:>10.3f} {args.batch * length / seconds:>10.0f} "
                  f"{updates / seconds / 1e9:>12.2f}")


if __name__ == "__main__":
    main()
