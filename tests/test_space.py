"""Space: the one type every comparison of embedding spaces goes through, and its one mismatch wording."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from taskindex import Embedding, IncompatibleEmbeddingsError, d_sym
from taskindex.space import Space

META = {"probe": "resnet18", "fingerprint": "abc", "image_size": 32, "method": "montecarlo", "prior_scale": 1e-8,
        "estimator": "trimmed:0.1", "task": "t", "weights": "imagenet", "n_samples": 10}


def test_of_keeps_the_identity_keys_only_and_defaults_the_estimator_of_old_embeddings():
    space = Space.of(META)
    assert space.to_dict() == {k: META[k] for k in ("probe", "fingerprint", "image_size", "method", "prior_scale",
                                                    "estimator")}
    old = {k: v for k, v in META.items() if k != "estimator"}
    assert Space.of(old).estimator == "mean"
    assert Space.of({**META, "task": "other", "weights": "/x.pt"}) == space  # provenance is not identity
    with pytest.raises(dataclasses.FrozenInstanceError):
        space.probe = "resnet34"


def test_differences_names_each_key_that_differs_in_order():
    a = Space.of(META)
    b = Space.of({**META, "probe": "resnet34", "image_size": 64})
    assert a.differences(b) == "probe: 'resnet18' vs 'resnet34'; image_size: 32 vs 64"
    assert a.differences(a) == ""


def test_embed_options_are_those_of_the_estimator_and_method():
    assert Space.of(META).embed_options() == {"method": "montecarlo", "prior_scale": 1e-8, "estimator": "trimmed",
                                              "trim": 0.1}
    assert Space.of({**META, "estimator": "mean"}).embed_options()["trim"] is None


def test_distances_refuse_other_spaces_with_the_space_wording():
    layout = [("conv", 4)]
    prior = np.full(4, 1e-8, np.float32)
    a = Embedding(np.ones(4, np.float32), prior, layout, dict(META))
    b = Embedding(np.ones(4, np.float32), prior, layout, {**META, "method": "variational"})
    with pytest.raises(IncompatibleEmbeddingsError, match="method: 'montecarlo' vs 'variational'"):
        d_sym(a, b)
    assert a.space == Space.of(META).to_dict()
