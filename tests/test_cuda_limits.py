"""The CUDA kernel library's own limits, on top of docs/ops.md's contract: checked on the
host (no GPU needed), so a block the kernels cannot run is refused with a message instead
of overflowing inside a kernel."""

from __future__ import annotations

import pytest

from mamba_export.errors import MissingDependencyError
from mamba_export.ops.cuda import ScanParams, cuda_limit, load_library


@pytest.fixture(scope="module")
def lib():
    try:
        return load_library()
    except MissingDependencyError as e:
        pytest.skip(f"needs libmamba_kernels.so (make native, with nvcc): {e}")


def block(batch=1, dim=8, seqlen=16, dstate=16) -> ScanParams:
    """A valid parameter block; the check reads sizes and pointers, never the memory behind them."""
    fake = 4096
    return ScanParams(batch, dim, seqlen, dstate, 1, 0, fake, fake, fake, fake, fake, None, None, None, None,
                      1, fake, fake)  # fmt: skip


def test_a_valid_block_passes(lib):
    assert cuda_limit(lib, block()) is None


@pytest.mark.parametrize("sizes, message", [
    ({"seqlen": 2**30}, "seqlen must be < 2^30"),
    ({"batch": 2**16, "dim": 2**15}, "batch * dim must be < 2^31"),
    ({"dstate": 257}, "dstate must be <= 256"),
])  # fmt: skip
def test_the_kernels_limits_are_refused_with_their_reason(lib, sizes, message):
    assert message in cuda_limit(lib, block(**sizes))


def test_the_longest_sequence_within_the_limit_passes(lib):
    assert cuda_limit(lib, block(seqlen=2**30 - 1)) is None
