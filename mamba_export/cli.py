"""The `mamba-export` command line: export, validate, generate, bench, build-engine."""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import tempfile
from pathlib import Path

from . import __version__, console, jsonio
from .errors import MambaExportError

DTYPES = ("fp32", "fp16", "bf16")
# The small trained model shipped in the repository (models/README.md).
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "mamba1-pystdlib"
EPILOG = (
    "MODEL is a checkpoint directory (Hugging Face or mamba_ssm layout) or a Hugging Face Hub id; "
    "default: the shipped models/mamba1-pystdlib."
)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", nargs="?", help="checkpoint directory or hub id")
    p.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"values must be at least 1, got '{text}'")
    return values


def _path(text: str) -> Path:
    if not text:  # Path("") would be the current directory
        raise argparse.ArgumentTypeError("empty path")
    return Path(text)


def _add_backend(p: argparse.ArgumentParser, default: str, also_overwrites: str = "") -> None:
    from .backends.factory import BACKENDS

    p.add_argument("--backend", default=default, choices=list(BACKENDS),
                   help="; ".join(f"{k}: {v}" for k, v in BACKENDS.items()) + f" (default: {default})")
    p.add_argument("--onnx", metavar="DIR", type=_path,
                   help="export directory to use, or to export into if empty (default: a temporary one)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an export in --onnx DIR made from another model" + also_overwrites)
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="precision of the model run (default: fp32)")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="where the backend runs (default: cuda for ort-cuda and trt, cpu for the others)")
    _add_cuda_graphs(p)


