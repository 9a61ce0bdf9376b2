"""Checkpoints in Hugging Face Hub layout: ``model.safetensors`` + ``config.json`` + ``README.md``.

``config.json`` carries everything needed to rebuild the model and to know what its numbers mean
(architecture and arguments, normalization, ε as exact fractions, bound method and guarantee,
measured metrics) plus the sha256 of ``model.safetensors``. ``load`` checks that hash every time
and loads the state dict strictly into a freshly built model.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lipzoo.hub.card import render_card
from lipzoo.models import zoo
from lipzoo.models.registry import create_model
from lipzoo.models.zoo import parse_eps

__all__ = ["save_pretrained", "load", "push", "read_config", "WEIGHTS_NAME", "CONFIG_NAME", "CARD_NAME"]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
_STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_PER_EPS_METRICS = ("certified", "pgd")
_REQUIRED_KEYS = ("architecture", "num_classes", "input_shape")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _lipzoo_version() -> str:
    import lipzoo  # the package is imported already; read its version lazily (no import cycle)

    version = getattr(lipzoo, "__version__", None)
    if version:
        return str(version)
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("lipzoo")
    except PackageNotFoundError:
        return "unknown"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _eps_string(eps: Any, where: str) -> str:
    if isinstance(eps, Fraction):
        eps = str(eps)
    try:
        parse_eps(eps)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: {err}") from err
    return eps.strip()


def _flat_metrics(metrics: Any) -> dict[str, Any]:
    """Metrics in the flat layout of ``lipzoo.certify`` (``certified@36/255``); accuracies checked to be fractions."""
    if not isinstance(metrics, Mapping) or not all(isinstance(k, str) for k in metrics):
        raise ValueError(f"config['metrics'] must be None or a dict with string keys; got {metrics!r}.")
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in _PER_EPS_METRICS and isinstance(value, Mapping):  # {"certified": {"36/255": 0.6416}}
            flat.update({f"{key}@{eps}": v for eps, v in value.items()})
        else:
            flat[key] = value
    for key, value in flat.items():
        kind, sep, eps = key.partition("@")
        if sep and kind in _PER_EPS_METRICS:
            _eps_string(eps, f"config['metrics'][{key!r}]")
        if (kind == "clean" or kind in _PER_EPS_METRICS) and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0):
            raise ValueError(f"config['metrics'][{key!r}] must be an accuracy as a fraction in [0, 1], as "
                             f"lipzoo.certify reports it (0.6416, not 64.16); got {value!r}.")
    return flat


def _normalize_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a user config and return the dict that goes into ``config.json`` (minus hash/version)."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict; got {type(config).__name__}.")
    missing = [k for k in _REQUIRED_KEYS if k not in config]
    if missing:
        raise ValueError(f"config is missing required key(s) {missing}; it needs {list(_REQUIRED_KEYS)} "
                         "to rebuild the model (architecture = a name registered with lipzoo.models).")
    out = dict(config)
    if not isinstance(out["architecture"], str) or not out["architecture"]:
        raise ValueError(f"config['architecture'] must be a registered architecture name; got {out['architecture']!r}.")
    if isinstance(out["num_classes"], bool) or not isinstance(out["num_classes"], int) or out["num_classes"] < 1:
        raise ValueError(f"config['num_classes'] must be a positive int; got {out['num_classes']!r}.")
    shape = out["input_shape"]
    if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"config['input_shape'] must be a list of positive ints like [3, 32, 32]; got {shape!r}.")
    out["input_shape"] = list(shape)
    out["model_args"] = dict(out.get("model_args") or {})
    out.setdefault("normalization", None)
    if out["normalization"] is not None and not isinstance(out["normalization"], Mapping):
        raise ValueError(f"config['normalization'] must be None or a dict like {{'mean': [...], 'std': [...]}}; "
                         f"got {out['normalization']!r}.")
    out.setdefault("dataset", None)
    out["eps"] = [_eps_string(e, "config['eps']") for e in (out.get("eps") or [])]
    out.setdefault("bound", None)
    out.setdefault("metrics", None)
    if out["metrics"] is not None:
        out["metrics"] = _flat_metrics(out["metrics"])
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config must be plain JSON (str, numbers, lists, dicts; finite floats): {err}. "
                         "Convert tensors with .tolist() and Fractions with str().") from err
    return out


def _storage_tensors(model: nn.Module, storage_dtype: str) -> dict[str, torch.Tensor]:
    dtype = _STORAGE_DTYPES[storage_dtype]
    tensors = {}
    for key, value in model.state_dict().items():
        # clone: safetensors refuses tensors that share memory (tied weights); every key is kept
        tensor = value.detach().to("cpu").contiguous().clone()
        if tensor.is_floating_point() and tensor.dtype != dtype:
            cast = tensor.to(dtype)
            if torch.isfinite(tensor).all() and not torch.isfinite(cast).all():
                raise ValueError(f"state_dict[{key!r}] overflows {storage_dtype} (max |value| "
                                 f"{tensor.abs().max().item():.3g}); save with storage_dtype='float32'.")
            tensor = cast
        tensors[key] = tensor
    return tensors


def _replace_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, config: Mapping[str, Any],
                    card: Mapping[str, Any] | None = None, storage_dtype: str = "float32") -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` into ``directory``.

    Args:
        model: the trained model; its full ``state_dict`` is saved (weights only, no pickle).
        directory: output folder (created if needed; the three files are replaced).
        config: ``architecture``, ``num_classes``, ``input_shape`` (required), ``model_args``,
            ``normalization``, ``dataset``, ``eps`` (exact fractions as strings, e.g. ``"36/255"``),
            ``bound`` (``method``, ``mode``, ``guarantee``, values...), ``metrics`` (accuracies as
            fractions in ``[0, 1]``, as ``lipzoo.certify`` reports them: ``clean``,
            ``certified@<eps>``, ``pgd@<eps>``, ...; ``{"certified": {eps: acc}}`` is flattened to
            that layout), ``name`` (zoo entry; the card's title and certify target), ``recipe`` and
            ``training`` (``epochs_trained``, ``seconds_total``, ``hardware``; shown in the card),
            any other JSON keys (kept). ``sha256``, ``storage_dtype`` and ``lipzoo_version`` are
            computed and replace any value passed in.
        card: extras for the model card, see :func:`lipzoo.hub.card.render_card`.
        storage_dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` (half the size; loaded back
            into the model's own dtype, float32).

    Returns:
        The directory path.
    """
    if storage_dtype not in _STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {list(_STORAGE_DTYPES)}; got {storage_dtype!r}.")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    out = _normalize_config(config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    version = _lipzoo_version()
    tensors = _storage_tensors(model, storage_dtype)
    # One metadata key only: safetensors writes its metadata map in hash order, so several keys make
    # the bytes (and the sha256) differ between two saves of the same tensors. Version and storage
    # dtype live in config.json.
    metadata = {"format": "pt"}
    weights = directory / WEIGHTS_NAME
    _replace_write(weights, lambda p: save_file(tensors, str(p), metadata=metadata))
    out.update(lipzoo_version=version, storage_dtype=storage_dtype, sha256=_sha256(weights))
    if storage_dtype != "float32" and (out.get("metrics") or out.get("bound")):
        logger.warning("Saved %s weights with metrics/bound measured on the unrounded model; "
                       "re-certify the loaded checkpoint before publishing those numbers.", storage_dtype)
    text = json.dumps(out, indent=2) + "\n"
    _replace_write(directory / CONFIG_NAME, lambda p: p.write_text(text, encoding="utf-8"))
    readme = render_card(out, card)
    _replace_write(directory / CARD_NAME, lambda p: p.write_text(readme, encoding="utf-8"))
    logger.info("Saved %s checkpoint to %s (sha256 %s)", out["architecture"], directory, out["sha256"])
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint's ``config.json``.

    Args:
        directory: a folder written by :func:`save_pretrained`.

    Returns:
        The config dict.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"No {CONFIG_NAME} in {str(directory)!r}: expected a folder written by "
                         "lipzoo.hub.save_pretrained (model.safetensors + config.json + README.md).")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"Invalid {path}: not valid JSON ({err}). Re-save the checkpoint.") from err
    if not isinstance(config, dict):
        raise ValueError(f"Invalid {path}: expected a JSON object, got {type(config).__name__}.")
    missing = [k for k in (*_REQUIRED_KEYS, "sha256") if k not in config]
    if missing:
        raise ValueError(f"Invalid {path}: missing key(s) {missing}. Re-save it with lipzoo.hub.save_pretrained.")
    return config


