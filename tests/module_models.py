"""Models written like users write them (importing mamba_ssm's scan, which the shim provides
here), for `mamba-export validate --entry module_models:FACTORY` in tests: pytest puts tests/
on sys.path, as the user's current directory is for the command."""

import torch
import torch.nn.functional as F
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
from torch import nn


class PatchScan(nn.Module):
    """Vision-style: patches of an image scanned forwards and backwards, then classified."""

    def __init__(self, channels=3, dim=8, d_state=4, patch=4, classes=5):
        super().__init__()
        self.d_state = d_state
        self.embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.x_proj = nn.Linear(dim, dim + 2 * d_state)
        self.A_log = nn.Parameter(torch.log(torch.arange(1.0, d_state + 1).repeat(dim, 1)))
        self.D = nn.Parameter(torch.ones(dim))
        self.head = nn.Linear(dim, classes)

    def _scan(self, x):  # x: [batch, dim, L]
        delta, B, C = self.x_proj(x.transpose(1, 2)).transpose(1, 2).split([x.shape[1], self.d_state, self.d_state], 1)
        return selective_scan_fn(x, delta, -torch.exp(self.A_log), B, C, self.D, z=x, delta_softplus=True)

    def forward(self, images):
        x = self.embed(images).flatten(2)
        y = self._scan(x) + self._scan(x.flip(-1)).flip(-1)
        return self.head(F.layer_norm(y.mean(-1), y.shape[1:2]))


class TokenTagger(nn.Module):
    """Integer ids (below VOCAB) and float features per step, one scan, a label per step."""

    VOCAB = 50

    def __init__(self, features=4, dim=8, d_state=4, classes=3):
        super().__init__()
        self.d_state = d_state
        self.embed = nn.Embedding(self.VOCAB, dim)
        self.features = nn.Linear(features, dim)
        self.x_proj = nn.Linear(dim, dim + 2 * d_state)
        self.A_log = nn.Parameter(torch.log(torch.arange(1.0, d_state + 1).repeat(dim, 1)))
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids, features):  # [batch, L] int64, [batch, L, features]
        h = self.embed(input_ids) + self.features(features)
        delta, B, C = self.x_proj(h).transpose(1, 2).split([h.shape[-1], self.d_state, self.d_state], 1)
        y = selective_scan_fn(h.transpose(1, 2), delta, -torch.exp(self.A_log), B, C, delta_softplus=True)
        return self.head(y.transpose(1, 2))


def perturbed(model: nn.Module) -> nn.Module:
    """Eval mode, every parameter moved off its initial value (so no term is trivially 0 or 1),
    the same each call. Seeds torch's global generator, so a test's next draws are fixed too."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def build_vision():
    torch.manual_seed(0)  # the same weights each call, as a factory that loads a checkpoint gives
    return perturbed(PatchScan())


def build_tagger():
    torch.manual_seed(0)
    return perturbed(TokenTagger())