def _add_cuda_graphs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="ort-cuda: launch every node of each decode step (default: replay the step as a CUDA "
                        "graph, captured once per batch size)")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like the commands' own errors (subcommands inherit the class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mamba-export",
        description="Export Mamba models to ONNX with the scan as one custom op, run them in "
        "ONNX Runtime and TensorRT, and validate them against eager PyTorch.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"mamba-export {__version__}")
    # Its own dest: a subcommand's -q default (False) would overwrite one given before the command.
    parser.add_argument("-q", "--quiet", dest="quiet_all", action="store_true",
                        help="print only results and errors (also accepted after COMMAND)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="export a checkpoint to ONNX (model.onnx + export.json)", epilog=EPILOG,
                       description="Export MODEL to DIR/model.onnx: one graph for prefill and decode, the "
                       "recurrent state as inputs/outputs, each scan one node: mamba.SelectiveScan (Mamba-1) or "
                       "mamba.SSDScan (Mamba-2).")
    _add_common(p)
    p.add_argument("-o", "--output", metavar="DIR", type=_path, required=True, help="output directory")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights and activations (default: fp32)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset of the standard domain (default: 18)")
    p.add_argument("--portable", action="store_true",
                   help="standard ONNX ops only (a Scan loop), runs without the custom-op library; slower")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in DIR")

    p = sub.add_parser("validate", help="compare a backend with eager PyTorch (logits, state, greedy tokens)",
                       epilog=EPILOG + " Exit status 1 when the backend is outside the tolerances.",
                       description="Run prefill on a batch of random prompts and teacher-forced decode steps "
                       "through the backend and through the eager float32 reference; report errors.")
    _add_common(p)
    _add_backend(p, "ort", also_overwrites=", and a --json FILE that is not a report")
    p.add_argument("--batch", type=int, default=2, help="prompts per call (default: 2)")
    p.add_argument("--prompt-len", type=int, default=32, help="tokens per prompt (default: 32)")
    p.add_argument("--decode-steps", type=int, default=16, help="teacher-forced decode steps (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="of the random prompts (default: 0)")
    p.add_argument("--json", metavar="FILE", type=_path, help="also write the report as JSON")
    from .validate_module import add_module_validate_arguments

    add_module_validate_arguments(p)  # --entry module:factory --input-shape ...: any model using the scan

    p = sub.add_parser("generate", help="generate text, streaming, with the recurrent state cache",
                       epilog=EPILOG, description="Run the prompt once, then decode token by token from the state.")
    _add_common(p)
    _add_backend(p, "torch")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=64, help="(default: 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = all)")
    p.add_argument("--seed", type=int, default=None, help="of the sampling (default: a random one)")
    p.add_argument("--ignore-eos", action="store_true",
                   help="go on past the end-of-sequence token (config.json's eos_token_id) to --max-new-tokens")

    from .tensorrt import DEFAULT_BATCH, DEFAULT_SEQUENCE

    p = sub.add_parser("build-engine", help="build a TensorRT engine (.plan) with the mamba plugin",
                       epilog=EPILOG + " MODEL_OR_ONNX may also be an export directory or its model.onnx.",
                       description="Parse the ONNX export (exporting MODEL first when it is a checkpoint) with "
                       "TensorRT's ONNX parser, which maps every mamba.SelectiveScan / mamba.SSDScan node to the "
                       "plugin, and build an engine with two optimisation profiles: prefill (the sequence range) "
                       "and decode (sequence 1). Writes PLAN and PLAN.json (export info, profiles, TensorRT version).")
    p.add_argument("model", metavar="MODEL_OR_ONNX", nargs="?", help="checkpoint, hub id, export directory or .onnx")
    p.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    p.add_argument("-o", "--output", metavar="PLAN", type=_path, required=True, help="engine file to write")
    precision = p.add_mutually_exclusive_group()
    for flag, dtype in (("--fp16", "float16"), ("--bf16", "bfloat16")):
        precision.add_argument(flag, action="store_true",
                               help=f"{dtype} engine: a checkpoint is exported in {dtype}; an ONNX input must be one")
    for dim, flag, default in (("batch", "batch", DEFAULT_BATCH), ("prefill sequence length", "seq", DEFAULT_SEQUENCE)):
        for bound in ("min", "opt", "max"):
            p.add_argument(f"--{bound}-{flag}", type=int, metavar="N",
                           help=f"{bound} {dim} (default: {getattr(default, bound)})")
    p.add_argument("--workspace", type=int, metavar="MIB", help="limit of TensorRT's scratch memory, MiB")
    p.add_argument("--timing-cache", type=_path, metavar="FILE", help="timing cache to read if present and update")
    p.add_argument("--onnx", metavar="DIR", type=_path,
                   help="with a checkpoint: export directory to use or export into (default: a temporary one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PLAN (and a mismatching --onnx DIR)")
    p.add_argument("--verbose", action="store_true", help="print all of TensorRT's log messages")

    from .bench import PUBLISHED

    p = sub.add_parser("bench", help="time prefill and decode across backends; write bench.{json,md,png}",
                       epilog=EPILOG + " With --config, a published architecture with random weights is timed. "
                       "Exit status 1 when a backend failed (its run or its validation) or none was measured; "
                       "a backend skipped because it cannot run here is not a failure.",
                       description="Validate each backend against eager PyTorch, then time prefill latency, "
                       "per-token decode latency with the state cache, tokens/s, peak memory and load time.")
    _add_common(p)
    p.add_argument("--config", choices=list(PUBLISHED),
                   help="a published Mamba-1 or Mamba-2 size with random weights, instead of MODEL")
    p.add_argument("--backends", default="torch,ort", help="comma-separated (default: torch,ort)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where every backend runs (default: cpu)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="precision of the model run (default: fp32)")
    p.add_argument("--batch", type=_int_list, default=[1], help="comma-separated batch sizes (default: 1)")
    p.add_argument("--prompt-len", type=_int_list, default=[128], help="comma-separated (default: 128)")
    p.add_argument("--decode-tokens", type=int, default=64, help="decode steps timed per setting (default: 64)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls and decode steps first (default: 2)")
    p.add_argument("--repeat", type=int, default=5, help="timed prefill calls per setting (default: 5)")
    _add_cuda_graphs(p)
    p.add_argument("--out", metavar="DIR", type=_path, default=Path("bench-results"),
                   help="report directory (default: bench-results)")
    p.add_argument("--overwrite", action="store_true", help="replace bench.json, bench.md and bench.png in DIR")
    return parser


def _positive(args, *names):
    for name in names:
        if getattr(args, name) < 1:
            raise MambaExportError(f"--{name.replace('_', '-')} must be at least 1")


def _check_output_dir(path: Path | None, option: str) -> None:
    """Refuses, before any work, a directory option that names something other than a directory."""
    if path is not None and path.exists() and not path.is_dir():
        raise MambaExportError(f"{option} {path}: not a directory")


def _check_output_file(path: Path | None, option: str, created: Path | None = None, overwrite: bool = False) -> None:
    """Refuses, before any work, a file to write whose directory is missing, that is a directory,
    or that holds something other than an earlier report unless ``overwrite``.
    ``created``: a directory the command makes before writing the file (--onnx DIR)."""
    if path is None:
        return
    if path.is_dir():
        raise MambaExportError(f"{option} {path}: is a directory")
    if not path.parent.is_dir() and (created is None or path.parent.resolve() != created.resolve()):
        raise MambaExportError(f"{option} {path}: directory {path.parent} does not exist")
    if path.exists() and not overwrite and not _is_report(path):
        raise MambaExportError(f"{option} {path}: exists and is not a validation report; "
                               "choose another file or pass --overwrite")  # fmt: skip


def _is_report(path: Path) -> bool:
    """Whether ``path`` holds a report that `mamba-export validate --json` wrote (a rerun replaces it)."""
    from dataclasses import fields

    from .validate import ValidationReport
    from .validate_module import ModuleValidationReport

    try:
        report = jsonio.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    kinds = ({f.name for f in fields(kind)} for kind in (ValidationReport, ModuleValidationReport))
    return isinstance(report, dict) and set(report) in kinds


def _check_onnx_dir(args) -> None:
    _check_output_dir(args.onnx, "--onnx")
    if args.onnx is not None and args.backend == "torch":  # (scripts pass the same options to every backend)
        console.info(f"--onnx {args.onnx} is not used: the torch backend runs the checkpoint itself")


@contextlib.contextmanager
def _export_dir(args):
    """--onnx DIR, or a temporary directory removed afterwards."""
    if args.onnx is not None or getattr(args, "backend", None) == "torch":
        yield args.onnx
        return
    with tempfile.TemporaryDirectory(prefix="mamba-export-") as tmp:
        console.info("Exporting to a temporary directory (pass --onnx DIR to keep the export)")
        yield Path(tmp)


def _model_arg(args) -> str:
    if args.model:
        return args.model
    if DEFAULT_MODEL.is_dir():
        # As a person would type it from the checkout (make demo): models/mamba1-pystdlib.
        return os.path.relpath(DEFAULT_MODEL) if DEFAULT_MODEL.is_relative_to(Path.cwd()) else str(DEFAULT_MODEL)
    raise MambaExportError("MODEL is required (the shipped default model is not in this installation)")


def _load(model: str, dtype: str):
    from .loading import load

    with console.step(f"Loading {model} ({dtype})"):
        return load(model, dtype=dtype)


def _cmd_export(args) -> int:
    from .export.onnx_export import DEFAULT_OPSET, check_opset, export_onnx

    _check_output_dir(args.output, "-o/--output")
    check_opset(args.opset or DEFAULT_OPSET)  # before loading the model
    args.model = _model_arg(args)
    model = _load(args.model, args.dtype)
    kind = "portable ONNX" if args.portable else "ONNX"
    with console.step(f"Exporting to {kind} in {args.output}"):
        path = export_onnx(model, args.output, opset=args.opset or DEFAULT_OPSET, portable=args.portable,
                           overwrite=args.overwrite)
    print(path)
    return 0


def _cmd_validate(args) -> int:
    # Before loading, exporting and running, which take a while.
    _check_onnx_dir(args)
    _check_output_file(args.json, "--json", created=args.onnx, overwrite=args.overwrite)  # make demo: into its export
    if args.entry:
        from .validate_module import run_module_validate

        return run_module_validate(args)
    if args.input_shape or args.input_dtype or args.max_batch is not None:
        raise MambaExportError("--input-shape, --input-dtype and --max-batch go with --entry (a language model's "
                               "inputs come from --batch and --prompt-len)")  # fmt: skip
    from .backends.factory import open_backend, require_backend
    from .backends.torch_backend import TorchBackend
    from .loading import resolve_dtype
    from .validate import validate

    _positive(args, "batch", "prompt_len")
    if args.decode_steps < 0:
        raise MambaExportError("--decode-steps must be 0 or more")
    require_backend(args.backend, args.device)  # before loading and exporting
    args.model = _model_arg(args)
    reference = _load(args.model, "fp32")
    dtype = resolve_dtype(args.dtype)
    model = reference if dtype == reference.lm_head.weight.dtype else copy.deepcopy(reference).to(dtype)
    with _export_dir(args) as export_dir:
        backend = open_backend(args.backend, model, export_dir=export_dir, overwrite=args.overwrite,
                               device=args.device, cuda_graphs=args.cuda_graphs)
        with console.progress(args.decode_steps, "prefill + decode") as bar:
            report = validate(
                backend, TorchBackend(reference, name="reference"), model_name=args.model,
                dtype=str(dtype).removeprefix("torch."), batch=args.batch, prompt_len=args.prompt_len,
                decode_steps=args.decode_steps, vocab_size=reference.config.vocab_size, seed=args.seed,
                json_path=args.json, progress=bar,
            )  # fmt: skip
    print(report.table())
    return 0 if report.passed else 1


def _cmd_generate(args) -> int:
    from .backends.factory import open_backend, require_backend
    from .generate import generate
    from .loading import resolve_checkpoint
    from .tokenizer import TextStream, eos_token_ids, load_tokenizer

    _positive(args, "max_new_tokens")
    if not args.temperature >= 0:  # also NaN
        raise MambaExportError("--temperature must be 0 (greedy) or more")
    if args.top_k < 0:
        raise MambaExportError("--top-k must be 0 (all tokens) or more")
    _check_onnx_dir(args)
    require_backend(args.backend, args.device)  # before loading and exporting
    args.model = _model_arg(args)
    checkpoint = resolve_checkpoint(args.model)
    tokenizer = load_tokenizer(checkpoint)
    if tokenizer is None:
        raise MambaExportError(f"{args.model} has no tokenizer.json, so text prompts cannot be encoded")
    eos_ids = [] if args.ignore_eos else eos_token_ids(checkpoint)
    model = _load(args.model, args.dtype)
    prompt_ids = tokenizer.encode(args.prompt).ids
    if not prompt_ids:
        raise MambaExportError("--prompt is empty")
    with _export_dir(args) as export_dir:
        backend = open_backend(args.backend, model, export_dir=export_dir, overwrite=args.overwrite,
                               device=args.device, cuda_graphs=args.cuda_graphs)
        stream = TextStream(tokenizer)
        sys.stdout.write(args.prompt)
        for token in generate(backend, prompt_ids, args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, vocab_size=tokenizer.get_vocab_size(), eos_ids=eos_ids,
                              seed=args.seed):
            sys.stdout.write(stream.push(token))
            sys.stdout.flush()
        sys.stdout.write(stream.finish() + "\n")
    return 0


def _cmd_build_engine(args) -> int:
    from .backends.factory import ensure_export
    from .tensorrt import DEFAULT_BATCH, DEFAULT_SEQUENCE, Profiles, ShapeRange, build_engine, check_plan_path
    from .tensorrt import onnx_input, require_tensorrt

    profiles = Profiles(
        batch=ShapeRange.of("batch", args.min_batch, args.opt_batch, args.max_batch, DEFAULT_BATCH),
        sequence=ShapeRange.of("sequence", args.min_seq, args.opt_seq, args.max_seq, DEFAULT_SEQUENCE),
    )
    if args.workspace is not None and args.workspace < 1:
        raise MambaExportError("--workspace must be at least 1 (MiB)")
    dtype = "fp16" if args.fp16 else "bf16" if args.bf16 else None
    options = dict(profiles=profiles, dtype=dtype, timing_cache=args.timing_cache, overwrite=args.overwrite,
                   workspace=args.workspace and args.workspace << 20, verbose=args.verbose)  # fmt: skip
    onnx_path = onnx_input(args.model)
    if onnx_path is not None:
        if args.onnx is not None:
            raise MambaExportError("--onnx DIR is for a checkpoint; MODEL_OR_ONNX is already an export")
        print(build_engine(onnx_path, args.output, **options))
        return 0
    args.model = _model_arg(args)
    check_plan_path(args.output, args.overwrite)
    require_tensorrt()  # before the export, which can take minutes
    model = _load(args.model, dtype or "fp32")
    with _export_dir(args) as export_dir:
        ensure_export(model, export_dir, portable=False, overwrite=args.overwrite)
        print(build_engine(export_dir / "model.onnx", args.output, **options))
    return 0


def _check_writable_dir(path: Path, option: str) -> None:
    """Refuses, before any work, a directory to write into that is a file or cannot be made or written."""
    _check_output_dir(path, option)
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise MambaExportError(f"{option} {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MambaExportError(f"{option} {path}: {existing} is not writable")


def _cmd_bench(args) -> int:
    from .backends.factory import backend_unavailable
    from .bench import REPORT_FILES, Settings, check_backend_names, random_model, run_bench, write_reports

    if args.decode_tokens < 1 or args.repeat < 1 or args.warmup < 0:
        raise MambaExportError("--decode-tokens and --repeat must be at least 1, --warmup at least 0")
    _check_writable_dir(args.out, "--out")
    present = [name for name in REPORT_FILES.values() if (args.out / name).exists()]
    if present and not args.overwrite:  # bench.md or bench.png alone may be the user's own
        raise MambaExportError(f"{args.out} already holds {', '.join(present)}; pass --overwrite or another --out")
    if args.config and args.model:
        raise MambaExportError("give MODEL or --config, not both")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    check_backend_names(backends)
    reasons = {b: backend_unavailable(b, args.device) for b in backends}
    if all(reasons.values()):  # nothing would be measured: say why instead of an empty report
        raise MambaExportError("no backend can run here: " + "; ".join(f"{b}: {why}" for b, why in reasons.items()))
    if args.config:
        with console.step(f"Building {args.config} with random weights"):
            model = random_model(args.config)
        name = f"{args.config} (random weights)"
    else:
        name = args.model = _model_arg(args)
        model = _load(name, "fp32")
    settings = Settings(backends=backends, device=args.device,
                        dtype=args.dtype, batches=args.batch, prompt_lens=args.prompt_len,
                        decode_tokens=args.decode_tokens, warmup=args.warmup, repeat=args.repeat,
                        cuda_graphs=args.cuda_graphs)
    with tempfile.TemporaryDirectory(prefix="mamba-bench-") as work:
        results = run_bench(model, settings, Path(work))
    paths = write_reports(args.out, name, vars(settings), results)
    print(paths["md"].read_text())
    console.info(f"Wrote {', '.join(str(p) for p in paths.values())}")
    measured = any(r["status"] == "ok" for r in results)
    # 1: a backend failed (its run or its validation), or none was measured.
    return 0 if measured and all(r["status"] in ("ok", "skipped") for r in results) else 1


COMMANDS = {"export": _cmd_export, "validate": _cmd_validate, "generate": _cmd_generate, "bench": _cmd_bench,
            "build-engine": _cmd_build_engine}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console.QUIET = args.quiet or args.quiet_all
    try:
        return COMMANDS[args.command](args)
    except MambaExportError as e:
        print(f"mamba-export {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `mamba-export generate ... | head`: the reader has all it wanted
        # Python would report the pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a command ended by SIGPIPE
    except OSError as e:  # a path the checks above did not foresee: unreadable, unwritable, disk full
        message = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
        print(f"mamba-export {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
