"""Feature extractors behind one interface.

An extractor maps samples in [0, 1] ([B, C, H, W] images or [B, C, T, H, W] videos) to
``{"features": [B, D], "logits": [B, K]}`` (logits only when it classifies) and names the
metrics computed in its space: the literature's networks get the plain names (``fid``, ``is``,
``fvd``), a project-trained judge carries its name (``fid_digits_cnn``) so nobody mistakes it for
the standard number. Weights are read from local files only; a missing file fails at once.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from elt.runtime.devices import single_thread
from elt.runtime.files import file_fingerprint
from elt.runtime.files import require_local_file

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's converted TF weights
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"  # StyleGAN-V's FVD detector


def to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 with 3 channels (gray repeated), the input both standard nets expect."""
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, *x.shape[2:])
    if x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")
    return x


class FeatureExtractor(nn.Module):
    name: str
    modality: str  # "image" | "video"
    fd_metric: str  # Fréchet distance in this feature space
    is_metric: str | None = None  # Inception-Score-style metric from its class probabilities
    acc_metric: str | None = None  # conditional accuracy: only when its classes are the dataset's
    fingerprint: str  # identifies the weights; keys cached reference statistics

    def __init__(self):
        super().__init__()
        self.info: dict = {}  # e.g. a judge's held-out accuracy, printed beside its metrics

    def check_input(self, x: torch.Tensor) -> None:
        want = 4 if self.modality == "image" else 5
        if x.ndim != want:
            raise ValueError(f"extractor {self.name} takes {self.modality}s ({want}-d tensors), got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class InceptionV3(FeatureExtractor):
    """torch-fidelity's TF-compatible InceptionV3 (pool 2048 for FID, unbiased logits for IS), the
    network behind published ImageNet FID/IS, loaded from a local weights file."""

    name, modality, fd_metric, is_metric = "inception", "image", "fid", "is"

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        if weights_path in (None, "", "None", "null"):
            weights_path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        path = require_local_file(weights_path, "InceptionV3 weights",
                                  f"download {INCEPTION_URL} and set eval.weights.inception=<file>")
        try:  # only ever with a path: torch-fidelity would download when given None
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                   feature_extractor_weights_path=str(path))
        except Exception as e:
            raise ValueError(f"InceptionV3 weights {path} could not be loaded ({type(e).__name__}: {str(e)[:200]})") from None
        self.fingerprint = file_fingerprint(path)

    def forward(self, x):
        self.check_input(x)
        features, logits = self.net(to_uint8_rgb(x))
        return {"features": features, "logits": logits}


class I3D(FeatureExtractor):
    """The Kinetics-400 I3D that defines FVD, as StyleGAN-V's TorchScript file: called on uint8
    videos [B, 3, T, H, W] with ``rescale=True, resize=True, return_features=True`` (it maps
    [0, 255] to [-1, 1] and resizes to 224 itself), returning 400-d pre-softmax features."""

    name, modality, fd_metric = "i3d", "video", "fvd"

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        path = require_local_file(weights_path, "I3D TorchScript detector",
                                  f"download {I3D_URL} (i3d_torchscript.pt) and set eval.weights.i3d=<file>")
        try:
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:
            raise ValueError(f"I3D detector {path} is not a loadable TorchScript file ({type(e).__name__}: {str(e)[:200]})") from None
        self.fingerprint = file_fingerprint(path)

    def forward(self, x):
        self.check_input(x)
        return {"features": self.net(to_uint8_rgb(x), rescale=True, resize=True, return_features=True).float()}


class JudgeExtractor(FeatureExtractor):
    """A project-trained classifier of the dataset (see judges.py): its penultimate features and
    logits give ``fid_<name>``/``fvd_<name>``, ``is_<name>`` and ``acc_<name>``."""

    def __init__(self, net: nn.Module, info: dict, modality: str):
        super().__init__()
        self.net, self.info, self.modality = net.eval(), dict(info), modality
        self.name = info["name"]
        self.fd_metric = f"{'fid' if modality == 'image' else 'fvd'}_{self.name}"
        self.is_metric, self.acc_metric = f"is_{self.name}", f"acc_{self.name}"
        self.fingerprint = info["key"]

    def forward(self, x):
        self.check_input(x)
        with single_thread():  # as in training: a net this small is far slower on busy threads
            features, logits = self.net.features(x)
        return {"features": features, "logits": logits}


STANDARD_EXTRACTORS = {"inception": InceptionV3, "i3d": I3D}  # eval.extractors names of the literature's networks