def _verified_weights(directory: Path, config: Mapping[str, Any], expected_sha256: str | None) -> Path:
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise ValueError(f"No {WEIGHTS_NAME} in {str(directory)!r}: expected a folder written by "
                         "lipzoo.hub.save_pretrained.")
    actual = _sha256(weights)
    for source, expected in (("the zoo entry", expected_sha256), (str(directory / CONFIG_NAME), config["sha256"])):
        if expected is not None and expected != actual:
            raise ValueError(f"Checksum mismatch for {weights}: sha256 is {actual}, but {source} expects "
                             f"{expected}. The file is corrupt or was changed; download it again or re-save it.")
    return weights


def _build(config: Mapping[str, Any]) -> nn.Module:
    # the registry's convention (build_entry): model_args and the normalization's mean/std are builder kwargs
    kwargs = {**(config.get("model_args") or {}), **(config.get("normalization") or {})}
    return create_model(config["architecture"], num_classes=config["num_classes"], **kwargs)


def _strict_state(model: nn.Module, tensors: dict[str, torch.Tensor], weights: Path) -> dict[str, torch.Tensor]:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{weights} does not match architecture {type(model).__name__}: missing keys {missing}, "
                         f"unexpected keys {extra}. The config.json architecture/model_args do not describe "
                         "these weights.")
    shapes = [f"{key!r}: file has {tuple(tensors[key].shape)}, the model expects {tuple(target.shape)}"
              for key, target in expected.items() if tensors[key].shape != target.shape]
    if shapes:
        raise ValueError(f"{weights}: shape mismatch for {'; '.join(shapes)}. The config.json "
                         "architecture/model_args build a different model than these weights.")
    # floating tensors take the model's dtype: float16/bfloat16 storage back to float32
    return {key: tensors[key].to(target.dtype) if tensors[key].is_floating_point() and target.is_floating_point()
            else tensors[key] for key, target in expected.items()}


