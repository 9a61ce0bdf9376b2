"""Checkpoints in Hugging Face Hub layout: ``model.safetensors`` + ``config.json`` + ``README.md``.

``config.json`` is :meth:`lipzoo.meta.Metadata.to_dict`: everything needed to rebuild the model and
to know what its numbers mean, plus the sha256 of ``model.safetensors``. ``load`` checks that hash
every time and loads the state dict strictly into a freshly built model.

Provenance rules (enforced here, so callers need no special care):

* :func:`save_pretrained` rebuilds the model from the config and checks every ``state_dict`` key
  and shape before writing anything;
* measured numbers (``metrics``) and a published ``weights`` reference are written only if they
  belong to the sha256 being written; a zoo name that belongs to other weights becomes ``parent``;
* :func:`attach_results` is the one way to add numbers to a folder: a ``lipzoo certify`` report
  of those very weights (checked by sha256); only then does the card show results.
"""

from __future__ import annotations

import dataclasses
import hashlib

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from lipzoo.hub.card import render_card
from lipzoo.meta import Metadata, Results, file_sha256
from lipzoo.models import zoo
from lipzoo.models.factory import HUB_PREFIX, build_model

__all__ = ["save_pretrained", "load", "push", "read_config", "read_metadata", "attach_results", "WEIGHTS_NAME",
           "CONFIG_NAME", "CARD_NAME", "CHECKPOINT_FILES"]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
CHECKPOINT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)  # all a download fetches (allow_patterns)
_STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_NORMALIZATION_RTOL = 1e-2


def _lipzoo_version() -> str:
    from importlib.metadata import PackageNotFoundError, version as dist_version

    import lipzoo  # the package is imported already; read its version lazily (no import cycle)

    version = getattr(lipzoo, "__version__", None)
    if version:
        return str(version)
    try:
        return dist_version("lipzoo")
    except PackageNotFoundError:
        return "unknown"


def _metadata(config: Any, model: nn.Module) -> Metadata:
    if config is None:
        meta = getattr(model, "metadata", None)
        if isinstance(meta, Metadata):
            return meta
        if not hasattr(model, "get_config"):
            raise TypeError(f"save_pretrained: pass config=... for a {type(model).__name__} (it has no get_config()).")
        return Metadata.from_dict(model.get_config())
    if isinstance(config, Metadata):
        return config
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict or a lipzoo.meta.Metadata; got {type(config).__name__}.")
    missing = [k for k in ("architecture", "num_classes", "input_shape") if k not in config]
    if missing:
        raise ValueError(f"config is missing required key(s) {missing}; it needs architecture, num_classes and "
                         "input_shape to rebuild the model (architecture = a name registered with lipzoo.models).")
    return Metadata.from_dict(config)


