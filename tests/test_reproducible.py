"""A guaranteed bound is a function of its inputs (issue 23): the same call gives the same bits, whatever the
clock says, however loaded the machine is, with or without stored certificates; planning is counted from shapes."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import lipzoo.bounds.liplt as liplt
from lipzoo.bounds import lipschitz_bound
from lipzoo.bounds.proved import proved_inner_norms
from lipzoo.bounds.structure import build_structure

from conftest import small_plain_cnn, small_residual_cnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _refining(monkeypatch):
    """Small sides certified only below 16 dimensions: the refinement (the planner's decisions) does the work."""
    monkeypatch.setattr(liplt, "SMALL_DENSE", 16)
    monkeypatch.setattr(liplt, "SMALL_INPUT", 16)


def _record(b) -> tuple:
    return (b.value.double().numpy().tobytes(), tuple(sorted(b.details["inner"].items())),
            tuple(sorted((k, v["guarantee"]) for k, v in b.details["inner_proofs"].items())))


@pytest.mark.parametrize("factory", [small_plain_cnn, small_residual_cnn])
def test_twice_gives_the_same_bits_and_clocks_play_no_part(factory, monkeypatch):
    _refining(monkeypatch)
    net, shape = factory(0)
    first = lipschitz_bound(net, shape, cache=False, effort="high")
    assert first.details["work"]["spent"] > 0  # the refinement ran: its decisions are under test
    # a clock that jumps by hours between reads: nothing may depend on it
    jumps = itertools.count()
    for name in ("perf_counter", "time", "monotonic"):
        monkeypatch.setattr(time, name, lambda: 3600.0 * next(jumps) ** 2)
    again = lipschitz_bound(net, shape, cache=False, effort="high")
    assert _record(again) == _record(first)


def test_stored_certificates_change_nothing(tmp_path, monkeypatch):
    """A run that reuses certificates from an earlier one (other effort, interrupted, ...) returns the bits a run
    without any returns: they are used where it would have computed them."""
    _refining(monkeypatch)
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    net, shape = small_plain_cnn(1)
    fresh = {e: lipschitz_bound(net, shape, cache=False, effort=e) for e in ("low", "high")}
    lipschitz_bound(net, shape, effort="high")  # leaves its certificates in the cache
    for e in ("low", "high"):
        for path in tmp_path.glob("*.json"):
            path.unlink()  # no finished bound: only the chains' certificates
        assert _record(lipschitz_bound(net, shape, effort=e)) == _record(fresh[e])


def test_effort_is_work_counted_from_shapes_and_a_cap():
    net, shape = small_plain_cnn(2)
    with torch.no_grad():
        s = build_structure(net, shape)
    keys = [(t, j) for t in range(s.depth) for j in range(-1, t)]
    spent = {}
    for effort in (0.0, 1e-6, 1e-4, "high"):
        stats: dict = {}
        proved_inner_norms(s, keys, objective=lambda inner: sum(inner.values()), small=0, small_input=None,
                           effort=effort, chunk=16, progress=False, stats=stats)
        assert stats["work"] <= stats["effort"]
        spent[effort] = stats["work"]
    assert spent[0.0] == 0.0 and spent["high"] > 0
    assert spent[1e-6] <= spent[1e-4] <= spent["high"]


_CHILD = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    import lipzoo.bounds.liplt as liplt
    from conftest import small_plain_cnn
    torch.set_num_threads({threads})
    liplt.SMALL_DENSE = liplt.SMALL_INPUT = 16
    net, shape = small_plain_cnn(3)
    b = liplt.lipschitz_bound(net, shape, cache=False, effort="high")
    print(b.value.double().numpy().tobytes().hex())
""")


def test_the_same_bits_under_load(monkeypatch):
    """Computed here, then in a fresh process beside two processes that keep every core busy."""
    _refining(monkeypatch)
    net, shape = small_plain_cnn(3)
    quiet = lipschitz_bound(net, shape, cache=False, effort="high").value.double().numpy().tobytes().hex()
    code = _CHILD.format(tests=os.path.join(ROOT, "tests"), threads=torch.get_num_threads())
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(2, os.cpu_count() or 2))]
    try:
        loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=ROOT).stdout.strip()
    finally:
        for p in burners:
            p.kill()
    assert loaded == quiet
