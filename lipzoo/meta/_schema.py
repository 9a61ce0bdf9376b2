"""The vocabularies of the metadata and its small checkers: every message names the key, what was expected
and what came (the one parser of :mod:`lipzoo.meta` is built from these)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Mapping, Sequence


def file_sha256(path) -> str:
    """The sha256 of a file, read in 1 MiB blocks: the identity that weights, data and results share."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


LOSSES = ("crm", "ce", "gloro", "emma", "hkr")
"""``recipe.loss``: CRM, plain cross-entropy, GloRo (Leino et al. 2021), EMMA (Hu et al. 2023), hinge-KR (deel-torchlip)."""
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("exponential", "constant")
G_FUNCTIONS = ("linear", "exp")
"""The CRM loss's radius transforms ``g`` (paper eq. 6): ``linear`` or ``exp``."""
AUGMENTATIONS = ("hflip", "affine", "crop")
"""The augmentations a recipe may name: horizontal flip, random affine, random crop."""
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
# precision of the training estimator's power iterations (``LipLTEstimator(iteration_dtype=...)``):
# float32 (the default, first) is the model's own, auto is bfloat16 on CPUs that compute it natively (float32 on CUDA)
POWER_ITERATION_DTYPES = ("float32", "bfloat16", "auto")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# -- small checkers (every message names the key, what was expected and what came) ----------------
def _fail(path: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"{path}: expected {expected}, got {got!r}.")


def _keys(d: Any, path: str, required: Sequence[str], optional: Sequence[str] = ()) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise _fail(path, "a mapping", d)
    unknown = sorted(set(d) - set(required) - set(optional), key=str)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; allowed: {list(required) + list(optional)}.")
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}.")
    return d


def _number(v: Any, path: str, *, low: float | None = None, high: float | None = None, low_open: bool = False,
            high_open: bool = False, integer: bool = False) -> Any:
    kind = "an int" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        hint = " (PyYAML reads 1e-3 as a string; write 1.0e-3)" if isinstance(v, str) else ""
        raise ValueError(f"{path}: expected {kind}{hint}, got {v!r}.")
    if not math.isfinite(v):
        raise _fail(path, f"a finite {'int' if integer else 'number'}", v)
    if low is not None and (v < low or (low_open and v == low)):
        raise _fail(path, f"{kind} {'>' if low_open else '>='} {low}", v)
    if high is not None and (v > high or (high_open and v == high)):
        raise _fail(path, f"{kind} {'<' if high_open else '<='} {high}", v)
    return v


def _choice(v: Any, path: str, choices: Sequence[str]) -> str:
    if v not in choices:
        raise _fail(path, f"one of {list(choices)}", v)
    return v


def _string(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(path, "a non-empty string", v)
    return v


def _sha(v: Any, path: str) -> str:
    if not isinstance(v, str) or not _SHA256_RE.match(v):
        raise _fail(path, "64 lowercase hex digits (a sha256)", v)
    return v


def _json(v: Any, path: str) -> Any:
    try:
        json.dumps(v, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: must be JSON-serializable (str, numbers, lists, mappings; finite floats): {err}. "
                         "Convert tensors with .tolist() and Fractions with str().") from err
    return v


def _accuracy(v: Any, path: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{path} must be an accuracy as a fraction in [0, 1], as lipzoo.certify reports it "
                         f"(0.6416, not 64.16); got {v!r}.")
    return float(v)




def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class _Problems(ValueError):
    """A ``ValueError`` listing several problems of one block (``Recipe.parse`` lists them with its own)."""

    def __init__(self, path: str, problems: list[str]):
        self.problems = problems
        super().__init__(problems[0] if len(problems) == 1 else
                         f"{path}: {len(problems)} problems:\n  - " + "\n  - ".join(problems))


def _optional_block(d: Any, path: str, checks: Mapping[str, Any]) -> dict[str, Any]:
    """The values of a block whose keys are all optional: ``checks`` maps each key to ``check(value, path)``.

    ``None`` is the empty block. Unknown keys and every bad value are reported together (:class:`_Problems`).
    """
    d = {} if d is None else d
    if not isinstance(d, Mapping):
        raise _fail(path, f"a mapping with keys among {list(checks)} (or null for the defaults)", d)
    problems = []
    unknown = sorted(set(d) - set(checks), key=str)
    if unknown:
        problems.append(f"{path}: unknown key(s) {unknown}; allowed: {list(checks)}.")
    values = {}
    for key, check in checks.items():
        if key in d:
            try:
                values[key] = check(d[key], f"{path}.{key}")
            except ValueError as err:
                problems.append(str(err))
    if problems:
        raise _Problems(path, problems)
    return values


def _radius_or_null(v: Any, path: str) -> float | None:
    """A training radius ``> 0``, or ``None``: the entry's first certification radius (``certify.eps[0]``)."""
    return None if v is None else float(_number(v, f"{path} (a radius, or null for certify.eps[0])", low=0,
                                                low_open=True))


def _share(v: Any, path: str) -> float:
    return float(_number(v, f"{path} (a share of recipe.epochs)", low=0, high=1))

