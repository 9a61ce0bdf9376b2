"""The file level of a checkpoint: its three files, their bytes and their transport. No model code.

A checkpoint folder holds ``model.safetensors`` (weights only), ``config.json``
(:meth:`lipzoo.meta.Metadata.to_dict`) and ``README.md`` (the card, rendered from the config by
:mod:`lipzoo.hub.card`). This module reads and writes them (sha256 checked, each file replaced
atomically), downloads them from the Hugging Face Hub and uploads them, with errors in one line
that name the fix. It imports nothing from :mod:`lipzoo.models`: what needs a model (rebuilding one
from a config, the zoo's provenance table) sits above, in :mod:`lipzoo.models.factory` (timm's
``_builder`` over its ``_hub`` leaf) and :mod:`lipzoo.hub.checkpoint`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from lipzoo.hub.card import render_card
from lipzoo.meta import Metadata, file_sha256

__all__ = ["WEIGHTS_NAME", "CONFIG_NAME", "CARD_NAME", "CERTIFICATE_NAME", "CHECKPOINT_FILES", "STORAGE_DTYPES", "is_repo_id",
           "looks_local", "lipzoo_version", "storage_tensors", "serialize", "write_weights", "write_config_and_card",
           "read_config_json", "verified_weights", "read_tensors", "strict_state", "download", "upload"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
CERTIFICATE_NAME = "certificate.json"  # optional: the bound the card's numbers come from (lipzoo.bounds.shipped)
CHECKPOINT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, CERTIFICATE_NAME)  # all a download fetches, a push uploads
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# huggingface_hub's HTTP client and its transport: requests / urllib3 before 1.0, httpx / httpcore after
# (huggingface_hub 2.x ships them as httpx2 / httpcore2: the version digits are ignored)
_HTTP_CLIENTS = ("httpx", "httpcore", "requests", "urllib3")


def is_repo_id(text: Any) -> bool:
    """Whether ``text`` has the form of a Hub repo id, ``owner/name``."""
    return isinstance(text, str) and _REPO_ID.match(text) is not None


def looks_local(name: str) -> bool:
    """Whether ``name`` reads as a path on this machine (never to be taken for a repo id)."""
    return name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1 or \
        name.endswith((".safetensors", ".json")) or (os.altsep is not None and os.altsep in name)


def lipzoo_version() -> str:
    from importlib.metadata import PackageNotFoundError, version as dist_version

    import lipzoo  # the root package is cheap and imported already (its names load on first use)

    version = getattr(lipzoo, "__version__", None)
    if version:
        return str(version)
    try:
        return dist_version("lipzoo")
    except PackageNotFoundError:
        return "unknown"


# -- bytes on disk ------------------------------------------------------------------------------------
def storage_tensors(state_dict: Mapping[str, torch.Tensor], storage_dtype: str) -> dict[str, torch.Tensor]:
    """The tensors as stored: on the CPU, contiguous, floating ones cast to ``storage_dtype``.

    Raises:
        ValueError: an unknown ``storage_dtype``, or a finite value that overflows it.
    """
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {list(STORAGE_DTYPES)}; got {storage_dtype!r}.")
    dtype = STORAGE_DTYPES[storage_dtype]
    tensors = {}
    for key, value in state_dict.items():
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


def serialize(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """The bytes of ``model.safetensors`` (their sha256 is the checkpoint's identity)."""
    # One metadata key only: safetensors writes its metadata map in hash order, so several keys make
    # the bytes (and the sha256) differ between two saves of the same tensors. Version and storage
    # dtype live in config.json.
    return save(dict(tensors), metadata={"format": "pt"})


def _replace_write(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_weights(directory: Path, blob: bytes) -> Path:
    """Write ``model.safetensors`` into ``directory`` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / WEIGHTS_NAME
    _replace_write(path, lambda p: p.write_bytes(blob))
    return path


def write_config_and_card(directory: Path, meta: Metadata) -> None:
    """Write ``config.json`` and the card rendered from it."""
    config = meta.to_dict()
    text = json.dumps(config, indent=2) + "\n"
    _replace_write(directory / CONFIG_NAME, lambda p: p.write_text(text, encoding="utf-8"))
    readme = render_card(config, config.get("card"))
    _replace_write(directory / CARD_NAME, lambda p: p.write_text(readme, encoding="utf-8"))


def read_config_json(directory: str | os.PathLike, *, zoo_weights: Mapping[str, str] | None = None) -> Metadata:
    """``config.json`` of ``directory`` as :class:`lipzoo.meta.Metadata`, checked.

    Numbers that do not belong to the folder's sha256 are dropped (lipzoo 0.1 runs copied them), and
    a ``name`` that ``zoo_weights`` (zoo entry -> published sha256) gives to other weights becomes
    ``parent`` (:meth:`lipzoo.meta.Metadata.for_weights`).
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
    return meta.for_weights(meta.sha256, zoo_weights=zoo_weights)  # type: ignore[arg-type]  # None: it raises


def verified_weights(directory: Path, meta: Metadata, expected_sha256: str | None) -> tuple[Path, str]:
    """The weights file of ``directory`` and its sha256, checked against ``expected_sha256`` (a zoo
    entry's pin) and ``config.json``."""
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


def read_tensors(weights: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``model.safetensors`` file (on the CPU)."""
    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"Cannot read {weights}: {err}. The file is truncated or not a safetensors file.") from err


def strict_state(expected: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor], weights: Path,
                 what: str) -> dict[str, torch.Tensor]:
    """``tensors`` as the state dict ``expected`` (of the model ``what``): same keys and shapes, or an
    error naming the difference; floating tensors take the model's dtype (float16 storage -> float32)."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{weights} does not match architecture {what}: missing keys {missing}, "
                         f"unexpected keys {extra}. The config.json architecture/model_args do not describe "
                         "these weights.")
    shapes = [f"{key!r}: file has {tuple(tensors[key].shape)}, the model expects {tuple(target.shape)}"
              for key, target in expected.items() if tensors[key].shape != target.shape]
    if shapes:
        raise ValueError(f"{weights}: shape mismatch for {'; '.join(shapes)}. The config.json "
                         "architecture/model_args build a different model than these weights.")
    return {key: tensors[key].to(target.dtype) if tensors[key].is_floating_point() and target.is_floating_point()
            else tensors[key] for key, target in expected.items()}


# -- the Hub ------------------------------------------------------------------------------------------
def _offline() -> bool:
    from huggingface_hub import constants

    # constants.HF_HUB_OFFLINE is read once at import; honour the variable set later too
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _first_line(err: BaseException) -> str:
    text = str(err)
    return text.splitlines()[0] if text else type(err).__name__


def _is_connection_error(err: BaseException) -> bool:
    """No network: an ``OSError`` other than the Hub's own HTTP errors, or an error of the HTTP client."""
    from huggingface_hub.errors import HfHubHTTPError

    return (isinstance(err, OSError) and not isinstance(err, HfHubHTTPError)) or \
        type(err).__module__.split(".")[0].rstrip("0123456789") in _HTTP_CLIENTS


def download(repo_id: str, revision: str | None, *, cache_dir: str | os.PathLike | None = None,
             token: str | bool | None = None, local_files_only: bool = False, force_download: bool = False) -> Path:
    """Download (or find in the cache) the checkpoint files of a Hub repo (:data:`CHECKPOINT_FILES`); the local
    folder.

    Raises:
        ValueError: the repo or revision does not exist (or is private), or is gated.
        FileNotFoundError: the files are not cached and cannot be downloaded (offline, no network).
    """
    import huggingface_hub
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        LocalTokenNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    offline = local_files_only or _offline()
    where = f"Hub repo {repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    try:
        path = huggingface_hub.snapshot_download(repo_id, revision=revision,
                                                 cache_dir=cache_dir,  # type: ignore[arg-type]  # any PathLike works
                                                 token=token,
                                                 local_files_only=offline, force_download=force_download,
                                                 allow_patterns=list(CHECKPOINT_FILES), library_name="lipzoo",
                                                 library_version=lipzoo_version())
    except LocalTokenNotFoundError:
        raise ValueError(f"{where}: token=True but no Hugging Face token is stored. Fix: pass token='hf_...' or "
                         "run `hf auth login`.") from None
    except GatedRepoError:
        raise ValueError(f"{where} is gated: accept its terms on huggingface.co and pass token=... "
                         "(or run `hf auth login`).") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ValueError(f"{where} not found (or private: pass token=...). Check the repo id and revision, or "
                         "pass a local checkpoint directory.") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        if local_files_only:
            why, fix = "local_files_only=True forbids downloading it", "drop local_files_only"
        elif offline:
            why, fix = "offline mode (HF_HUB_OFFLINE) prevents the download", "unset HF_HUB_OFFLINE"
        else:  # huggingface_hub fell back to the cache because the Hub did not answer
            why, fix = "the Hub cannot be reached to download it", "check the network"
        raise FileNotFoundError(f"{where} is not in the local Hugging Face cache and {why}. Fix: {fix} and retry "
                                "(one download fills the cache), or pass a local checkpoint directory.") from None
    except HfHubHTTPError as err:
        raise FileNotFoundError(f"Downloading {where} failed: {_first_line(err)}. Fix: check the network and retry, "
                                "or set HF_HUB_OFFLINE=1 to use the local cache.") from None
    except Exception as err:
        if not _is_connection_error(err):
            raise
        raise FileNotFoundError(f"Downloading {where} failed ({type(err).__name__}: {_first_line(err)}). Fix: check "
                                "the network and retry, or set HF_HUB_OFFLINE=1 to use the local cache.") from None
    return Path(path)


def upload(directory: Path, repo_id: str, *, token: str | None = None, revision: str | None = None,
           private: bool = False, commit_message: str = "Upload lipzoo checkpoint") -> Any:
    """Create ``repo_id`` (and the branch ``revision``) if needed and upload the checkpoint files it holds.

    Returns:
        The ``huggingface_hub.CommitInfo`` of the upload.

    Raises:
        ConnectionError: the Hub cannot be reached (no network, or ``HF_HUB_OFFLINE`` is set).
        PermissionError: no token, or one that may not write to ``repo_id``.
        ValueError: the repo or revision was not found, or the Hub refused the upload.
    """
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, exist_ok=True, private=private)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=str(directory), revision=revision,
                                 commit_message=commit_message, allow_patterns=list(CHECKPOINT_FILES))
    except Exception as err:
        mapped = _push_error(err, repr(repo_id), revision)
        if mapped is None:  # not the network, the token or the repo: a bug to see in full
            raise
        raise mapped from None


