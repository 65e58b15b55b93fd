"""Trains the shipped byte-level models on this machine's Python standard library:
models/mamba1-pystdlib (Mamba-1) and models/mamba2-pystdlib (Mamba-2), one recipe for both.

Corpus: the top-level ``*.py`` files of ``sysconfig.get_paths()["stdlib"]`` (CPython's own
source, PSF License Agreement v2, see LICENSE.txt in that directory), read as raw bytes; the
files named by --val-files are held out for validation. The training log records the file
count, byte count and sha256 of both splits, so a run on another Python version is visible.

Tokens are bytes (vocab 256, id = byte value); tokenizer.json encodes text to its UTF-8 bytes.

The defaults of each --architecture reproduce its shipped checkpoint (on 2 CPU cores; see
its README.md):

    .venv/bin/python models/recipes/train_pystdlib.py --architecture mamba1
    .venv/bin/python models/recipes/train_pystdlib.py --architecture mamba2
    .venv/bin/python models/recipes/train_pystdlib.py --architecture mamba2 --out /tmp/try --steps 20

Writes config.json + model.safetensors (mamba_export.save_pretrained, HF layout),
tokenizer.json and training_log.json (arguments, corpus, loss curve, samples) into --out
(default models/<architecture>-pystdlib), which must not exist yet unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from mamba_export import save_pretrained  # noqa: E402
from mamba_export.models import ARCHITECTURES, build_model  # noqa: E402

VAL_FILES = ("difflib.py", "fractions.py", "textwrap.py")
PROMPTS = ("def __init__(self", "import ", "class ", "    for i in range(", "    if not isinstance(")

# The config fields each architecture takes from the command line (the others keep the
# config's defaults); an option of another architecture is refused rather than ignored.
MODEL_OPTIONS = {
    "mamba1": ("d_state", "expand"),
    "mamba2": ("d_state", "expand", "headdim", "ngroups", "chunk_size"),
}
# Where the shipped checkpoints' settings differ; everything else is the parser's default.
DEFAULTS = {
    "mamba1": {"d_state": 16, "steps": 450, "eval_every": 50},
    # Mamba-1's width and depth. A step through the chunked SSD reference costs less than
    # Mamba-1's on this CPU: more steps fit in less time. chunk_size: the reference's.
    "mamba2": {"d_state": 64, "headdim": 32, "ngroups": 1, "chunk_size": 64, "steps": 700, "eval_every": 100},
}


# ---- data ------------------------------------------------------------------------------------


def stdlib_corpus(val_names: tuple[str, ...]) -> tuple[bytes, bytes, dict]:
    """(train bytes, validation bytes, manifest): the stdlib's top-level .py files, sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    missing = set(val_names) - {f.name for f in files}
    if missing:
        raise SystemExit(f"error: validation file(s) {sorted(missing)} not found in {root}")
    splits = {"train": [f for f in files if f.name not in val_names], "val": [f for f in files if f.name in val_names]}
    data, manifest = {}, {"python": platform.python_version(), "stdlib": str(root), "licence": "PSF License Agreement v2"}
    for split, paths in splits.items():
        data[split] = b"".join(p.read_bytes() for p in paths)
        manifest[split] = {
            "files": len(paths),
            "bytes": len(data[split]),
            "sha256": hashlib.sha256(data[split]).hexdigest(),
        }
    manifest["val"]["names"] = list(val_names)
    return data["train"], data["val"], manifest


def unigram_bits_per_byte(train: bytes, val: bytes) -> float:
    """Cross-entropy of val under train's byte frequencies (add-one smoothed): the no-context baseline."""
    counts = torch.bincount(torch.frombuffer(bytearray(train), dtype=torch.uint8).long(), minlength=256) + 1
    logp = torch.log2(counts / counts.sum())
    return -logp[torch.frombuffer(bytearray(val), dtype=torch.uint8).long()].mean().item()


