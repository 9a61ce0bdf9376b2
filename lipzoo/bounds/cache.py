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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["cache_dir", "enabled_by_env", "bound_key", "load_bounds", "store_bounds", "weights_sha256"]

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


def bound_key(model: nn.Module, request: dict) -> str:
    """The cache key of a bound of ``model`` for ``request`` (JSON-serialisable options)."""
    blob = json.dumps({"weights": weights_sha256(model), "code": _code_hash(), **request}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_bounds(key: str) -> dict | None:
    """The records stored under ``key`` (``{mode: LipschitzBound.to_dict() + details}``), or None."""
    folder = cache_dir()
    if folder is None:
        return None
    path = folder / f"{key}.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("key") != key or not isinstance(data.get("bounds"), dict):
            raise ValueError("key mismatch or missing 'bounds'")
        return data["bounds"]
    except (OSError, ValueError, TypeError, AttributeError) as err:
        logger.warning("Ignoring corrupt Lipschitz-bound cache file %s (%s); recomputing.", path, err)
        return None


def store_bounds(key: str, bounds: dict) -> None:
    """Store ``{mode: record}`` under ``key`` (atomic rename; failures only warn)."""
    folder = cache_dir()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"key": key, "bounds": bounds}))
        os.replace(tmp, folder / f"{key}.json")
    except OSError as err:
        logger.warning("Could not write the Lipschitz-bound cache in %s (%s).", folder, err)
