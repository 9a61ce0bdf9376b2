"""Issue 22, items 1-2: the bound cache cannot lie.

* every acceptance check runs before any lookup, and the key follows every number the accountant bounds
  (an attribute that changes ``forward`` changes the key, whether or not ``repr`` shows it);
* a cache entry is a claim that is checked: edited files, bounds below what the run proves from below and
  certificates below their estimates are dropped and recomputed; a tampered cache never lowers a bound;
* writes are atomic and concurrent writers lose nothing; the code hash covers every source file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import multiprocessing
from pathlib import Path

import pytest
import torch
from torch import nn

import lipzoo
from lipzoo.bounds import cache as bound_cache
from lipzoo.bounds import fingerprint as fpmod
from lipzoo.bounds import lipschitz_bound
from lipzoo.bounds.fingerprint import model_fingerprint
from lipzoo.layers import UnsupportedModule
from lipzoo.layers.activations import activation_slopes

from conftest import small_plain_cnn as _plain

SHAPE = (1, 8, 8)


def _net(seed: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5)).eval()


class _Tanh2(nn.Tanh):  # the same repr as nn.Tanh, another function
    def forward(self, x):
        return torch.tanh(3 * x)


def _hook(net):
    net[1].register_forward_pre_hook(lambda m, args: (2.5 * args[0],))


def _subclass(net):
    net[1] = _Tanh2()


def _instance_forward(net):
    net[1].forward = lambda x: torch.tanh(4 * x)


def _divisor(net):
    net[2].divisor_override = 1  # not in AvgPool2d's repr


def _ceil(net):
    net[2].ceil_mode = True


def _gradient_lower_bound(net, shape, points=64) -> float:
    """max over random points of max_{i,j} ||grad (z_i - z_j)||: a lower bound of every pairwise constant."""
    x = torch.rand(points, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    net = copy.deepcopy(net).double()
    x.requires_grad_(True)
    z = net(x)
    jac = torch.stack([torch.autograd.grad(z[:, i].sum(), x, retain_graph=True)[0].reshape(points, -1)
                       for i in range(z.shape[1])], 1)
    return float((jac[:, :, None] - jac[:, None]).norm(dim=3).amax())


@pytest.mark.parametrize("change", [_hook, _subclass, _instance_forward, _divisor, _ceil])
def test_a_changed_model_is_refused_or_bounded_anew_with_the_cache_on(change, tmp_path, monkeypatch):
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    net = _net()
    old = lipschitz_bound(net, SHAPE)
    assert old.trusted and list(tmp_path.glob("*.json"))
    change(net)
    outcomes = []
    for cache in (True, False):
        try:
            outcomes.append(lipschitz_bound(net, SHAPE, cache=cache))
        except (UnsupportedModule, TypeError, ValueError) as err:
            outcomes.append(type(err))
    cached, fresh = outcomes
    if isinstance(fresh, type):  # refused without the cache: refused with it
        assert cached is fresh
        return
    assert torch.equal(cached.value, fresh.value)  # the changed model's own bound, not the old one
    assert not torch.equal(cached.value, old.value)
    true_low = _gradient_lower_bound(net, SHAPE)
    assert float(cached.value.max()) >= true_low


def _perturbed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 1.5 + 0.1
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        return tuple(v + 1 for v in value)
    if value is None:
        return 1
    return ...


def _modules():
    """Modules the accountant accepts, each in a net that feeds it (builder, index of the module, input shape)."""
    # no readout after a module whose attributes change the output's size: the changed net still runs
    yield lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten()), 0, (2, 6, 6)
    yield lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.AvgPool2d(2), nn.Flatten()), 1, (2, 8, 8)
    yield lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3).eval(), nn.ReLU(), nn.Flatten(),
                                nn.Linear(12, 4)), 1, (2, 4, 4)
    yield lambda: nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.LeakyReLU(0.1), nn.Linear(6, 3)), 2, (8,)
    yield lambda: nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ELU(0.5), nn.Linear(6, 3)), 2, (8,)
    yield lambda: nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ELU(0.8), nn.Linear(6, 3)), 2, (8,)
    yield lambda: nn.Sequential(lipzoo.LTConv2d(2, 3, 3, stride=2, padding=1), lipzoo.Flatten()), 0, (2, 6, 6)


@pytest.mark.parametrize("case", range(7))
def test_every_attribute_that_changes_forward_changes_the_key(case):
    """Generic: perturb each plain attribute of the module; where the output changes, the fingerprint (the cache
    key's structure part) must change, or the accountant must refuse the changed module."""
    build, index, shape = list(_modules())[case]
    torch.manual_seed(case)
    base = build().eval()
    for m in base.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.normal_()
    x = torch.rand(5, *shape, dtype=torch.float64)
    ref = copy.deepcopy(base).double()(x)
    key = model_fingerprint(base, shape).digest
    checked = 0
    module = base[index]
    for name, value in sorted(vars(module).items()):
        new = _perturbed(value)
        if name.startswith("_") or name == "training" or new is ...:
            continue
        net = copy.deepcopy(base)
        setattr(net[index], name, new)
        try:
            out = copy.deepcopy(net).double()(x)
        except Exception:  # the changed module does not run at all
            continue
        if out.shape == ref.shape and torch.equal(out, ref):
            continue
        checked += 1
        try:
            changed = model_fingerprint(net, shape).digest
        except (UnsupportedModule, TypeError, ValueError):
            continue  # refused: nothing can be served for it
        if activation_slopes(module) is not None and activation_slopes(net[index]) == activation_slopes(module):
            # an activation enters the bound through its slopes [alpha, beta] only (eq. 14): a change that keeps
            # them keeps the bound valid, and the key with it (ELU alpha 0.5 -> 0.85: slopes [0, 1] both)
            assert changed == key
            continue
        assert changed != key, f"{type(module).__name__}.{name} = {new!r} changes forward but not the key"
    assert checked >= 1


def test_the_key_is_not_the_repr(tmp_path, monkeypatch):
    net = _net()
    before = model_fingerprint(net, SHAPE).digest
    text = repr(net)
    net[2].divisor_override = 2
    assert repr(net) == text and model_fingerprint(net, SHAPE).digest != before
    assert model_fingerprint(_net(), SHAPE).digest == before  # a function of the numbers only
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten())
    assert model_fingerprint(conv, (1, 6, 6)).digest != model_fingerprint(conv, (1, 7, 7)).digest  # input shape