def byte_tokenizer():
    """A tokenizers.Tokenizer whose ids are the UTF-8 byte values: byte-level BPE without merges,
    vocabulary ordered by byte value (ByteLevel spells each byte as one printable character)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    # ByteLevel's byte -> character table: printable Latin-1 bytes stand for themselves,
    # the others take the characters from U+0100 on, in byte order.
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    others = iter(range(0x100, 0x200))
    chars = {b: chr(b) if b in printable else chr(next(others)) for b in range(256)}
    tokenizer = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


# ---- model -----------------------------------------------------------------------------------


def model_config(args):
    """The architecture's config from the command line; a size it cannot take is a one-line error."""
    foreign = {o for options in MODEL_OPTIONS.values() for o in options} - set(MODEL_OPTIONS[args.architecture])
    given = sorted(f"--{o.replace('_', '-')}" for o in foreign if getattr(args, o) is not None)
    if given:
        raise SystemExit(f"error: {', '.join(given)}: not an option of --architecture {args.architecture}")
    options = {o: getattr(args, o) for o in MODEL_OPTIONS[args.architecture]}
    try:
        return ARCHITECTURES[args.architecture].config(d_model=args.d_model, n_layer=args.n_layer, vocab_size=256,
                                                       **options)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def init_weights(model, dt_min=1e-3, dt_max=1e-1) -> None:
    """Mamba's usual initialisation: small embeddings, output projections scaled down with depth
    so the residual stream starts near identity, time steps in [dt_min, dt_max]. Mamba-2's mixer
    spreads its per-head time steps over that range itself; Mamba-1's come from dt_proj, a plain
    Linear, set here (weights, then log-uniform time steps through its bias)."""
    cfg = model.config
    torch.nn.init.normal_(model.backbone.embeddings.weight, std=0.02)
    for layer in model.backbone.layers:
        mixer = layer.mixer
        if cfg.architecture == "mamba1":
            bound = cfg.dt_rank**-0.5
            torch.nn.init.uniform_(mixer.dt_proj.weight, -bound, bound)
            dt = torch.exp(torch.rand(cfg.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            with torch.no_grad():
                mixer.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) = dt
        with torch.no_grad():
            mixer.out_proj.weight /= math.sqrt(cfg.n_layer)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on the matrices only (not on A_log, D, dt_bias, norms, biases)."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.endswith("A_log") else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_at(step: int, args) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, batch: int) -> float:
    """Mean next-byte cross-entropy (nats) over fixed windows [n, seq_len + 1]."""
    model.eval()
    total = 0.0
    for chunk in windows.split(batch):
        logits, _ = model(chunk[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum").item()
    model.train()
    return total / (windows.shape[0] * (windows.shape[1] - 1))


@torch.no_grad()
def decode(model, prompt: bytes, n: int, temperature: float = 0.0, generator=None) -> bytes:
    """Prefill the prompt, then decode n bytes one at a time with the recurrent state:
    greedy at temperature 0, else sampled from softmax(logits / temperature)."""
    model.eval()
    logits, state = model(torch.tensor([list(prompt)]))
    out = []
    for _ in range(n):
        last = logits[0, -1]
        if temperature:
            token = torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=generator).item()
        else:
            token = last.argmax().item()
        out.append(token)
        logits, state = model(torch.tensor([[token]]), state)
    model.train()
    return bytes(out)


def samples(model, args) -> list[dict]:
    """Per prompt: greedy and sampled continuations, as text (a byte that is not UTF-8 shows as U+FFFD)."""
    # Sampling draws from its own generator: the global one (initialisation) is left as it was.
    generator = torch.Generator().manual_seed(args.seed + 2)
    out = []
    for prompt in PROMPTS:
        greedy = decode(model, prompt.encode(), args.sample_bytes)
        sampled = decode(model, prompt.encode(), args.sample_bytes, args.sample_temperature, generator)
        out.append({"prompt": prompt, "greedy": greedy.decode("utf-8", "replace"),
                    "sampled": sampled.decode("utf-8", "replace")})
    return out


# ---- main ------------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name where Linux tells it (platform.processor() is often empty)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def parse_args(argv=None):
    per_architecture = "per --architecture: --architecture NAME --help shows it"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--architecture", required=True, choices=sorted(MODEL_OPTIONS))
    p.add_argument("--out", type=Path, help="output checkpoint directory (default: models/<architecture>-pystdlib)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoint, tokenizer and log of an existing --out (README.md is kept)")
    p.add_argument("--d-model", type=int, default=192)
    p.add_argument("--n-layer", type=int, default=3)
    p.add_argument("--d-state", type=int, help=per_architecture)
    p.add_argument("--expand", type=int, default=2)
    p.add_argument("--headdim", type=int, help=f"Mamba-2 only; {per_architecture}")
    p.add_argument("--ngroups", type=int, help=f"Mamba-2 only; {per_architecture}")
    p.add_argument("--chunk-size", type=int, help=f"Mamba-2 only, recorded in config.json; {per_architecture}")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, help=per_architecture)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    p.add_argument("--eval-every", type=int, help=per_architecture)
    p.add_argument("--eval-windows", type=int, default=24, help="validation windows of seq_len + 1 bytes")
    p.add_argument("--sample-bytes", type=int, default=120, help="bytes per prompt in the log's samples")
    p.add_argument("--sample-temperature", type=float, default=0.8, help="of the sampled (not greedy) samples")
    p.add_argument("--val-files", nargs="+", default=list(VAL_FILES), help="stdlib files held out")
    p.add_argument("--seed", type=int, default=0)
    # On a shared, oversubscribed 2-core machine 2 OpenMP threads wait on each other at every
    # small op of the scan loops: one thread measured 8x faster there.
    p.add_argument("--threads", type=int, default=1)
    # The architecture's defaults before the real parse: given options win, and
    # `--architecture mamba2 --help` shows Mamba-2's.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--architecture", choices=sorted(MODEL_OPTIONS))
    chosen = pre.parse_known_args(argv)[0].architecture
    p.set_defaults(**DEFAULTS.get(chosen, {}))
    args = p.parse_args(argv)
    if args.out is None:
        args.out = REPO / "models" / f"{args.architecture}-pystdlib"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = model_config(args)
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise SystemExit(f"error: {args.out} exists and is not empty; pass --overwrite to replace its files")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    train, val, corpus = stdlib_corpus(tuple(args.val_files))
    corpus["unigram_val_bits_per_byte"] = unigram_bits_per_byte(train, val)
    print(f"corpus: {corpus['train']['files']} train files ({corpus['train']['bytes']} bytes), "
          f"{corpus['val']['files']} validation files ({corpus['val']['bytes']} bytes); "
          f"unigram baseline {corpus['unigram_val_bits_per_byte']:.3f} bits/byte", flush=True)
    train_ids = torch.frombuffer(bytearray(train), dtype=torch.uint8).long()
    val_ids = torch.frombuffer(bytearray(val), dtype=torch.uint8).long()
    span = args.seq_len + 1
    n_windows = min(args.eval_windows, len(val_ids) // span)
    stride = len(val_ids) // n_windows  # evenly spread over the validation files
    val_windows = torch.stack([val_ids[i * stride : i * stride + span] for i in range(n_windows)])

    model = build_model(cfg)
    init_weights(model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters, {cfg}", flush=True)
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95))
    data_rng = torch.Generator().manual_seed(args.seed + 1)

    log = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "config": cfg.to_dict(), "parameters": n_params, "corpus": corpus,
           "hardware": {"machine": platform.machine(), "processor": cpu_name(),
                        "torch": torch.__version__, "threads": torch.get_num_threads()},
           "untrained_samples": samples(model, args), "curve": []}
    start, train_losses = time.time(), []
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            val_loss = evaluate(model, val_windows, args.batch)
            point = {"step": step, "tokens": step * args.batch * args.seq_len,
                     "train_loss": sum(train_losses) / len(train_losses) if train_losses else None,
                     "val_loss": val_loss, "val_bits_per_byte": val_loss / math.log(2),
                     "lr": lr_at(min(step, args.steps - 1), args), "elapsed_s": round(time.time() - start, 1)}
            log["curve"].append(point)
            train_losses = []
            train_text = f"{point['train_loss']:.4f}" if point["train_loss"] is not None else "-"
            print(f"step {step:5d}  train {train_text}  val {val_loss:.4f} ({point['val_bits_per_byte']:.3f} bpb)"
                  f"  {point['elapsed_s']:.0f}s", flush=True)
        if step == args.steps:
            break
        starts = torch.randint(0, len(train_ids) - span, (args.batch,), generator=data_rng)
        batch = torch.stack([train_ids[s : s + span] for s in starts])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        logits, _ = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        train_losses.append(loss.item())

    log["train_time_s"] = round(time.time() - start, 1)
    log["samples"] = samples(model, args)
    save_pretrained(model, args.out, overwrite=args.overwrite)
    byte_tokenizer().save(str(args.out / "tokenizer.json"))
    (args.out / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
    for s in log["samples"]:
        print(f"--- {s['prompt']!r} greedy\n{s['prompt']}{s['greedy']}\n--- sampled\n{s['prompt']}{s['sampled']}")
    print(f"wrote {args.out} ({log['train_time_s']:.0f}s of training)")


if __name__ == "__main__":
    main()
