"""Certificates shipped with checkpoints (lipzoo.bounds.shipped): written from a computed bound, read back,
checked against the run's own estimates, used where the run would compute, refused for another model."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import lipzoo.bounds.liplt as liplt
import lipzoo.bounds.proved as proved
from lipzoo.bounds import LipschitzBound, lipschitz_bound
from lipzoo.bounds.shipped import (CertificateError, certificate_record, known_chains, read_certificate,
                                   write_certificate)

from conftest import small_plain_cnn

SHA = "ab" * 32


@pytest.fixture
def refining(monkeypatch):
    monkeypatch.setattr(liplt, "SMALL_DENSE", 16)
    monkeypatch.setattr(liplt, "SMALL_INPUT", 16)


def _forbid(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("computed although certified")

    monkeypatch.setattr(proved, "group_gram", boom)
    monkeypatch.setattr(proved, "certified_chain_norm", boom)


def test_roundtrip_and_the_same_bits_without_any_certificate_work(tmp_path, monkeypatch, refining):
    net, shape = small_plain_cnn(0)
    fresh = lipschitz_bound(net, shape, cache=False, effort="high")
    record = certificate_record(fresh, weights_sha256=SHA)
    assert record["chains"] and record["bound"]["mean"] > 0 and record["options"]["effort"] == "high"
    path = write_certificate(tmp_path, record)
    back = read_certificate(tmp_path)
    assert back == json.loads(path.read_text()) and back["weights_sha256"] == SHA
    _forbid(monkeypatch)
    used = lipschitz_bound(net, shape, cache=False, effort="high", certificate=back)
    assert torch.equal(used.value, fresh.value) and used.trusted


def test_a_tampered_certificate_is_caught_and_recomputed(tmp_path, caplog, refining):
    net, shape = small_plain_cnn(1)
    fresh = lipschitz_bound(net, shape, cache=False, effort="high")
    record = certificate_record(fresh, weights_sha256=SHA)
    for entry in record["chains"].values():
        entry["norm"] /= 3  # a claim below the operator's norm
    with caplog.at_level(logging.WARNING):
        got = lipschitz_bound(net, shape, cache=False, effort="high", certificate=record)
    assert "below this run's estimate" in caplog.text
    assert torch.equal(got.value, fresh.value)


def test_another_models_certificate_is_refused(refining):
    net, shape = small_plain_cnn(0)
    record = certificate_record(lipschitz_bound(net, shape, cache=False), weights_sha256=SHA)
    other, _ = small_plain_cnn(2)
    with pytest.raises(CertificateError, match="another model"):
        lipschitz_bound(other, shape, cache=False, certificate=record)
    with pytest.raises(CertificateError, match="another model"):
        known_chains(record, "0" * 64)


@pytest.mark.parametrize("change,match", [
    (lambda r: r.update(format="other"), "not a lipzoo-certificate"),
    (lambda r: r.update(version=99), "version 99"),
    (lambda r: r.update(weights_sha256="short"), "weights_sha256"),
    (lambda r: r["chains"].update({"x": {"norm": 1.0, "estimate": 0.5}}), "malformed"),
    (lambda r: r["chains"].update({"1,0": {"norm": float("nan"), "estimate": 0.5}}), "norm nan"),
    (lambda r: r["chains"].update({"0,1": {"norm": 1.0, "estimate": 0.5}}), "'0,1'"),
])
def test_malformed_certificates_are_refused_in_one_line(tmp_path, change, match):
    net, shape = small_plain_cnn(0)
    record = certificate_record(lipschitz_bound(net, shape, cache=False), weights_sha256=SHA)
    change(record)
    (tmp_path / "certificate.json").write_text(json.dumps(record))
    with pytest.raises(CertificateError, match=match):
        read_certificate(tmp_path)
    (tmp_path / "certificate.json").write_text("{not json")
    with pytest.raises(CertificateError, match="not a readable certificate"):
        read_certificate(tmp_path / "certificate.json")


def test_only_a_computed_guaranteed_bound_makes_a_certificate():
    net, shape = small_plain_cnn(0)
    b = lipschitz_bound(net, shape, cache=False)
    with pytest.raises(ValueError, match="trusted"):
        certificate_record(LipschitzBound.from_dict(b.to_dict()), weights_sha256=SHA)
    with pytest.raises(ValueError, match="norm='auto'"):
        certificate_record(lipschitz_bound(net, shape, cache=False, norm="power"), weights_sha256=SHA)
