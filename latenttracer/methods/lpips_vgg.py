"""LPIPS with a VGG16 backbone (Zhang et al., CVPR 2018), in plain torch, weights from local files.

No weights are downloaded and torchvision is not used. The network is VGG16's convolutional ``features``
stack (conv widths 64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3; 3x3 convolutions with padding 1, ReLU,
2x2 max pooling), laid out with torchvision's indices so its state dict loads unchanged. LPIPS taps it after
the ReLUs ``relu1_2, relu2_2, relu3_3, relu4_3, relu5_3`` (layers 1..5). The distance of two images in [0, 1]:

1. map to [-1, 1], then LPIPS' scaling layer ``(x - shift) / scale`` with shift ``(-0.030, -0.088, -0.188)``
   and scale ``(0.458, 0.448, 0.450)``;
2. at each used layer, unit-normalise both feature maps over channels (``f / (||f||_2 + 1e-10)``), take the
   squared difference, apply the layer's learned 1x1 linear weights (no bias), average over space;
3. sum over the used layers (AEROBLADE's ``lpips_vgg_2`` uses layer 2 alone).

Weights (:func:`load_lpips_vgg`): ``vgg_weights`` is torchvision's ImageNet VGG16 checkpoint
(``vgg16-397923af.pth``, keys ``features.N.weight|bias``; a bare ``N.weight`` layout or a ``.safetensors``
file also work); ``lpips_weights`` is the lpips package's ``weights/v0.1/vgg.pth`` (keys
``linK.model.1.weight``, or ``linK.weight``), K = 0..4 for layers 1..5.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["LAYER_CHANNELS", "LPIPSVGG", "VGG16_CONFIG", "file_fingerprint", "load_lpips_vgg", "missing_weights"]

VGG16_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                       512, 512, 512)
LAYER_END = (4, 9, 16, 23, 30)  # torchvision feature indices just after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LAYER_CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
HOW_TO_GET = ("VGG16 weights: torchvision's ImageNet checkpoint vgg16-397923af.pth "
              "(https://download.pytorch.org/models/vgg16-397923af.pth); LPIPS linear weights: the lpips "
              "package's lpips/weights/v0.1/vgg.pth (pip download lpips). Or use a weight-free distance: "
              "--distance l2 or ssim.")


def _vgg_features(upto: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(item)
    return nn.Sequential(*layers[:upto])


class LPIPSVGG(nn.Module):
    """LPIPS-VGG restricted to ``layers`` (1-based: 2 = relu2_2); see the module docstring."""

    def __init__(self, layers: Sequence[int] = (2,)):
        super().__init__()
        layers = tuple(sorted(set(int(k) for k in layers)))
        if not layers or layers[0] < 1 or layers[-1] > 5:
            raise ValueError(f"LPIPS-VGG layers must be in 1..5, got {layers}")
        self.layers = layers
        self.features = _vgg_features(LAYER_END[layers[-1] - 1])
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in LAYER_CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def _taps(self, x01: torch.Tensor) -> dict[int, torch.Tensor]:
        h = ((x01 * 2 - 1) - self.shift) / self.scale
        out, start = {}, 0
        for k in range(1, self.layers[-1] + 1):
            end = LAYER_END[k - 1]
            for module in self.features[start:end]:
                h = module(h)
            start = end
            if k in self.layers:
                out[k] = h
        return out

    @torch.no_grad()
    def forward(self, x01: torch.Tensor, y01: torch.Tensor) -> torch.Tensor:
        """Per-image distance of two batches of images in [0, 1]."""
        fx, fy = self._taps(x01), self._taps(y01)
        total = torch.zeros(x01.shape[0], device=x01.device, dtype=torch.float32)
        for k in self.layers:
            a = fx[k] / (fx[k].square().sum(1, keepdim=True).sqrt() + 1e-10)
            b = fy[k] / (fy[k].square().sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + self.lins[k - 1]((a - b).square()).float().mean((1, 2, 3))
        return total


def file_fingerprint(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def missing_weights(vgg_weights: str | None, lpips_weights: str | None) -> str | None:
    """A message naming what is missing (``None`` when both files exist)."""
    problems = []
    for key, value in (("vgg_weights", vgg_weights), ("lpips_weights", lpips_weights)):
        if not value:
            problems.append(f"{key} not given")
        elif not Path(value).expanduser().is_file():
            problems.append(f"{key} file {value} not found")
    return "; ".join(problems) + f". {HOW_TO_GET}" if problems else None


def _read_state(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{what} {path}: cannot read weights ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{what} {path}: expected a state dict, got {type(state).__name__}")
    return state


def load_lpips_vgg(vgg_weights: str | Path, lpips_weights: str | Path, layers: Sequence[int] = (2,)) -> LPIPSVGG:
    """Build :class:`LPIPSVGG` and load both weight files (see the module docstring for their layouts).

    Raises:
        FileNotFoundError: a file is missing (the message says which and how to obtain it).
        ValueError: a file is unreadable or lacks a needed tensor (named), or a tensor has the wrong shape.
    """
    message = missing_weights(str(vgg_weights) if vgg_weights else None, str(lpips_weights) if lpips_weights
                              else None)
    if message:
        raise FileNotFoundError(f"aeroblade lpips_vgg distance: {message}")
    net = LPIPSVGG(layers)
    vgg = _read_state(vgg_weights, "vgg_weights")
    lin = _read_state(lpips_weights, "lpips_weights")
    wanted: dict[str, torch.Tensor] = {}
    for key in net.features.state_dict():
        for candidate in (f"features.{key}", key):
            if candidate in vgg:
                wanted[f"features.{key}"] = vgg[candidate]
                break
        else:
            raise ValueError(f"vgg_weights {vgg_weights}: no tensor features.{key} (found e.g. {sorted(vgg)[:4]})")
    for k in range(5):
        for candidate in (f"lin{k}.model.1.weight", f"lin{k}.weight"):
            if candidate in lin:
                wanted[f"lins.{k}.weight"] = lin[candidate]
                break
        else:
            if k + 1 in net.layers:
                raise ValueError(f"lpips_weights {lpips_weights}: no tensor lin{k}.model.1.weight "
                                 f"(found e.g. {sorted(lin)[:4]})")
            wanted[f"lins.{k}.weight"] = net.lins[k].weight
    wanted["shift"], wanted["scale"] = net.shift, net.scale
    try:
        net.load_state_dict(wanted, strict=True)
    except RuntimeError as err:
        raise ValueError(f"LPIPS-VGG weights ({vgg_weights}, {lpips_weights}) do not fit VGG16: {err}") from err
    return net

