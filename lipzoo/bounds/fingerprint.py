"""Fingerprints of what the accountant bounds: the key of the bound cache and the owner of a certificate.

A bound is a function of the structure of eq. (14) that :func:`lipzoo.bounds.structure.build_structure`
derives from a model (every operator's type and every number that defines it: weights, shapes, strides,
paddings and padding modes, divisors, scales, dtypes; the slopes ``[alpha, beta]`` derived at this call;
the input shape), of the request's options and of the code. The fingerprint hashes exactly that, walking
each operator's attributes (``vars``) recursively, so an attribute that changes what an operator computes
changes the fingerprint by construction, whether or not ``repr`` shows it. It is computed *after*
``build_structure``, so every acceptance check (hooks, replaced ``forward``, subclasses, train mode,
non-finite weights) has run before any cache lookup: a refused model is refused with or without a cache.

* :func:`structure_fingerprint` -- sha256 of a built structure (and whether it can key a cache: an
  operator class defined outside lipzoo whose source cannot be read cannot);
* :func:`model_fingerprint` -- the same for ``(model, input_shape)``, built like the accountant builds it
  (a float64 copy in the caller's train/eval mode, so a train-mode batch norm is refused here too);
* :func:`code_hash` -- sha256 of every source file of the lipzoo package (a bound's value depends on the
  code that computed it; the whole package, so no file can be forgotten).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["Fingerprint", "structure_fingerprint", "model_fingerprint", "check_owner", "code_hash"]

_CODE_HASH: str | None = None


def code_hash() -> str:
    """sha256 of the lipzoo version and of every ``*.py`` file of the installed package (path and bytes)."""
    global _CODE_HASH
    if _CODE_HASH is None:
        import lipzoo

        root = Path(lipzoo.__file__).parent
        h = hashlib.sha256(str(getattr(lipzoo, "__version__", "?")).encode())
        for path in sorted(root.rglob("*.py")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
        _CODE_HASH = h.hexdigest()
    return _CODE_HASH


@dataclass(frozen=True)
class Fingerprint:
    """``digest``: sha256 hex of the structure; ``cacheable``: whether it may key the on-disk cache (every
    class in it is lipzoo's or has readable source, hashed in); ``summary``: a short human name."""

    digest: str
    cacheable: bool
    summary: str


class _Hasher:
    def __init__(self):
        self.h = hashlib.sha256()
        self.cacheable = True
        self._classes: dict[type, None] = {}

    def tag(self, text: str) -> None:
        self.h.update(text.encode() + b"\0")

    def feed(self, obj, depth: int = 0) -> None:
        if depth > 64:
            raise ValueError("operator nesting deeper than 64 levels (a cycle?)")
        if obj is None or isinstance(obj, (bool, int, str)):
            self.tag(f"{type(obj).__name__}:{obj!r}")
        elif isinstance(obj, float):
            self.tag(f"float:{obj.hex()}")
        elif isinstance(obj, bytes):
            self.tag(f"bytes:{len(obj)}")
            self.h.update(obj)
        elif torch.is_tensor(obj):
            t = obj.detach()
            if t.is_complex() or t.layout != torch.strided:
                t = t.to_dense() if t.layout != torch.strided else t
            t = t.cpu().contiguous()
            self.tag(f"tensor:{t.dtype}:{tuple(t.shape)}")
            if t.numel():
                self.h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, (torch.dtype, torch.device, torch.Size)):
            self.tag(f"{type(obj).__name__}:{obj}")
        elif isinstance(obj, (tuple, list)):
            self.tag(f"{type(obj).__name__}:{len(obj)}")
            for v in obj:
                self.feed(v, depth + 1)
        elif isinstance(obj, dict):
            self.tag(f"dict:{len(obj)}")
            for k in sorted(obj, key=repr):
                self.feed(k, depth + 1)
                self.feed(obj[k], depth + 1)
        elif isinstance(obj, nn.Module):
            # an operator that keeps a module: its class, its tensors and its plain attributes
            self._cls(type(obj))
            plain = {k: v for k, v in vars(obj).items() if not k.startswith("_") and k != "training"}
            self.feed({"state": dict(obj.state_dict(keep_vars=True)), "attrs": plain, "training": obj.training},
                      depth + 1)
        elif callable(obj) and not hasattr(obj, "__dict__"):
            self.cacheable = False  # a builtin or C function: its name is all we can see
            self.tag(f"callable:{getattr(obj, '__qualname__', repr(obj))}")
        elif hasattr(obj, "__dict__") or hasattr(obj, "__slots__"):
            self._cls(type(obj))
            if inspect.isfunction(obj) or inspect.ismethod(obj):
                self.tag(f"function:{obj.__qualname__}")
                self._source(obj)
                return
            attrs = dict(vars(obj)) if hasattr(obj, "__dict__") else {}
            for name in getattr(type(obj), "__slots__", ()):
                if hasattr(obj, name):
                    attrs[name] = getattr(obj, name)
            self.feed(attrs, depth + 1)
        else:
            raise TypeError(f"cannot fingerprint a {type(obj).__name__} inside the structure")

    def _cls(self, cls: type) -> None:
        self.tag(f"class:{cls.__module__}.{cls.__qualname__}")
        if cls not in self._classes:
            self._classes[cls] = None
            if not cls.__module__.startswith(("lipzoo.", "torch.")) and cls.__module__ != "lipzoo":
                self._source(cls)

    def _source(self, obj) -> None:
        """Code outside lipzoo (and torch) is not in :func:`code_hash`: hash its source, or mark the
        fingerprint as unfit for the cache when it cannot be read."""
        if getattr(obj, "__module__", "").startswith(("lipzoo.", "torch.")):
            return
        try:
            self.tag("source:" + hashlib.sha256(inspect.getsource(obj).encode()).hexdigest())
        except (OSError, TypeError):
            self.cacheable = False


