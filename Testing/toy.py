"""Tiny toy models and data for tests (and anyone who needs a seconds-to-train stand-in).

Toy volumes: (S, 1, H, W) in [0, 1], a smooth background with a fixed "anatomy" disc; a positive
volume (class 1) also holds a small bright Gaussian blob at a random place on one slice. The blob's
region (disc of radius ``region_radius`` around its centre, on its slice) is returned as a mask.

The models follow the contract of docs/INTERFACES.md: classifiers take (B, S, 1, H, W), have
``counterfactual_logits``, ``cam_layer`` (output (B*S, C, h, w)), ``num_classes`` and ``needs_saliency``;
the autoencoder maps (N, 1, H, W) <-> (N, 16, H/4, W/4).
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F


def make_toy_volumes(n, slices=4, size=32, seed=0, blob_amplitude=0.6, blob_sigma=1.5, region_radius=3,
                     positive_fraction=0.5):
    """-> x (n, S, 1, H, W) float32, y (n,) long, region (n, S, 1, H, W) bool (empty for negatives)."""
    g = torch.Generator().manual_seed(seed)
    H = W = size
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                            indexing="ij")
    anatomy = ((yy - H / 2) ** 2 + (xx - W / 2) ** 2 < (0.4 * size) ** 2).float() * 0.15
    noise = torch.rand(n, slices, 1, H // 4, W // 4, generator=g)
    noise = F.interpolate(noise.reshape(n * slices, 1, H // 4, W // 4), size=(H, W), mode="bilinear",
                          align_corners=False).reshape(n, slices, 1, H, W)
    x = 0.2 + anatomy + 0.1 * noise
    y = (torch.rand(n, generator=g) < positive_fraction).long()
    region = torch.zeros(n, slices, 1, H, W, dtype=torch.bool)
    margin = region_radius + 3
    for i in range(n):
        if y[i] == 0:
            continue
        s = int(torch.randint(slices, (1,), generator=g))
        cy, cx = (int(v) for v in torch.randint(margin, size - margin, (2,), generator=g))
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        x[i, s, 0] += blob_amplitude * torch.exp(-d2 / (2 * blob_sigma ** 2))
        region[i, s, 0] = d2 <= region_radius ** 2
    return x.clamp(0, 1), y, region


class ToyClassifier(nn.Module):
    """Per-slice CNN, smooth max pooled over the whole slice stack, linear head (binary by default)."""

    model_name = "toy_classifier"
    needs_saliency = False

    def __init__(self, num_classes=2, width=8, in_channels=1):
        super().__init__()
        self.num_classes = num_classes
        self.config = {"num_classes": num_classes, "width": width}
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True),   # in-place: the hook trap
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.cam_layer = self.features
        self.fc = nn.Linear(2 * width, num_classes)

    def pooled(self, x):
        B, S, C, H, W = x.shape
        f = self.features(x.reshape(B * S, C, H, W) - 0.35)        # centred input trains reliably
        f = f.reshape(B, S, f.shape[1], -1).permute(0, 2, 1, 3).reshape(B, f.shape[1], -1)
        return torch.logsumexp(4.0 * f, dim=2) / 4.0                # smooth max over (S, h, w)

    def forward(self, x):
        return self.fc(self.pooled(x))

    def counterfactual_logits(self, x):
        return self.forward(x)


class ToyBrainClassifier(ToyClassifier):
    """Brain-like 4-class output (log-probs: no lesion, left, right, both) with a lesion head (K=2)
    steered by counterfactuals and a side head; untrained, for contract/shape tests."""

    model_name = "toy_brain"

    def __init__(self, width=8):
        super().__init__(num_classes=2, width=width)
        self.num_classes = 4
        self.side = nn.Linear(2 * width, 3)

    def forward_heads(self, x):
        f = self.pooled(x)
        return self.fc(f), self.side(f)

    def forward(self, x):
        lesion, side = self.forward_heads(x)
        lp, sp = F.log_softmax(lesion, 1), F.log_softmax(side, 1)
        return torch.cat([lp[:, :1], lp[:, 1:] + sp], 1)

    def counterfactual_logits(self, x):
        return self.forward_heads(x)[0]


class ToySaliencyAided(nn.Module):
    """A saliency-aided classifier (like ACAT): forward(x, saliency) sees x and its saliency map."""

    model_name = "toy_aided"
    needs_saliency = True

    def __init__(self, base: ToyClassifier):
        super().__init__()
        self.base = base
        self.num_classes = base.num_classes
        self.cam_layer = base.cam_layer

    def forward(self, x, saliency):
        return self.base(x * (1 + saliency))

    def counterfactual_logits(self, x, saliency):
        return self.forward(x, saliency)


class ToyAutoencoder(nn.Module):
    """(N, 1, H, W) -> z (N, 16, H/4, W/4) -> (N, 1, H, W); no output activation (as the paper's)."""

    model_name = "toy_autoencoder"

    def __init__(self, width=16):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(1, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 16, 3, stride=2, padding=1))
        self.dec = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(16, width, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 1, 3, padding=1))

    def encode(self, x):
        return self.enc(x)

    def decode(self, z):
        return self.dec(z)

    def forward(self, x):
        return self.decode(self.encode(x))


def train_classifier(model, x, y, epochs=60, lr=1e-2, batch=32, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def train_autoencoder(model, x, epochs=60, lr=3e-3, batch=64, seed=0):
    torch.manual_seed(seed)
    slices = x.reshape(-1, 1, *x.shape[-2:])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(slices))
        for i in range(0, len(slices), batch):
            s = slices[perm[i:i + batch]]
            loss = F.mse_loss(model(s), s)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


_TRAINED = {}


@contextlib.contextmanager
def single_thread():
    """Run torch on one thread (tiny models on shared cores: threads only spin), then restore."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def trained_toy(seed=0):
    """Train (once per process) a toy classifier and autoencoder; returns a dict with the models and a
    held-out test set: clf, ae, x_test, y_test, region_test."""
    if seed not in _TRAINED:
        torch.manual_seed(seed)
        x, y, _ = make_toy_volumes(96, seed=seed)
        torch.manual_seed(seed)
        clf = train_classifier(ToyClassifier(), x, y, epochs=30, seed=seed)
        ae = train_autoencoder(ToyAutoencoder(width=8), x, epochs=25, lr=5e-3, batch=32, seed=seed)
        xt, yt, rt = make_toy_volumes(24, seed=seed + 1000)
        _TRAINED[seed] = dict(clf=clf, ae=ae, x_test=xt, y_test=yt, region_test=rt)
    return _TRAINED[seed]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Module fixture: the whole test module on one torch thread. Use it with
    ``from toy import one_torch_thread`` and ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    with single_thread():
        yield
