"""Certificates that ship with checkpoints: the guaranteed bound a card's numbers were computed with, checkable.

A checkpoint folder may hold ``certificate.json`` beside ``model.safetensors`` (format documented in
docs/certificate-format.md). It records, for the weights with a given sha256 and the structure with a given
fingerprint (:mod:`lipzoo.bounds.fingerprint`), the options of the bound, lipzoo's version and code hash, the
pairwise bound, and every inner operator norm ``||S_{t,j}||`` that was certified exactly, with the estimate from
below it was checked against.

**What makes it checkable.** A certified norm is a claim about one operator. Before use, every claim is checked
against this run's own Lanczos estimate of that norm (from below): a value under it is corrupt and is certified
again (:func:`lipzoo.bounds.proved.proved_inner_norms`, ``known``). The claims that pass are used where the run
would compute them, so with the same code and device the result is the bound a run from scratch returns, bit for
bit, at the cost of the estimates (``lipzoo bounds NAME --recompute`` shows both). The bound itself is never read
from the file: it is recomputed from the chain norms by eq. (16).

The check from below cannot catch a claim between the estimate and the true norm (a gap of ~1e-4 relative), so a
certificate is only used for the structure it names: the fingerprint must match the model's, exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch

from lipzoo.bounds.certificate import LipschitzBound

__all__ = ["FILENAME", "FORMAT", "VERSION", "certificate_record", "read_certificate", "write_certificate",
           "known_chains", "CertificateError"]

FILENAME = "certificate.json"
FORMAT = "lipzoo-certificate"
VERSION = 1


class CertificateError(ValueError):
    """A certificate file that cannot be used (malformed, another format, or another model's)."""


def certificate_record(bound: LipschitzBound, *, weights_sha256: str) -> dict:
    """The certificate of a guaranteed pairwise LipLT bound that lipzoo's accountant computed (trusted), for the
    weights with sha256 ``weights_sha256``."""
    if not isinstance(bound, LipschitzBound) or not bound.trusted:
        raise ValueError("a shipped certificate is written from a bound lipzoo.lipschitz_bound computed (trusted).")
    if not bound.guaranteed or bound.norm != "auto" or "inner_proofs" not in bound.details:
        raise ValueError(f"a shipped certificate needs a guaranteed bound with norm='auto' (its certified chain "
                         f"norms), got guarantee={bound.guarantee!r}, norm={bound.norm!r}.")
    from lipzoo import __version__
    from lipzoo.bounds.fingerprint import code_hash

    details = bound.details
    value = bound.value.double()
    # the mean over i != j as lipzoo computes it everywhere (report, `lipzoo bounds`): the same float64 bits
    mean = float(value[~torch.eye(value.shape[0], dtype=torch.bool)].mean()) if value.dim() == 2 else float(value.mean())
    chains = {key: {"norm": float(p["bound"]), "estimate": float(p["estimate"])}
              for key, p in details["inner_proofs"].items() if p["guarantee"] == "exact"}
    return {
        "format": FORMAT, "version": VERSION,
        "weights_sha256": str(weights_sha256),
        "fingerprint": bound.fingerprint, "model_summary": bound.model_summary,
        "input_shape": list(details.get("input_shape", [])),
        "lipzoo_version": __version__, "code_hash": code_hash(),
        "options": dict(details.get("options") or {}), "seed": details.get("seed"),
        "bound": {"method": bound.method, "mode": bound.mode, "guarantee": bound.guarantee,
                  "value": value.tolist(), "mean": mean},
        "chains": chains,
    }


def write_certificate(folder, record: Mapping) -> Path:
    """Write ``record`` as ``folder/certificate.json`` (checked first: :func:`validate`)."""
    validate(record)
    path = Path(folder) / FILENAME
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def read_certificate(path) -> dict:
    """The certificate in ``path`` (a file, or a folder holding ``certificate.json``), validated; raises
    :class:`CertificateError` (one line) when it cannot be used."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CertificateError(f"{path}: not a readable certificate ({err}).") from None
    validate(record, where=str(path))
    return record


def validate(record, where: str = "certificate") -> None:
    """Check the layout of a certificate record (types, finite non-negative numbers); :class:`CertificateError`."""
    if not isinstance(record, Mapping) or record.get("format") != FORMAT:
        raise CertificateError(f"{where}: not a {FORMAT} file.")
    if record.get("version") != VERSION:
        raise CertificateError(f"{where}: {FORMAT} version {record.get('version')!r}; this lipzoo reads version "
                               f"{VERSION} (upgrade lipzoo, or recompute with --recompute).")
    for name in ("weights_sha256", "fingerprint"):
        if not isinstance(record.get(name), str) or len(record[name]) != 64:
            raise CertificateError(f"{where}: {name!r} must be a sha256 hex digest.")
    chains = record.get("chains")
    if not isinstance(chains, Mapping):
        raise CertificateError(f"{where}: 'chains' must be a mapping 't,j' -> {{norm, estimate}}.")
    for key, entry in chains.items():
        try:
            t, j = (int(x) for x in str(key).split(","))
            norm, est = float(entry["norm"]), float(entry["estimate"])
        except (TypeError, ValueError, KeyError):
            raise CertificateError(f"{where}: chain {key!r} is malformed.") from None
        if not (t > j >= -1 and math.isfinite(norm) and norm >= 0 and math.isfinite(est) and 0 <= est):
            raise CertificateError(f"{where}: chain {key!r} has norm {norm!r}, estimate {est!r}.")


def known_chains(record: Mapping, fingerprint: str) -> dict[tuple[int, int], tuple[float, float]]:
    """``{(t, j): (certified norm, estimate)}`` of a certificate, for the structure with ``fingerprint`` only."""
    if record.get("fingerprint") != fingerprint:
        raise CertificateError(f"the certificate belongs to another model or other weights "
                               f"({record.get('model_summary') or str(record.get('fingerprint'))[:12]}); recompute "
                               f"the bound (--recompute).")
    out = {}
    for key, entry in record["chains"].items():
        t, j = (int(x) for x in key.split(","))
        out[(t, j)] = (float(entry["norm"]), float(entry["estimate"]))
    return out
