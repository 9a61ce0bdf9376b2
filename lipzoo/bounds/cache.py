"""On-disk cache of Lipschitz bounds: every entry is a claim that a later run checks before using it.

A guaranteed bound of a convolutional network costs seconds to minutes; ``lipzoo certify`` after
``lipzoo bounds`` (or a second certification of the same weights) should not pay it twice. The key
is the sha256 of

* what the accountant bounds: the :func:`lipzoo.bounds.fingerprint.structure_fingerprint` of the structure
  built from the model (every operator's type and every number that defines it, the slopes derived at
  this call, the input shape). It is computed after ``build_structure``, so every acceptance check has
  run before any lookup: a module the accountant refuses is refused with or without a cache;
* the request: the :class:`~lipzoo.bounds.options.BoundOptions` (method, norm path, effort, seed, dtype, ...) and
  the device type;
* the code: :func:`lipzoo.bounds.fingerprint.code_hash`, the sha256 of every source file of the package.

Nothing read from disk is trusted as it stands (:func:`lipzoo.bounds.liplt.lipschitz_bounds` and
:func:`lipzoo.bounds.proved.proved_inner_norms` check each entry):

* every file carries an HMAC-SHA256 of its payload under a per-user key kept outside the cache folder
  (:func:`_secret`): a file edited by hand (even with a recomputed checksum), copied from another
  machine, truncated or half-written is rejected (with a warning) and recomputed;
* and in case the key is known to whoever wrote the file: a stored bound below what this run's own
  estimates from below prove (the LipLT recursion at Lanczos
  estimates of every inner norm, gradient norms at sample points) is a corrupt entry: dropped and
  recomputed; a stored certified inner norm below this run's Lanczos estimate of it, likewise;
* writes go to a unique temporary file renamed into place (atomic: no reader sees half a file); the
  read-merge-write of the certificate files holds an exclusive lock, so two processes writing the same
  entry lose nothing.

Files live in ``$LIPZOO_CACHE`` (default ``~/.cache/lipzoo/bounds``); ``LIPZOO_CACHE=off`` disables the cache.
The Python API and the command line use it the same way.

Beside the finished bounds, ``chains/`` keeps every inner operator norm certified exactly on the way
(:func:`store_certificates`), keyed by the structure, the device type and the code, so that an interrupted
run, or a request with another effort, starts from them. A bound is a function of its inputs: the planner
uses a stored certificate exactly where it would have computed it (and counts its work), so a run with the
cache returns the bits a run without it returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from lipzoo.bounds.fingerprint import code_hash

try:  # POSIX: an exclusive lock around read-merge-write
    import fcntl
except ImportError:  # pragma: no cover - Windows: atomic renames only (a concurrent merge may lose an entry)
    fcntl = None  # type: ignore[assignment]

__all__ = ["cache_dir", "bound_key", "load_bounds", "store_bounds", "certificate_key",
           "load_certificates", "store_certificates", "drop_certificates", "certificate_hooks", "secret_path", "summary", "clear"]

logger = logging.getLogger(__name__)


def cache_dir() -> Path | None:
    """The cache folder, or None when ``LIPZOO_CACHE`` is ``off``/``0``/empty."""
    env = os.environ.get("LIPZOO_CACHE")
    if env is not None and env.strip().lower() in ("", "0", "off", "false", "no", "none"):
        return None
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lipzoo" / "bounds"


def bound_key(fingerprint: str, request: dict) -> str:
    """The cache key of a bound of the structure with :func:`~lipzoo.bounds.fingerprint.structure_fingerprint`
    ``fingerprint`` for ``request`` (JSON-serialisable options)."""
    blob = json.dumps({"structure": fingerprint, "code": code_hash(), **request}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_bounds(key: str) -> dict | None:
    """The records stored under ``key`` (``{mode: LipschitzBound.to_dict() + details}``), or None."""
    return _load(key, "bounds")


def store_bounds(key: str, bounds: dict) -> None:
    """Store ``{mode: record}`` under ``key`` (atomic rename; failures only warn)."""
    _store(key, "bounds", bounds)


# Certified inner norms, one file per weights and device type: a guaranteed bound that was interrupted leaves
# every chain it certified here, and the next request for the same weights uses them where it would compute
# them. A certificate is a fact about the operator (computed with its own seeded generator), not about the
# request: the key has no mode or effort, so `lipzoo bounds --bound-effort high` after a default run spends its
# work on the chains the first did not reach.
_CHAINS = "chains"


def certificate_key(fingerprint: str, device_type: str = "cpu") -> str:
    """The key of the certified inner norms of the LipLT operators of the structure ``fingerprint`` (which
    holds the input shape), computed on a device of ``device_type`` (CPU and GPU kernels round differently)."""
    return bound_key(fingerprint, {"kind": "liplt chain certificates", "device": device_type})


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
    """Add ``{(t, j): (norm, estimate)}`` to what is stored under ``key``, keeping the smaller norm (both are
    proved; the lock makes the read-merge-write of two processes safe)."""
    with _locked(key, _CHAINS):
        merged = load_certificates(key)
        for k, (value, estimate) in certificates.items():
            old = merged.get(k)
            merged[k] = (value, estimate) if old is None else (min(old[0], value), max(old[1], estimate))
        _store(key, "chains", {f"{t},{j}": list(v) for (t, j), v in sorted(merged.items())}, _CHAINS)


def certificate_hooks(key: str):
    """``(on_certified, on_corrupt)`` for :func:`lipzoo.bounds.proved.proved_inner_norms`: keep each new certificate
    under ``key`` at once (an interrupted run loses none), drop the stored ones found corrupt."""

    def on_certified(k, value: float, estimate: float) -> None:
        store_certificates(key, {k: (value, estimate)})

    def on_corrupt(ks) -> None:
        drop_certificates(key, ks)

    return on_certified, on_corrupt


def drop_certificates(key: str, keys) -> None:
    """Remove the entries ``keys`` (found corrupt by a later run) from what is stored under ``key``."""
    with _locked(key, _CHAINS):
        kept = {k: v for k, v in load_certificates(key).items() if k not in set(keys)}
        _store(key, "chains", {f"{t},{j}": list(v) for (t, j), v in sorted(kept.items())}, _CHAINS)


def secret_path() -> Path:
    """Where this user's cache key lives (see :func:`_secret`)."""
    env = os.environ.get("LIPZOO_CACHE_SECRET")
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return Path(env).expanduser() if env else config / "lipzoo" / "cache-secret"


