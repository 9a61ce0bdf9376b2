"""On-disk cache of Lipschitz bounds, keyed by what they were computed from.

A guaranteed bound of a convolutional network costs seconds to minutes; ``lipzoo certify`` after
``lipzoo bounds`` (or a second certification of the same weights) should not pay it twice. The key
is the sha256 of

* the weights: every parameter and buffer of the model (name, dtype, shape, bytes), and the module
  tree's ``repr`` (strides, paddings, activations: what the structure is built from);
* the request: input shape, method, mode, norm path and its options, dtype, device type;
* the code: the lipzoo version and the sha256 of the accountant's source files, so a changed
  accountant never serves a bound computed by an older one.

Files live in ``$LIPZOO_CACHE`` (``~/.cache/lipzoo/bounds`` when a caller asks for the cache without
setting it; the ``lipzoo`` command line sets that default); ``LIPZOO_CACHE=off`` disables the cache.
The Python API uses the cache by default only when ``LIPZOO_CACHE`` is set (:func:`enabled_by_env`). A file that cannot be read or does not match its key is ignored with a warning and
recomputed.

Beside the finished bounds, ``chains/`` keeps every inner operator norm certified exactly on the way
(:func:`store_certificates`), keyed by the weights, the input shape and the code only, so that an
interrupted or budget-limited run leaves them to the next request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["cache_dir", "enabled_by_env", "bound_key", "load_bounds", "store_bounds", "weights_sha256",
           "certificate_key", "load_certificates", "store_certificates"]

logger = logging.getLogger(__name__)

_SOURCES = ("bounds/liplt.py", "bounds/norms.py", "bounds/proved.py", "bounds/banded.py", "bounds/sweep.py",
            "bounds/structure.py", "layers/operators.py", "layers/state.py", "layers/torch_modules.py", "layers/lt.py",
            "layers/residual.py", "layers/activations.py")
_CODE_HASH: str | None = None


def cache_dir() -> Path | None:
    """The cache folder, or None when ``LIPZOO_CACHE`` is ``off``/``0``/empty."""
    env = os.environ.get("LIPZOO_CACHE")
    if env is not None and env.strip().lower() in ("", "0", "off", "false", "no", "none"):
        return None
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lipzoo" / "bounds"


def enabled_by_env() -> bool:
    """Whether ``cache=None`` means "use the cache": ``LIPZOO_CACHE`` is set and not ``off``."""
    return os.environ.get("LIPZOO_CACHE") is not None and cache_dir() is not None


def _code_hash() -> str:
    global _CODE_HASH
    if _CODE_HASH is None:
        import lipzoo

        root = Path(lipzoo.__file__).parent
        h = hashlib.sha256(str(getattr(lipzoo, "__version__", "?")).encode())
        for rel in _SOURCES:
            p = root / rel
            h.update(rel.encode())
            h.update(p.read_bytes() if p.exists() else b"-")
        _CODE_HASH = h.hexdigest()
    return _CODE_HASH


def weights_sha256(model: nn.Module) -> str:
    """sha256 of the module tree's ``repr`` and of every parameter and buffer (name, dtype, shape, bytes)."""
    h = hashlib.sha256(repr(model).encode())
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in sorted(tensors, key=lambda kv: kv[0]):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def bound_key(model: nn.Module, request: dict, *, weights: str | None = None) -> str:
    """The cache key of a bound of ``model`` for ``request`` (JSON-serialisable options); ``weights``: the
    model's :func:`weights_sha256` when the caller has it already."""
    blob = json.dumps({"weights": weights or weights_sha256(model), "code": _code_hash(), **request},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_bounds(key: str) -> dict | None:
    """The records stored under ``key`` (``{mode: LipschitzBound.to_dict() + details}``), or None."""
    return _load(key, "bounds")


def store_bounds(key: str, bounds: dict) -> None:
    """Store ``{mode: record}`` under ``key`` (atomic rename; failures only warn)."""
    _store(key, "bounds", bounds)


# Certified inner norms, one file per weights: a guaranteed bound that did not finish tightening (its time
# budget ran out, or it was interrupted) leaves every chain it certified here, and the next request for
# the same weights starts from them instead of certifying them again. A certificate is a fact about the
# operator, not about the request: the key has no mode, budget, seed or device, so `lipzoo bounds
# --bound-budget 3300` after a 300 s run spends its time on the chains the first did not reach, and a run
# that was interrupted continues where it stopped when started again.
_CHAINS = "chains"


def certificate_key(model: nn.Module, input_shape, *, weights: str | None = None) -> str:
    """The key of the certified inner norms of ``model``'s LipLT operators on ``input_shape``."""
    return bound_key(model, {"kind": "liplt chain certificates", "input_shape": [str(s) for s in input_shape]},
                     weights=weights)


def load_certificates(key: str) -> dict[tuple[int, int], tuple[float, float]]:
    """``{(t, j): (certified norm, estimate from below)}`` stored under ``key`` (empty if none or corrupt)."""
    data = _load(key, "chains", _CHAINS)
    if data is None:
        return {}
    try:
        out = {}
        for name, (value, estimate) in data.items():
            t, j = (int(x) for x in name.split(","))
            value, estimate = float(value), float(estimate)
            if not (math.isfinite(value) and value >= 0 and math.isfinite(estimate) and 0 <= estimate):
                raise ValueError(f"{name}: norm {value!r}, estimate {estimate!r}")
            out[(t, j)] = (value, estimate)
        return out
    except (AttributeError, TypeError, ValueError) as err:
        logger.warning("Ignoring a corrupt certificate cache file for %s (%s); certifying again.", key[:12], err)
        return {}


def store_certificates(key: str, certificates: dict[tuple[int, int], tuple[float, float]]) -> None:
    """Add ``{(t, j): (norm, estimate)}`` to what is stored under ``key``, keeping the smaller norm."""
    merged = load_certificates(key)
    for k, (value, estimate) in certificates.items():
        old = merged.get(k)
        merged[k] = (value, estimate) if old is None else (min(old[0], value), max(old[1], estimate))
    _store(key, "chains", {f"{t},{j}": list(v) for (t, j), v in sorted(merged.items())}, _CHAINS)


def _load(key: str, field: str, sub: str | None = None):
    folder = cache_dir()
    if folder is None:
        return None
    path = (folder / sub if sub else folder) / f"{key}.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("key") != key or not isinstance(data.get(field), dict):
            raise ValueError(f"key mismatch or missing {field!r}")
        return data[field]
    except (OSError, ValueError, TypeError, AttributeError) as err:
        logger.warning("Ignoring corrupt Lipschitz-bound cache file %s (%s); recomputing.", path, err)
        return None


def _store(key: str, field: str, data: dict, sub: str | None = None) -> None:
    root = cache_dir()
    if root is None:
        return
    folder = root / sub if sub else root
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"key": key, field: data}))
        os.replace(tmp, folder / f"{key}.json")
    except OSError as err:
        logger.warning("Could not write the Lipschitz-bound cache in %s (%s).", folder, err)
