"""Issue 22, item 3: a bound knows its model, and only the accountant mints a certificate.

Every consumer of a certificate (``evaluate``, ``certified_radius``, ``report.certify``) refuses a bound of
another model with one line naming both, and a bound built by hand, by ``dataclasses.replace`` or from a
record is not a certificate (refused, or labelled ``estimated`` with ``allow_estimate=True``).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lipzoo.bounds import LipschitzBound, lipschitz_bound
from lipzoo.bounds.certificate import check_bound_for
from lipzoo.certify import certified_radius, evaluate, pairwise_constants
from lipzoo.certify.report import certify

SHAPE = (6,)


def _pair(scale: float = 0.01):
    """A model and its twin with every weight scaled by ``scale`` (a 100x smaller twin by default)."""
    torch.manual_seed(5)
    a = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).double().eval()
    b = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).double().eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(scale)
    x = torch.rand(64, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = a(x).argmax(1)
    return a, b, x, y


def test_a_bound_records_whose_it_is():
    a, b, _, _ = _pair()
    ba, bb = lipschitz_bound(a, SHAPE, cache=False), lipschitz_bound(b, SHAPE, cache=False)
    assert ba.trusted and bb.trusted and ba.fingerprint != bb.fingerprint
    assert tuple(ba.details["input_shape"]) == SHAPE and "fingerprint" in ba.model_summary
    check_bound_for(ba, a, SHAPE)  # its own model: accepted
    with pytest.raises(ValueError, match=r"another model \(.*\), not to this one \(.*\)"):
        check_bound_for(bb, a, SHAPE)
    with pytest.raises(ValueError, match="another model"):  # another structure altogether
        check_bound_for(ba, nn.Sequential(nn.Linear(6, 3)).double(), SHAPE)


def test_evaluate_refuses_the_bound_of_a_smaller_twin():
    """The issue's reproduction with other numbers: B's bound is 100x smaller, so it would certify far more."""
    a, b, x, y = _pair()
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    own, foreign = lipschitz_bound(a, SHAPE, cache=False), lipschitz_bound(b, SHAPE, cache=False)
    off = ~torch.eye(3, dtype=torch.bool)
    assert float(foreign.value[off].max()) < float(own.value[off].min())
    with pytest.raises(ValueError, match="evaluate: the bound belongs to another model") as err:
        evaluate(a, loader, foreign, [0.05], progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="another model"):  # allow_estimate does not make it this model's
        evaluate(a, loader, foreign, [0.05], progress=False, allow_estimate=True)
    out = evaluate(a, loader, own, [0.05], progress=False)
    assert out["kind"] == "certified"


def test_certified_radius_and_report_refuse_a_foreign_bound(tmp_path):
    a, b, x, y = _pair()
    foreign = lipschitz_bound(b, SHAPE, cache=False)
    with torch.no_grad():
        logits = a(x)
    with pytest.raises(ValueError, match="certified_radius: the bound belongs to another model"):
        certified_radius(logits, y, foreign, model=a, margin_error=0)
    with pytest.raises(ValueError, match="needs model="):
        certified_radius(logits, y, foreign, model=None, margin_error=0)
    with pytest.raises(ValueError, match="another model"):
        certify(a, TensorDataset(x, y), ["0.05"], input_shape=SHAPE, bound=foreign, attack=None, progress=False,
                out_dir=tmp_path)
    own = lipschitz_bound(a, SHAPE, cache=False)
    r = certified_radius(logits, y, own, model=a, margin_error=0)
    assert (r >= 0).all() and (r > 0).any()


@pytest.mark.parametrize("how", ["by hand", "from_dict", "replace"])
def test_no_certificate_is_minted_through_the_public_api(how):
    a, _, x, y = _pair()
    own = lipschitz_bound(a, SHAPE, cache=False)
    if how == "by hand":
        fake = LipschitzBound(value=own.value / 100, guaranteed=True, guarantee="exact", fingerprint=own.fingerprint)
    elif how == "from_dict":
        record = own.to_dict()
        record["value"] = (own.value / 100).tolist()
        fake = LipschitzBound.from_dict(record)
    else:
        fake = dataclasses.replace(own, value=own.value / 100)
    assert not fake.trusted and fake.fingerprint == own.fingerprint
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    with pytest.raises(ValueError, match="not computed by lipzoo.lipschitz_bound"):
        pairwise_constants(fake, 3)  # the gate every consumer goes through
    with pytest.raises(ValueError, match="not computed by lipzoo.lipschitz_bound"):
        evaluate(a, loader, fake, [0.05], progress=False)
    with torch.no_grad():
        logits = a(x)
    with pytest.raises(ValueError, match="not computed by lipzoo.lipschitz_bound"):
        certified_radius(logits, y, fake, model=a, margin_error=0)
    # asked for explicitly: accepted, and nothing it gives is called certified
    out = evaluate(a, loader, fake, [0.05], progress=False, allow_estimate=True)
    assert out["kind"] == "estimated" and "estimated@0.05" in out["summary"]
    assert not any(k.startswith("certified") for k in out["summary"])