def _check_rebuilds(model: nn.Module, meta: Metadata) -> None:
    """Refuse a config that does not rebuild ``model`` (same state_dict keys and shapes)."""
    try:
        twin = build_model(meta)
    except (TypeError, ValueError) as err:
        raise ValueError(f"save_pretrained: the config does not rebuild a model: {err}") from err
    expected, actual = twin.state_dict(), model.state_dict()
    missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    shapes = [f"{k!r}: model {tuple(actual[k].shape)}, config {tuple(v.shape)}"
              for k, v in expected.items() if k in actual and actual[k].shape != v.shape]
    if missing or extra or shapes:
        raise ValueError(f"save_pretrained: the config ({meta.architecture}, num_classes={meta.num_classes}, "
                         f"model_args={dict(meta.arch.model_args)}) builds a different model than the one given: "
                         f"missing keys {missing}, unexpected keys {extra}, shapes {shapes}. Save with "
                         "config=None (the model's own metadata) or fix the config.")
    norm = meta.arch.normalization
    ours = getattr(model, "normalization", None)
    # relative 1e-2: float16 / bfloat16 storage rounds the buffers (2^-11, 2^-8); a wrong statistic is far off
    if norm is not None and ours is not None and any(
            abs(a - b) > _NORMALIZATION_RTOL * max(abs(a), abs(b), 1e-12) for key in ("mean", "std")
            for a, b in zip(ours[key], getattr(norm, key))):
        raise ValueError(f"save_pretrained: config normalization {norm.to_dict()} differs from the model's "
                         f"Normalize layer {ours}; the loaded model would normalise differently.")


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


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, config: Any = None,
                    card: Mapping[str, Any] | None = None, storage_dtype: str = "float32") -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` into ``directory``.

    Args:
        model: the model; its full ``state_dict`` is saved (weights only, no pickle).
        directory: output folder (created if needed; the three files are replaced).
        config: a :class:`lipzoo.meta.Metadata` or a dict in its layout (a zoo entry, a
            ``config.json``, :func:`lipzoo.train.resolve_config` plus ``training``); default the
            model's own :attr:`metadata` (or ``get_config()``). Checked to rebuild ``model``.
            ``metrics`` and ``weights`` are kept only if they name the sha256 written here; a zoo
            ``name`` whose published weights are others becomes ``parent``. ``sha256``,
            ``storage_dtype`` and ``lipzoo_version`` are computed.
        card: extras for the model card (see :func:`lipzoo.hub.card.render_card`); kept in
            ``config.json`` (``card``) so the card can be re-rendered.
        storage_dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` (loaded back as float32).

    Returns:
        The directory path.

    Raises:
        ValueError: a config that does not rebuild ``model``, or an invalid value in it.
    """
    if storage_dtype not in _STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {list(_STORAGE_DTYPES)}; got {storage_dtype!r}.")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    meta = _metadata(config, model)
    _check_rebuilds(model, meta)
    if card is not None:
        meta = meta.replace(extra={**meta.extra, "card": dict(card)})
        json.dumps(dict(card), allow_nan=False)
    tensors = _storage_tensors(model, storage_dtype)
    # One metadata key only: safetensors writes its metadata map in hash order, so several keys make
    # the bytes (and the sha256) differ between two saves of the same tensors. Version and storage
    # dtype live in config.json.
    blob = save(tensors, metadata={"format": "pt"})
    meta = meta.for_weights(hashlib.sha256(blob).hexdigest(), zoo_weights=zoo.published_sha256())
    if meta.results is not None:  # results kept for these weights: their bound must name this very model
        twin = build_model(meta)
        twin.load_state_dict({k: tensors[k].to(v.dtype) if v.is_floating_point() else tensors[k]
                              for k, v in twin.state_dict().items()}, strict=True)
        _check_bound_owner(meta.results.bound, twin.eval(), meta.input_shape, "save_pretrained")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_NAME
    _replace_write(weights, lambda p: p.write_bytes(blob))
    meta = meta.replace(storage_dtype=storage_dtype, lipzoo_version=_lipzoo_version())
    _write_config_and_card(directory, meta)
    logger.info("Saved %s checkpoint to %s (sha256 %s)", meta.architecture, directory, meta.sha256)
    return directory


def _check_bound_owner(record: Mapping[str, Any] | None, model: nn.Module, input_shape, where: str) -> None:
    """Refuse results whose bound record names another model's fingerprint (one line naming both)."""
    if (record or {}).get("fingerprint") is not None:
        from lipzoo.bounds.fingerprint import check_owner

        check_owner(record["fingerprint"], record.get("model_summary"), model, input_shape, where)


def _write_config_and_card(directory: Path, meta: Metadata) -> None:
    config = meta.to_dict()
    text = json.dumps(config, indent=2) + "\n"
    _replace_write(directory / CONFIG_NAME, lambda p: p.write_text(text, encoding="utf-8"))
    readme = render_card(config, config.get("card"))
    _replace_write(directory / CARD_NAME, lambda p: p.write_text(readme, encoding="utf-8"))


def attach_results(directory: str | os.PathLike, report: Mapping[str, Any]) -> Metadata:
    """Attach a ``lipzoo certify`` report to the checkpoint folder it was measured on.

    The weights file is hashed and must match ``config.json`` (and ``report["sha256"]`` when the
    report names one); ``config.json`` and the card are rewritten with the results, the weights are
    untouched.

    Returns:
        The folder's new metadata.

    Raises:
        ValueError: not a checkpoint folder, a changed weights file, or a report of other weights.
    """
    directory = Path(directory)
    meta = read_metadata(directory)
    _, sha = _verified_weights(directory, meta, None)
    named = report.get("sha256")
    if named is not None and named != sha:
        raise ValueError(f"attach_results: the report was measured on weights with sha256 {named}, but "
                         f"{directory / WEIGHTS_NAME} has sha256 {sha}; certify this folder and attach that report.")
    _check_bound_owner(report.get("bound"), _load_directory(directory), meta.input_shape, "attach_results")
    results = Results.from_report(report, sha)
    trained = (meta.training or {}).get("epochs_trained")
    if results.epochs_trained is None and trained is not None:  # the weights' own training record
        results = dataclasses.replace(results, epochs_trained=int(trained))
    meta = meta.replace(results=results)
    _write_config_and_card(directory, meta)
    logger.info("Attached certification results to %s (sha256 %s).", directory, sha)
    return meta