def structure_fingerprint(structure) -> Fingerprint:
    """The :class:`Fingerprint` of a :class:`lipzoo.bounds.structure.Structure`."""
    h = _Hasher()
    h.tag("lipzoo structure v1")
    h.feed(tuple(structure.input_shape))
    h.feed(tuple(structure.output_shape))
    for b in structure.blocks:
        h.tag("block")
        # the slopes as derived at this call, and every operator with everything it holds
        h.feed([float(b.alpha), float(b.beta), tuple(b.x_shape), tuple(b.y_shape), tuple(b.next_shape)])
        if not b.elementwise:  # tagged only then: the fingerprints of elementwise structures stay as they were
            h.tag("phi: a Lipschitz map of the whole pre-activation")
        for op in (b.W, b.H, b.G):
            h.feed(op)
    h.tag("output")
    h.feed(structure.output)
    digest = h.h.hexdigest()
    summary = (f"{len(structure.blocks)} blocks, input {tuple(structure.input_shape)} -> "
               f"{tuple(structure.output_shape)}, fingerprint {digest[:12]}")
    return Fingerprint(digest, h.cacheable, summary)


def model_fingerprint(model: nn.Module, input_shape) -> Fingerprint:
    """The :class:`Fingerprint` of ``model`` on inputs of ``input_shape``, as the accountant sees it: its
    structure built from a float64 copy (every acceptance check runs; a refused model raises here)."""
    from lipzoo.bounds.structure import build_structure

    net = copy.deepcopy(model).to(dtype=torch.float64)
    with torch.no_grad():
        return structure_fingerprint(build_structure(net, input_shape))


def check_owner(fingerprint: str, summary: str | None, model: nn.Module, input_shape, where: str) -> None:
    """Raise a one-line ``ValueError`` naming both unless ``model`` on ``input_shape`` has ``fingerprint``."""
    if input_shape is None:
        raise ValueError(f"{where}: the input shape is needed to check that the bound is this model's.")
    mine = model_fingerprint(model, tuple(input_shape))
    if mine.digest != fingerprint:
        raise ValueError(f"{where}: the bound belongs to another model ({summary or fingerprint[:12]}), not to this "
                         f"one ({mine.summary}); compute this model's bound with lipzoo.lipschitz_bound.")