def summary() -> dict:
    """``{"folder", "bounds", "chains", "bytes", "secret"}``: what the cache holds (``folder`` None when off)."""
    folder = cache_dir()
    out: dict[str, Any] = {"folder": None if folder is None else str(folder), "bounds": 0, "chains": 0, "bytes": 0,
           "secret": str(secret_path())}
    if folder is None or not folder.is_dir():
        return out
    for path in folder.rglob("*"):
        if path.is_file():
            out["bytes"] += path.stat().st_size
            if path.suffix == ".json":
                out["chains" if path.parent.name == _CHAINS else "bounds"] += 1
    return out


def clear() -> int:
    """Remove every cache file (bounds, certificates, locks, temporaries); returns how many. The key stays."""
    folder = cache_dir()
    if folder is None or not folder.is_dir():
        return 0
    removed = 0
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file() and (path.suffix in (".json", ".lock", ".tmp")):
            path.unlink()
            removed += 1
    return removed


def _secret() -> bytes:
    """This user's key for the cache's HMACs: ``$LIPZOO_CACHE_SECRET`` (a file), else
    ``$XDG_CONFIG_HOME/lipzoo/cache-secret`` (``~/.config/...``), created with 32 random bytes and mode 0600 on
    first use. It lives outside the cache folder, so a cache copied from elsewhere or edited (even with a
    recomputed checksum) is rejected; where it cannot be written, a key for this process only is used."""
    global _SECRET
    if _SECRET is None:
        path = secret_path()
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(os.urandom(32))
            _SECRET = path.read_bytes()
            if len(_SECRET) < 16:
                raise OSError(f"{path} holds fewer than 16 bytes")
        except OSError as err:
            logger.warning("No key for the bound cache (%s); entries written now serve this process only.", err)
            _SECRET = os.urandom(32)
    return _SECRET


_SECRET: bytes | None = None


def _digest(payload) -> str:
    """HMAC-SHA256 of the payload under this user's :func:`_secret`."""
    return hmac.new(_secret(), json.dumps(payload, sort_keys=True).encode(), hashlib.sha256).hexdigest()


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
        if not hmac.compare_digest(str(data.get("hmac")), _digest(data[field])):
            raise ValueError("its content does not match the HMAC it was written with (edited, damaged or "
                             "written with another key)")
        return data[field]
    except (OSError, ValueError, TypeError, AttributeError) as err:
        logger.warning("Ignoring corrupt Lipschitz-bound cache file %s (%s); recomputing.", path, err)
        return None


def _store(key: str, field: str, data: dict, sub: str | None = None) -> None:
    root = cache_dir()
    if root is None:
        return
    folder = root / sub if sub else root
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump({"key": key, field: data, "hmac": _digest(data)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / f"{key}.json")
        tmp = None
    except OSError as err:
        logger.warning("Could not write the Lipschitz-bound cache in %s (%s).", folder, err)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


@contextlib.contextmanager
def _locked(key: str, sub: str):
    """An exclusive lock on ``key`` in ``sub`` (no lock without a cache folder or without ``fcntl``)."""
    root = cache_dir()
    if root is None or fcntl is None:
        yield
        return
    folder = root / sub
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / f".{key}.lock", "a+")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