def _push_error(err: Exception, where: str, revision: str | None) -> Exception | None:
    """One line with the fix for what went wrong in a push; ``None`` when it is none of the known causes."""
    from huggingface_hub.errors import (HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    login = "pass --token (token=...), set HF_TOKEN or run `hf auth login` with a token that has write access"
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, OfflineModeIsEnabled):
        return ConnectionError(f"push: cannot upload to {where}: offline mode (HF_HUB_OFFLINE) is set. Fix: unset "
                               "HF_HUB_OFFLINE and retry.")
    if isinstance(err, LocalTokenNotFoundError):
        return PermissionError(f"push: no Hugging Face token to upload to {where}. Fix: {login}.")
    if isinstance(err, RevisionNotFoundError):
        return ValueError(f"push: revision {revision!r} not found in {where}. Fix: check --revision (revision=...), "
                          "or leave it out to push to main.")
    if isinstance(err, RepositoryNotFoundError) or status == 404:
        return ValueError(f"push: Hub repo {where} not found, or not visible to this token. Fix: check the repo id "
                          f"(owner = your user or an organisation you write to); for a private repo, {login}.")
    if status in (401, 403):
        what = "the token was refused" if status == 401 else "this token may not write there"
        return PermissionError(f"push: not allowed to upload to {where} ({status}: {what}). Fix: {login}.")
    if isinstance(err, HfHubHTTPError):
        return ValueError(f"push: the Hub refused the upload to {where}: {_first_line(err)}. Fix: check the repo "
                          "id and --revision, then retry.")
    if _is_connection_error(err):
        return ConnectionError(f"push: the Hub cannot be reached to upload to {where} ({type(err).__name__}: "
                               f"{_first_line(err)}). Fix: check the network and retry.")
    return None