def read_metadata(directory: str | os.PathLike) -> Metadata:
    """Read and validate a checkpoint's ``config.json`` as :class:`lipzoo.meta.Metadata`.

    Numbers that do not belong to the folder's sha256 are dropped (lipzoo 0.1 runs copied them).
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
    missing = [k for k in ("architecture", "num_classes", "input_shape", "sha256") if k not in config]
    if missing:
        raise ValueError(f"Invalid {path}: missing key(s) {missing}. Re-save it with lipzoo.hub.save_pretrained.")
    try:
        meta = Metadata.from_dict(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Invalid {path}: {err}") from err
    return meta.for_weights(meta.sha256, zoo_weights=zoo.published_sha256())


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """:func:`read_metadata` as a dict (the ``config.json`` layout)."""
    return read_metadata(directory).to_dict()


def _verified_weights(directory: Path, meta: Metadata, expected_sha256: str | None) -> tuple[Path, str]:
    """The weights file of ``directory`` and its sha256, checked against the entry and ``config.json``."""
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise ValueError(f"No {WEIGHTS_NAME} in {str(directory)!r}: expected a folder written by "
                         "lipzoo.hub.save_pretrained.")
    actual = file_sha256(weights)
    for source, expected in (("the zoo entry", expected_sha256), (str(directory / CONFIG_NAME), meta.sha256)):
        if expected is not None and expected != actual:
            raise ValueError(f"Checksum mismatch for {weights}: sha256 is {actual}, but {source} expects "
                             f"{expected}. The file is corrupt or was changed; download it again or re-save it.")
    return weights, actual


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
    meta = read_metadata(directory)
    weights, _ = _verified_weights(directory, meta, expected_sha256)
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"Cannot read {weights}: {err}. The file is truncated or not a safetensors file.") from err
    model = build_model(meta)
    model.load_state_dict(_strict_state(model, tensors, weights), strict=True)
    model = model.to(map_location).eval()
    model.lipzoo_config = meta
    return model


def _offline() -> bool:
    from huggingface_hub import constants

    # constants.HF_HUB_OFFLINE is read once at import; honour the variable set later too
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _snapshot(repo_id: str, revision: str | None, *, cache_dir=None, token=None, local_files_only: bool = False,
              force_download: bool = False) -> Path:
    """Download (or find in the cache) the checkpoint files of a Hub repo; errors in one line with the fix."""
    import huggingface_hub
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)

    offline = local_files_only or _offline()
    where = f"Hub repo {repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    try:
        path = huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                                 local_files_only=offline, force_download=force_download,
                                                 allow_patterns=list(CHECKPOINT_FILES), library_name="lipzoo",
                                                 library_version=_lipzoo_version())
    except GatedRepoError:
        raise ValueError(f"{where} is gated: accept its terms on huggingface.co and pass token=... "
                         "(or run `hf auth login`).") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ValueError(f"{where} not found (or private: pass token=...). Check the repo id and revision, or "
                         "pass a local checkpoint directory.") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        reason = "local_files_only=True" if local_files_only else "offline mode (HF_HUB_OFFLINE)" if offline \
            else "the Hub cannot be reached"
        raise FileNotFoundError(f"{where} is not in the local Hugging Face cache and {reason} prevents the "
                                "download. Fix: connect once (unset HF_HUB_OFFLINE, drop local_files_only) to fill "
                                "the cache, or pass a local checkpoint directory.") from None
    except HfHubHTTPError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FileNotFoundError(f"Downloading {where} failed: {first}. Fix: check the network and retry, or set "
                                "HF_HUB_OFFLINE=1 to use the local cache.") from None
    except Exception as err:
        # connection errors come from the HTTP client (requests before huggingface_hub 1.0, httpx after)
        if not isinstance(err, OSError) and type(err).__module__.split(".")[0] not in ("httpx", "requests", "urllib3"):
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        raise FileNotFoundError(f"Downloading {where} failed ({type(err).__name__}: {first}). Fix: check the "
                                "network and retry, or set HF_HUB_OFFLINE=1 to use the local cache.") from None
    return Path(path)


def _resolve(name: str, revision: str | None, hub: dict[str, Any]) -> tuple[Path, str | None]:
    """Find the checkpoint folder for a zoo name or repo id: (folder, the entry's pinned sha256 or None)."""
    import difflib

    if name.startswith(HUB_PREFIX):
        repo_id = name[len(HUB_PREFIX):]
        if not _REPO_ID.match(repo_id):
            raise ValueError(f"{name!r}: expected {HUB_PREFIX}owner/name.")
        return _snapshot(repo_id, revision, **hub), None
    if name in zoo.list_entries():
        meta = zoo.get_metadata(name)
        weights = meta.weights
        if weights is None:
            raise ValueError(f"Zoo entry {name!r} has no trained weights yet (weights: null). Train it with "
                             f"`lipzoo train {name}` and load the output folder, or push it and fill in the "
                             "entry's weights.")
        pinned, sha = weights.revision, weights.sha256
        if revision is not None and revision != pinned:
            logger.warning("Loading %s at revision %s instead of the entry's %s: only the config.json "
                           "checksum is verified.", name, revision, pinned)
            sha = None
        if weights.filename != WEIGHTS_NAME:
            raise ValueError(f"Zoo entry {name!r}: weights.filename is {weights.filename!r}, but lipzoo checkpoints "
                             f"store their weights as {WEIGHTS_NAME!r}; fix the entry.")
        if weights.local and revision in (None, pinned) and (_PACKAGE_DIR / weights.local).is_dir():
            return _PACKAGE_DIR / weights.local, sha
        return _snapshot(weights.repo_id, revision or pinned, **hub), sha
    if _REPO_ID.match(name):
        return _snapshot(name, revision, **hub), None
    close = difflib.get_close_matches(name, zoo.list_entries(), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"Unknown model {name!r}: not a local directory, a zoo entry or a Hub repo id "
                     f"('owner/name' or '{HUB_PREFIX}owner/name').{hint} See lipzoo.list_models('crm-*').")


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1 or \
        name.endswith((".safetensors", ".json")) or (os.altsep is not None and os.altsep in name)


def load(name_or_path: str | os.PathLike, revision: str | None = None, *,
         map_location: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = None,
         token: str | bool | None = None, local_files_only: bool = False,
         force_download: bool = False) -> nn.Module:
    """Load a certified checkpoint: a local folder, a zoo entry, ``hf-hub:owner/name`` or ``owner/name``.

    The weights' sha256 is checked against ``config.json`` (and the zoo entry's pin), the model is
    rebuilt from the config and the state dict loaded strictly; the model is returned in eval mode
    with ``model.lipzoo_config`` (and ``model.metadata``). A download fetches only
    ``model.safetensors``, ``config.json`` and ``README.md``.

    Args:
        name_or_path: an existing directory (always wins), a zoo name (``"crm-mnist-4c3f"``) or a Hub
            repo. A path-like string that is not a directory is an error, never a repo id.
        revision: Hub revision (branch, tag or commit); default the entry's pinned revision or main.
        map_location: device for the returned model.
        cache_dir, token, local_files_only, force_download: as in ``huggingface_hub.snapshot_download``.

    Raises:
        ValueError: unknown name, checksum or structure mismatch, repo not found.
        FileNotFoundError: the files are not cached and cannot be downloaded (offline, no network).
    """
    if isinstance(name_or_path, os.PathLike) or (isinstance(name_or_path, str) and Path(name_or_path).is_dir()):
        directory = Path(name_or_path)
        if not directory.is_dir():
            raise ValueError(f"Checkpoint directory {str(directory)!r} does not exist.")
        return _load_directory(directory, map_location=map_location)
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a str or path; got {type(name_or_path).__name__}.")
    if _looks_local(name_or_path) and not name_or_path.startswith(HUB_PREFIX):
        raise ValueError(f"{name_or_path!r} looks like a local path but is not a checkpoint directory; pass the "
                         "folder that holds model.safetensors and config.json (a Hub repo is 'owner/name').")
    hub = {"cache_dir": cache_dir, "token": token, "local_files_only": local_files_only,
           "force_download": force_download}
    directory, sha = _resolve(name_or_path, revision, hub)
    return _load_directory(directory, expected_sha256=sha, map_location=map_location)


def push(directory: str | os.PathLike, repo_id: str, *, token: str | None = None, revision: str | None = None,
         private: bool = False, commit_message: str = "Upload lipzoo checkpoint") -> Any:
    """Upload a checkpoint folder to the Hugging Face Hub after checking it loads.

    The folder must load (checksum, strict state dict); its card is re-rendered from its
    ``config.json``, so the uploaded card shows only numbers measured on the uploaded weights.
    Only ``model.safetensors``, ``config.json`` and ``README.md`` are uploaded.

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
    absent = [n for n in (WEIGHTS_NAME, CONFIG_NAME) if not (directory / n).is_file()]
    if absent:
        raise ValueError(f"push: {str(directory)!r} lacks {absent}; write it with lipzoo.hub.save_pretrained.")
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ValueError(f"push: repo_id must look like 'owner/name'; got {repo_id!r}.")
    meta = load(directory).metadata
    _write_config_and_card(directory, meta)  # the card and config say exactly what the folder holds
    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(directory), revision=revision,
                             commit_message=commit_message, allow_patterns=list(CHECKPOINT_FILES))
    logger.info("Pushed %s to %s; zoo weights: {repo_id: %s, revision: %s, sha256: %s}", directory,
                getattr(info, "commit_url", repo_id), repo_id, getattr(info, "oid", revision), meta.sha256)
    return info
