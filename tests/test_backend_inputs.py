"""Every backend refuses token ids that are not rows of the model's embedding with the same
error, before running: ONNX Runtime's Gather would read -1 as the last row (a wrong answer
without an error) and print its own error line for ids past the end."""

import pytest
import torch

from mamba_export.backends.factory import open_backend
from mamba_export.errors import MambaExportError
from test_export import CONFIG, random_model

BACKENDS = ["torch", "ort", "ort-portable"]


@pytest.fixture(scope="module")
def model():
    return random_model()


@pytest.fixture(scope="module")
def backends(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {name: open_backend(name, model, export_dir=root / name) for name in BACKENDS}


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("bad", [-1, CONFIG.vocab_size, 2**40])
def test_ids_outside_the_vocabulary_are_refused(backends, name, bad, capfd):
    backend = backends[name]
    ids = torch.tensor([[3, 5, 7], [1, bad, 2]])
    vocab = CONFIG.vocab_size
    message = rf"^input_ids\[1, 1\] = {bad} is not a token id of this model \(its vocabulary has {vocab}: "
    message += rf"0 to {vocab - 1}\)$"
    with pytest.raises(MambaExportError, match=message):
        backend.forward(ids, backend.empty_state(2))
    assert capfd.readouterr().err == ""  # nothing but the error itself


@pytest.mark.parametrize("name", BACKENDS)
def test_float_ids_are_refused_not_truncated(backends, name):
    backend = backends[name]
    with pytest.raises(MambaExportError, match=r"^input_ids must be integer token ids, got torch.float32$"):
        backend.forward(torch.tensor([[1.7, 2.0]]), backend.empty_state(1))


@pytest.mark.parametrize("name", BACKENDS)
def test_the_first_and_last_token_ids_run(backends, model, name):
    """Ids 0 and vocab - 1 are rows of the embedding: the backend runs them as the eager model does."""
    backend = backends[name]
    ids = torch.tensor([[0, CONFIG.vocab_size - 1]], dtype=torch.int32)
    logits, _ = backend.forward(ids, backend.empty_state(1))
    with torch.no_grad():
        expected, _ = model(ids.long(), model.empty_state(1))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
