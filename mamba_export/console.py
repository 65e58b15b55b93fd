"""Progress and messages for the CLI, on stderr so stdout stays clean for text and JSON."""

from __future__ import annotations

import contextlib
import sys
import time

from tqdm.auto import tqdm

QUIET = False


def info(message: str) -> None:
    if not QUIET:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(message: str):
    """`message ... done (1.2 s)` around a block of work."""
    started = time.perf_counter()
    if not QUIET:
        print(f"{message} ...", end="", file=sys.stderr, flush=True)
    try:
        yield
    except BaseException:
        if not QUIET:
            print(" failed", file=sys.stderr, flush=True)
        raise
    if not QUIET:
        print(f" done ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)


def progress(total: int, desc: str):
    # disable=None: tqdm draws no bar where stderr is not a terminal (a log file would keep
    # every redraw, the last on the line of the next message).
    return tqdm(total=total, desc=desc, unit="step", disable=True if QUIET else None, file=sys.stderr, leave=False)
