"""taskindex.optim: torch.optim's Adam and AdamW steps without the Optimizer class (its first use imports
torch._dynamo, a second of start-up in every process that embeds or fits MODEL2VEC)."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from taskindex.optim import Adam  # noqa: E402


def _fit(make) -> list:
    """30 steps of a two-parameter softmax regression, one parameter group with decay and one without."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(50, 7, generator=gen).requires_grad_(True)
    b = torch.randn(7, generator=gen).requires_grad_(True)
    x, y = torch.randn(200, 50, generator=gen), torch.randint(0, 7, (200,), generator=gen)
    opt = make(w, b)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(x @ w + b, y).backward()
        opt.step()
    return [w.detach(), b.detach()]


@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_the_steps_are_torch_optims_bit_for_bit(decoupled):
    reference = torch.optim.AdamW if decoupled else torch.optim.Adam
    want = _fit(lambda w, b: reference([{"params": [w], "weight_decay": 0.01}, {"params": [b], "weight_decay": 0.0}],
                                       lr=0.05))
    got = _fit(lambda w, b: Adam([([w], 0.01), ([b], 0.0)], lr=0.05, decoupled=decoupled))
    assert all(torch.equal(g, r) for g, r in zip(got, want))
    other = _fit(lambda w, b: Adam([([w], 0.01), ([b], 0.0)], lr=0.05, decoupled=not decoupled))
    assert not torch.equal(other[0], want[0])  # the decay's kind shows: the comparison can fail


def test_fitting_a_head_never_imports_torch_dynamo():
    code = ("import sys, torch\n"
            "from taskindex.embedding.head import fit_head\n"
            "fit_head(torch.randn(40, 8), torch.arange(40) % 2, 2)\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False"
