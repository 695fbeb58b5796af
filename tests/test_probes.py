"""The probe registry: names, weights, identity."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torchvision

from taskindex import Probe, list_probes, load_probe
from taskindex.errors import ProbeError


def test_registry_lists_the_documented_probes():
    assert {"efficientnet_lite0", "resnet18", "resnet34", "resnet50", "densenet121"} <= set(list_probes())


def test_listing_the_probes_loads_no_pytorch():
    """`taskindex probes` answers without the seconds of importing PyTorch: the registry is torch-free."""
    code = """
import sys
from taskindex.cli import cli
sys.argv = ["taskindex", "probes", "--json"]
try:
    cli()
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
print("HEAVY", sorted(m for m in ("torch", "torchvision") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    listed = json.loads(out[:out.index("HEAVY")])
    assert {p["name"] for p in listed} >= {"efficientnet_lite0", "resnet18", "densenet121"}
    assert out.strip().endswith("HEAVY []")


def test_unknown_probe_name_suggests_the_closest():
    with pytest.raises(ProbeError, match="unknown probe 'resnet43'.*resnet34"):
        load_probe("resnet43")


def test_shipped_imagenet_weights_load_offline_and_are_fingerprinted():
    a = load_probe("efficientnet_lite0", image_size=32)
    b = load_probe("efficientnet_lite0", image_size=32)
    r = load_probe("efficientnet_lite0", weights=None, image_size=32)
    assert a.weights == "imagenet" and r.weights == "random"
    assert a.fingerprint == b.fingerprint != r.fingerprint
    assert a.identity == {"probe": "efficientnet_lite0", "weights": "imagenet",
                          "fingerprint": a.fingerprint, "image_size": 32}


def test_local_weights_file_round_trip_and_wrong_architecture(tmp_path):
    torch.manual_seed(3)
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    probe = load_probe("resnet18", weights=str(path), image_size=32)
    assert probe.dim == 4800 and probe.weights == str(path)
    with pytest.raises(ProbeError, match="does not fit probe 'resnet34'"):
        load_probe("resnet34", weights=str(path))
    with pytest.raises(ProbeError, match="does not exist"):
        load_probe("resnet18", weights=str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ProbeError, match="cannot read weights file"):
        load_probe("resnet18", weights=str(tmp_path / "junk.pt"))


def test_random_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = load_probe("resnet18", weights=None, image_size=32)
    after = torch.rand(1)
    assert torch.equal(expected, after)
    assert a.fingerprint == load_probe("resnet18", weights=None, image_size=32).fingerprint


def test_from_module_validates_its_inputs():
    with pytest.raises(ProbeError, match="torch.nn.Module"):
        Probe.from_module("resnet", 10, name="x")
    with pytest.raises(ProbeError, match="no Conv2d"):
        Probe.from_module(torch.nn.Linear(3, 3), 3, name="mlp")
    with pytest.raises(ProbeError, match="image_size"):
        load_probe("resnet18", weights=None, image_size=4)