def _rehash(path: Path, field: str, edit, *, forge: bool = False) -> None:
    """An edit that writes a matching checksum: a plain sha256, or (``forge``) the HMAC under this user's key,
    as someone holding the key could (then only the check against the run's own estimates is left)."""
    data = json.loads(path.read_text())
    data[field] = edit(data[field])
    data["hmac"] = (bound_cache._digest(data[field]) if forge else
                    hashlib.sha256(json.dumps(data[field], sort_keys=True).encode()).hexdigest())
    path.write_text(json.dumps(data))


def _tiny(obj):
    """Every float of a record divided by 1e6: far below any gradient norm of the net."""
    return _scaled(obj, 1e-6)


def _scaled(obj, factor: float):
    if isinstance(obj, dict):
        return {k: _scaled(v, factor) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scaled(v, factor) for v in obj]
    if isinstance(obj, float) and not isinstance(obj, bool):
        return obj * factor
    return obj


def _halve(obj):
    return _scaled(obj, 0.5)


@pytest.mark.parametrize("how", ["edited", "rehashed", "forged"])
@pytest.mark.parametrize("method", ["liplt", "naive", "lt_sdp", "eclipse", "best"])
def test_a_tampered_bound_file_never_lowers_a_bound(how, method, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    net, shape = _plain(2)
    ref = lipschitz_bound(net, shape, method=method, cache=False)
    lipschitz_bound(net, shape, method=method)
    (path,) = tmp_path.glob("*.json")
    if how == "edited":  # every number halved, the file's checksum left as it was
        data = json.loads(path.read_text())
        data["bounds"] = _halve(data["bounds"])
        path.write_text(json.dumps(data))
    elif how == "rehashed":
        _rehash(path, "bounds", _halve)
    else:  # with this user's key: below the run's own estimates from below
        _rehash(path, "bounds", _halve if method == "liplt" else _tiny, forge=True)
    with caplog.at_level(logging.WARNING):
        got = lipschitz_bound(net, shape, method=method)
    assert "corrupt" in caplog.text.lower()
    assert torch.equal(got.value, ref.value) and got.trusted


def test_tampered_certificates_are_dropped_and_certified_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    net, shape = _plain(0)
    ref = lipschitz_bound(net, shape, mode="global", cache=False)
    lipschitz_bound(net, shape, mode="global")
    for path in tmp_path.glob("*.json"):
        path.unlink()  # only the certificates are left
    (path,) = (tmp_path / "chains").glob("*.json")
    stored = json.loads(path.read_text())["chains"]
    assert stored
    _rehash(path, "chains", lambda chains: {k: [v[0] / 3, v[1] / 3] for k, v in chains.items()}, forge=True)
    with caplog.at_level(logging.WARNING):
        got = lipschitz_bound(net, shape, mode="global")
    assert "below this run's estimate" in caplog.text
    assert torch.equal(got.value, ref.value)
    # the corrupt entries were replaced by the fresh certificates
    again = json.loads(path.read_text())["chains"]
    assert all(again[k][0] == stored[k][0] for k in stored)  # the same certificate, bit for bit


def test_the_code_hash_covers_every_source_file(monkeypatch):
    root = Path(lipzoo.__file__).parent
    files = sorted(root.rglob("*.py"))
    names = {p.relative_to(root).as_posix() for p in files}
    assert {"bounds/eclipse.py", "bounds/lanczos.py", "bounds/fingerprint.py", "certify/metrics.py"} <= names
    monkeypatch.setattr(fpmod, "_CODE_HASH", None)
    base = fpmod.code_hash()
    real = Path.read_bytes
    for target in ("bounds/eclipse.py", "bounds/lanczos.py", "layers/activations.py"):
        monkeypatch.setattr(fpmod, "_CODE_HASH", None)
        monkeypatch.setattr(Path, "read_bytes",
                            lambda self, t=target: real(self) + (b"#" if self.as_posix().endswith(t) else b""))
        assert fpmod.code_hash() != base, target
        monkeypatch.setattr(Path, "read_bytes", real)
    monkeypatch.setattr(fpmod, "_CODE_HASH", None)
    assert fpmod.code_hash() == base


def _writer(folder: str, key: str, offset: int, n: int) -> None:
    import os

    os.environ["LIPZOO_CACHE"] = folder
    for i in range(n):
        bound_cache.store_certificates(key, {(offset + i, -1): (1.0 + i, 0.5)})


def test_concurrent_writers_lose_nothing_and_no_half_file_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    key = "k" * 64
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), key, 1000 * p, 25)) for p in range(3)]
    for p in procs:
        p.start()
    seen = 0
    while any(p.is_alive() for p in procs):
        seen = max(seen, len(bound_cache.load_certificates(key)))  # never a half-written (corrupt) file
    for p in procs:
        p.join()
        assert p.exitcode == 0
    got = bound_cache.load_certificates(key)
    assert len(got) == 75 and got[(2024, -1)] == (25.0, 0.5)
    assert not list((tmp_path / "chains").glob("*.tmp"))


def test_a_truncated_file_is_rejected(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    net, shape = _plain(2)
    ref = lipschitz_bound(net, shape)
    (path,) = tmp_path.glob("*.json")
    path.write_text(path.read_text()[: len(path.read_text()) // 2])
    with caplog.at_level(logging.WARNING):
        got = lipschitz_bound(net, shape)
    assert "corrupt" in caplog.text.lower() and torch.equal(got.value, ref.value)


def test_a_bound_under_inference_mode_with_the_cache(tmp_path, monkeypatch):
    """Inside torch.inference_mode (as evaluation code often is): computed, cached, and its cache hit checked."""
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    net, shape = _plain(2)
    ref = lipschitz_bound(net, shape, cache=False)
    with torch.inference_mode():
        first = lipschitz_bound(net, shape)
        again = lipschitz_bound(net, shape)
    assert torch.equal(first.value, ref.value) and torch.equal(again.value, ref.value) and again.trusted