def _load_directory(directory: Path, *, expected_sha256: str | None = None,
                    map_location: str | torch.device = "cpu") -> nn.Module:
    config = read_config(directory)
    weights = _verified_weights(directory, config, expected_sha256)
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"Cannot read {weights}: {err}. The file is truncated or not a safetensors file.") from err
    model = _build(config)
    model.load_state_dict(_strict_state(model, tensors, weights), strict=True)
    model = model.to(map_location).eval()
    model.lipzoo_config = dict(config)
    return model


def _zoo_entry(name: str) -> dict[str, Any] | None:
    return zoo.get_entry(name) if name in zoo.list_entries() else None


def _snapshot(repo_id: str, revision: str | None) -> Path:
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    # constants.HF_HUB_OFFLINE is read once at import; honour the variable set later too
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    try:
        path = huggingface_hub.snapshot_download(repo_id, revision=revision, local_files_only=offline,
                                                 library_name="lipzoo", library_version=_lipzoo_version())
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise ValueError(f"Hub repo {repo_id!r} (revision {revision!r}) not found: {err}. Check the repo id "
                         "and revision, or pass a local checkpoint directory.") from err
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(f"Hub repo {repo_id!r} (revision {revision!r}) is not in the local Hugging Face "
                                f"cache and cannot be downloaded (offline={offline}): {err}. Unset HF_HUB_OFFLINE "
                                "or download it once with network access.") from err
    return Path(path)


def _resolve(name: str, revision: str | None) -> tuple[Path, str | None]:
    """Find the checkpoint folder for a zoo name or repo id: (folder, the entry's pinned sha256 or None)."""
    entry = _zoo_entry(name)
    if entry is not None:
        weights = entry.get("weights")
        if not weights:
            raise ValueError(f"Zoo entry {name!r} has no trained weights yet (weights: null). Train it with "
                             f"`lipzoo train {name}` and load the output folder, or push it and fill in the "
                             "entry's weights.")
        pinned = weights.get("revision")
        sha = weights.get("sha256")
        if revision is not None and revision != pinned:
            logger.warning("Loading %s at revision %s instead of the entry's %s: only the config.json "
                           "checksum is verified.", name, revision, pinned)
            sha = None
        if weights.get("filename") not in (None, WEIGHTS_NAME):
            raise ValueError(f"Zoo entry {name!r}: weights.filename is {weights['filename']!r}, but lipzoo checkpoints "
                             f"store their weights as {WEIGHTS_NAME!r}; fix the entry.")
        local = weights.get("local")
        if local and revision in (None, pinned) and (_PACKAGE_DIR / local).is_dir():
            return _PACKAGE_DIR / local, sha
        if not weights.get("repo_id"):
            raise ValueError(f"Zoo entry {name!r}: local weights {local!r} not found under {_PACKAGE_DIR} and "
                             "no repo_id to download from. Reinstall lipzoo or fix the entry's weights.")
        return _snapshot(weights["repo_id"], revision or pinned), sha
    if _REPO_ID.match(name):
        return _snapshot(name, revision), None
    close = difflib.get_close_matches(name, zoo.list_entries(), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"Unknown model {name!r}: not a local directory, a zoo entry or a Hub repo id "
                     f"('owner/name').{hint} See lipzoo.list_models('crm-*').")


def load(name_or_path: str | os.PathLike, revision: str | None = None, *,
         map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a certified checkpoint: a local folder, a zoo entry name or a Hub repo id.

    The weights' sha256 is checked against ``config.json`` (and the zoo entry's pin), the model is
    rebuilt from the config and the state dict loaded strictly; the model is returned in eval mode
    with ``model.lipzoo_config`` (the config dict).

    Args:
        name_or_path: a directory written by :func:`save_pretrained` (an existing directory wins
            over a zoo name or repo id spelled the same), a zoo name (``"crm-mnist-4c3f"``) or a
            Hub repo id (``"owner/name"``).
        revision: Hub revision (branch, tag or commit); default the entry's pinned revision or main.
        map_location: device for the returned model.

    Returns:
        The model.
    """
    if isinstance(name_or_path, os.PathLike) or Path(str(name_or_path)).is_dir():
        directory = Path(name_or_path)
        if not directory.is_dir():
            raise ValueError(f"Checkpoint directory {str(directory)!r} does not exist.")
        return _load_directory(directory, map_location=map_location)
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a str or path; got {type(name_or_path).__name__}.")
    directory, sha = _resolve(name_or_path, revision)
    return _load_directory(directory, expected_sha256=sha, map_location=map_location)


def push(directory: str | os.PathLike, repo_id: str, *, token: str | None = None, revision: str | None = None,
         private: bool = False, commit_message: str = "Upload lipzoo checkpoint") -> Any:
    """Upload a checkpoint folder to the Hugging Face Hub after checking it loads.

    Only ``model.safetensors``, ``config.json`` and ``README.md`` are uploaded, and only after
    :func:`load` succeeds on the folder (checksum, strict state dict), so a pushed checkpoint
    always loads.

    Args:
        directory: a folder written by :func:`save_pretrained`.
        repo_id: ``"owner/name"``; created if it does not exist.
        token: Hub token; default from ``HF_TOKEN`` / the huggingface_hub login.
        revision: branch to commit to (created if needed); default ``main``.
        private: create the repo as private.
        commit_message: the commit message.

    Returns:
        The ``huggingface_hub.CommitInfo`` of the upload (``.commit_url``, ``.oid``).
    """
    from huggingface_hub import HfApi

    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"push: directory {str(directory)!r} does not exist.")
    absent = [n for n in (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME) if not (directory / n).is_file()]
    if absent:
        raise ValueError(f"push: {str(directory)!r} lacks {absent}; write it with lipzoo.hub.save_pretrained.")
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ValueError(f"push: repo_id must look like 'owner/name'; got {repo_id!r}.")
    config = load(directory).lipzoo_config
    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(directory), revision=revision,
                             commit_message=commit_message, allow_patterns=[WEIGHTS_NAME, CONFIG_NAME, CARD_NAME])
    logger.info("Pushed %s to %s; zoo weights: {repo_id: %s, revision: %s, sha256: %s}", directory,
                getattr(info, "commit_url", repo_id), repo_id, getattr(info, "oid", revision), config["sha256"])
    return info
