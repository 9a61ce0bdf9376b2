"""The factory: ``create_model`` over the architecture registry and the zoo entries.

Names it takes:

* an architecture (``"6c2f"``): fresh weights; with ``pretrained=True`` its default pretrained
  entry (see :func:`lipzoo.models.zoo.default_entry`);
* ``"<architecture>.<tag>"`` (``"6c2f.crm_cifar10"``) or a zoo entry (``"crm-cifar10-6c2f"``);
* ``"hf-hub:owner/name"``: a checkpoint on the Hugging Face Hub, ``"local-dir:path"``: a checkpoint
  folder (both always pretrained); :func:`load_pretrained` also takes a folder path as it is.

With ``pretrained=True`` and a ``num_classes`` other than the checkpoint's, every weight but the
classifier is loaded and the classifier is re-initialised (``reset_classifier``); the certificate
and measured numbers of the checkpoint no longer apply and are dropped from the model's metadata.

Checkpoints at the model level live here too, over the file level :mod:`lipzoo.hub.files` (timm's
``_builder`` over its ``_hub`` leaf, which imports no model code): :func:`load_checkpoint` (a folder,
zoo entry or Hub repo -> a model, checksum-verified and loaded strictly), :func:`save_checkpoint`
(refuses a config that does not rebuild the model) and :func:`push_checkpoint`. ``lipzoo.hub``
publishes them as ``load``, ``save_pretrained`` and ``push``; nothing here imports from above.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, cast

import torch
from torch import nn

from lipzoo.hub import files
from lipzoo.meta import Metadata
from lipzoo.models import zoo
from lipzoo.models.registry import REGISTRY, filter_names, get_architecture, list_architectures

__all__ = ["create_model", "build_model", "build_entry", "load_pretrained", "list_models", "list_pretrained",
           "is_model", "resolve_name", "load_checkpoint", "save_checkpoint", "push_checkpoint", "checkpoint_metadata",
           "HUB_PREFIX", "LOCAL_PREFIX"]

logger = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"  # timm's spelling of "a checkpoint folder on this machine"
# keyword arguments of load_checkpoint (lipzoo.hub.load), passed through with pretrained=True
_LOAD_OPTIONS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "map_location")


def list_models(pattern: str | None = None) -> list[str]:
    """Architectures and zoo entries matching the fnmatch ``pattern`` (e.g. ``"crm-*"``), sorted."""
    return filter_names(set(list_architectures()) | set(zoo.list_entries()), pattern)


def list_pretrained(pattern: str | None = None) -> list[str]:
    """Zoo entries with published weights matching ``pattern``, sorted."""
    return filter_names([n for n in zoo.list_entries() if zoo.get_metadata(n).weights is not None], pattern)


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered architecture or a zoo entry."""
    return name in REGISTRY or name in zoo.list_entries()


def _unknown(name: Any) -> ValueError:
    if isinstance(name, str) and ("/" in name or "\\" in name or name.endswith((".pt", ".pth", ".safetensors"))):
        return ValueError(f"create_model takes a registered name, got {name!r}, which looks like a Hub repo id "
                          f"or a path; load a checkpoint with lipzoo.load(...) (or create_model('{HUB_PREFIX}"
                          "owner/name') for a Hub repo).")
    close = difflib.get_close_matches(str(name), list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"Unknown model {name!r}.{hint} See lipzoo.list_models().")


def resolve_name(name: str) -> tuple[str, str | None]:
    """``(architecture, entry)`` of a name: ``"6c2f"`` -> ``("6c2f", None)``; ``"crm-cifar10-6c2f"`` and
    ``"6c2f.crm_cifar10"`` -> ``("6c2f", "crm-cifar10-6c2f")``.

    Raises:
        ValueError: unknown name or tag (with suggestions).
    """
    if name in REGISTRY:
        return name, None
    if name in zoo.list_entries():
        return zoo.get_metadata(name).architecture, name
    arch, dot, tag = name.partition(".")
    if dot and arch in REGISTRY:
        for entry in zoo.entries_of(arch):
            if zoo.pretrained_tag(entry) == tag:
                return arch, entry
        tags = [zoo.pretrained_tag(e) for e in zoo.entries_of(arch)]
        raise ValueError(f"Architecture {arch!r} has no pretrained tag {tag!r}; its tags are {tags}. See "
                         "lipzoo.list_pretrained().")
    raise _unknown(name)


def build_model(config: Metadata | Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Build the (untrained) network a config describes; ``overrides`` win over its builder arguments.

    Args:
        config: a :class:`lipzoo.meta.Metadata` or a dict in its layout (a zoo entry, ``config.json``
            or what :func:`lipzoo.train.resolve_config` returns).

    Raises:
        ValueError: the architecture is not registered, or it builds a model whose input shape is not the
            config's ``input_shape``.
    """
    meta = config if isinstance(config, Metadata) else Metadata.from_dict(config)
    info = get_architecture(meta.architecture) if meta.architecture in REGISTRY else None
    if info is None:
        raise ValueError(f"{_what(meta)} names architecture {meta.architecture!r}, which is not registered; "
                         f"known: {list_architectures()}.")
    model = info.build(**{**meta.arch.builder_kwargs(), **overrides})
    shape = tuple(model.input_shape)  # type: ignore[arg-type]  # a registry model has one
    if "in_chans" not in overrides and "img_size" not in overrides and shape != tuple(meta.input_shape):
        raise ValueError(f"{_what(meta)} declares input_shape {list(meta.input_shape)} but architecture "
                         f"{meta.architecture!r} built with its model_args expects {list(shape)}; fix the "
                         "input_shape or model_args.")
    return model


def _what(meta: Metadata) -> str:
    return f"Zoo entry {meta.name!r}" if meta.name else "The config"


def build_entry(entry: Metadata | Mapping[str, Any], **overrides: Any) -> nn.Module:
    """lipzoo 0.1 name of :func:`build_model`."""
    return build_model(entry, **overrides)


def create_model(name: str, pretrained: bool = False, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build an architecture or a zoo entry, with its published weights when ``pretrained``.

    Args:
        name: an architecture (``"6c2f"``), a zoo entry (``"crm-cifar10-6c2f"``), an architecture with a
            pretrained tag (``"6c2f.crm_cifar10"``) or ``"hf-hub:owner/name"``; see :func:`list_models`.
        pretrained: load the weights (the entry's, or the architecture's default entry's). The model
            comes back in eval mode with its metadata in ``model.lipzoo_config``.
        num_classes: readout size. With ``pretrained=True`` and a different size than the checkpoint's,
            the classifier is re-initialised and the checkpoint's certificate is dropped.
        **kwargs: builder arguments (``mean``, ``std``, ``activation``, ``in_chans``, ...); with
            ``pretrained=True`` only :func:`load_checkpoint` (``lipzoo.hub.load``) options (``revision``, ``cache_dir``,
            ``token``, ``local_files_only``, ``force_download``, ``map_location``), since the weights
            fix the rest.

    Raises:
        ValueError: unknown name, no weights, or builder arguments that contradict the weights.
    """
    if not isinstance(name, str):
        raise TypeError(f"create_model: name must be a str such as '6c2f', got {type(name).__name__}.")
    if name.startswith(HUB_PREFIX):
        return _pretrained(name, name, num_classes, kwargs)
    if name.startswith(LOCAL_PREFIX):
        return _pretrained(name, name[len(LOCAL_PREFIX):], num_classes, kwargs)
    arch, entry = resolve_name(name)
    if pretrained:
        if entry is None:
            entry = zoo.default_entry(arch)
            if entry is None:
                entries = zoo.entries_of(arch)
                raise ValueError(f"Architecture {name!r} has no pretrained weights yet (zoo entries of it: {entries}, "
                                 "none published). Build it with pretrained=False, or pick one of "
                                 f"lipzoo.list_pretrained() = {list_pretrained()}.")
            logger.info("%s: loading its default pretrained entry %s.", name, entry)
        return _pretrained(name, entry, num_classes, kwargs)
    bad = sorted(set(kwargs) & set(_LOAD_OPTIONS))
    if bad:
        raise ValueError(f"create_model({name!r}): {bad} apply to pretrained=True only.")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if entry is None:
        return get_architecture(arch).build(**kwargs)
    return build_model(zoo.get_metadata(entry), **kwargs)


def load_pretrained(source: str | os.PathLike, num_classes: int | None = None, **options: Any) -> nn.Module:
    """A pretrained model from anywhere, its classifier resized to ``num_classes`` (fine-tuning's start).

    Args:
        source: a checkpoint folder (``runs/A/final``), a zoo entry (``"crm-cifar10-6c2f"``), an
            architecture or ``architecture.tag`` (its default / tagged entry) or ``"hf-hub:owner/name"``.
        num_classes: the new readout size; ``None`` or the checkpoint's own keeps the classifier. A new
            classifier drops the checkpoint's certificate and numbers (``model.lipzoo_config["parent"]``
            names the checkpoint).
        **options: :func:`load_checkpoint` (``lipzoo.hub.load``) options (``revision``, ``cache_dir``, ``token``,
            ``local_files_only``, ``force_download``, ``map_location``).

    Returns:
        The model in eval mode with ``model.lipzoo_config``.
    """
    if isinstance(source, os.PathLike) or (isinstance(source, str) and os.path.isdir(source)):
        return create_model(LOCAL_PREFIX + os.fspath(source), num_classes=num_classes, **options)
    return create_model(source, pretrained=True, num_classes=num_classes, **options)


def _pretrained(name: str, source: str, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
    local = name.startswith(LOCAL_PREFIX)
    meta = None if source.startswith(HUB_PREFIX) or local else zoo.get_metadata(source)
    if meta is not None and meta.weights is None:
        raise ValueError(f"Zoo entry {source!r} has no published weights yet (weights: null in "
                         f"lipzoo/zoo_configs/{source}.yaml). Build it untrained with pretrained=False, or pick "
                         f"one of list_pretrained() = {list_pretrained()}.")
    options = {k: kwargs.pop(k) for k in _LOAD_OPTIONS if k in kwargs}
    if local and not os.path.isdir(source):
        raise ValueError(f"{name!r}: {source!r} is not a checkpoint folder (model.safetensors + config.json).")
    model: Any = load_checkpoint(Path(source) if local else source, **options)  # a lipzoo model
    saved = model.lipzoo_config
    builder = {**saved.get("model_args", {}), **(saved.get("normalization") or {})}
    # compared as JSON: (0.5,) and [0.5] are the same normalization
    differing = {k: v for k, v in kwargs.items()
                 if k not in builder or json.dumps(builder[k], default=str) != json.dumps(v, default=str)}
    if differing:
        raise ValueError(f"create_model({name!r}, pretrained=True) got builder arguments {differing} that differ "
                         f"from the checkpoint's ({builder}). Pretrained weights load as saved: drop those "
                         "arguments (num_classes=N replaces only the classifier), or build with pretrained=False.")
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    if meta is not None and isinstance(getattr(model, "pretrained_cfg", None), dict):
        model.pretrained_cfg = {**model.pretrained_cfg, "tag": zoo.pretrained_tag(source),
                                "hf_hub_id": meta.weights.repo_id}  # type: ignore[union-attr]  # checked above
    return model


# -- checkpoints: the model level over lipzoo.hub.files ----------------------------------------------
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the package: zoo entries' shipped folders (weights.local)
_NORMALIZATION_RTOL = 1e-2


def checkpoint_metadata(directory: str | os.PathLike) -> Metadata:
    """A checkpoint folder's ``config.json``, checked, with the zoo's provenance rules applied.

    Numbers that do not belong to the folder's sha256 are dropped, and a zoo name whose published
    weights are others becomes ``parent`` (see :func:`lipzoo.hub.files.read_config_json`).
    """
    return files.read_config_json(directory, zoo_weights=zoo.published_sha256())


def _load_folder(directory: Path, *, expected_sha256: str | None = None,
                 map_location: str | torch.device = "cpu") -> nn.Module:
    meta = checkpoint_metadata(directory)
    weights, sha = files.verified_weights(directory, meta, expected_sha256)
    tensors = files.read_tensors(weights)
    model = build_model(meta)
    model.load_state_dict(files.strict_state(model.state_dict(), tensors, weights, type(model).__name__), strict=True)
    model = model.to(map_location).eval()
    model.lipzoo_config = meta  # type: ignore[assignment]  # the lipzoo model's property
    model.lipzoo_certificate = shipped_certificate(directory, sha)  # type: ignore[assignment]
    return model


def shipped_certificate(directory: Path, sha256: str) -> dict | None:
    """The folder's ``certificate.json`` (:mod:`lipzoo.bounds.shipped`) when it is one of these weights, else
    ``None`` (a malformed one, or one of other weights, is ignored with a warning: the bound is then computed)."""
    path = Path(directory) / files.CERTIFICATE_NAME
    if not path.is_file():
        return None
    from lipzoo.bounds.shipped import CertificateError, read_certificate

    try:
        record = read_certificate(path)
    except CertificateError as err:
        logger.warning("Ignoring %s", err)
        return None
    if record["weights_sha256"] != sha256:
        logger.warning("Ignoring %s: it certifies weights with sha256 %s, not these (%s).", path,
                       record["weights_sha256"][:12], sha256[:12])
        return None
    return record


def _resolve(name: str, revision: str | None, hub: dict[str, Any]) -> tuple[Path, str | None]:
    """The checkpoint folder of a zoo name or repo id: (folder, the entry's pinned sha256 or None)."""
    if name.startswith(HUB_PREFIX):
        repo_id = name[len(HUB_PREFIX):]
        if not files.is_repo_id(repo_id):
            raise ValueError(f"{name!r}: expected {HUB_PREFIX}owner/name.")
        return files.download(repo_id, revision, **hub), None
    if name in zoo.list_entries():
        weights = zoo.get_metadata(name).weights
        if weights is None:
            raise ValueError(f"Zoo entry {name!r} has no trained weights yet (weights: null). Train it with "
                             f"`lipzoo train {name}` and load the output folder, or push it and fill in the "
                             "entry's weights.")
        sha: str | None
        pinned, sha = weights.revision, weights.sha256
        if revision is not None and revision != pinned:
            logger.warning("Loading %s at revision %s instead of the entry's %s: only the config.json "
                           "checksum is verified.", name, revision, pinned)
            sha = None
        if weights.filename != files.WEIGHTS_NAME:
            raise ValueError(f"Zoo entry {name!r}: weights.filename is {weights.filename!r}, but lipzoo checkpoints "
                             f"store their weights as {files.WEIGHTS_NAME!r}; fix the entry.")
        if weights.local and revision in (None, pinned) and (_PACKAGE_DIR / weights.local).is_dir():
            return _PACKAGE_DIR / weights.local, sha
        return files.download(weights.repo_id, revision or pinned, **hub), sha
    if files.is_repo_id(name):
        return files.download(name, revision, **hub), None
    close = difflib.get_close_matches(name, zoo.list_entries(), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"Unknown model {name!r}: not a local directory, a zoo entry or a Hub repo id "
                     f"('owner/name' or '{HUB_PREFIX}owner/name').{hint} See lipzoo.list_models('crm-*').")


def load_checkpoint(name_or_path: str | os.PathLike, revision: str | None = None, *,
                    map_location: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = None,
                    token: str | bool | None = None, local_files_only: bool = False,
                    force_download: bool = False) -> nn.Module:
    """Load a certified checkpoint: a local folder, a zoo entry, ``hf-hub:owner/name`` or ``owner/name``.

    The weights' sha256 is checked against ``config.json`` (and the zoo entry's pin), the model is
    rebuilt from the config and the state dict loaded strictly; the model is returned in eval mode
    with ``model.lipzoo_config`` (and ``model.metadata``) and ``model.lipzoo_certificate`` (the folder's
    ``certificate.json`` for these weights, or ``None``). A download fetches only ``model.safetensors``,
    ``config.json``, ``README.md`` and ``certificate.json``. Published as ``lipzoo.load``.

    Args:
        name_or_path: an existing directory (always wins), a zoo name (``"crm-mnist-4c3f"``) or a Hub
            repo. A path-like string that is not a directory is an error, never a repo id.
        revision: Hub revision (branch, tag or commit); default the entry's pinned revision or main.
        map_location: device for the returned model.
        cache_dir: as in ``huggingface_hub.snapshot_download``.
        token: as in ``huggingface_hub.snapshot_download``.
        local_files_only: as in ``huggingface_hub.snapshot_download``.
        force_download: as in ``huggingface_hub.snapshot_download``.

    Raises:
        ValueError: unknown name, checksum or structure mismatch, repo not found.
        FileNotFoundError: the files are not cached and cannot be downloaded (offline, no network).
    """
    if isinstance(name_or_path, os.PathLike) or (isinstance(name_or_path, str) and Path(name_or_path).is_dir()):
        directory = Path(name_or_path)
        if not directory.is_dir():
            raise ValueError(f"Checkpoint directory {str(directory)!r} does not exist.")
        return _load_folder(directory, map_location=map_location)
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a str or path; got {type(name_or_path).__name__}.")
    if files.looks_local(name_or_path) and not name_or_path.startswith(HUB_PREFIX):
        raise ValueError(f"{name_or_path!r} looks like a local path but is not a checkpoint directory; pass the "
                         "folder that holds model.safetensors and config.json (a Hub repo is 'owner/name').")
    hub = {"cache_dir": cache_dir, "token": token, "local_files_only": local_files_only,
           "force_download": force_download}
    directory, sha = _resolve(name_or_path, revision, hub)
    return _load_folder(directory, expected_sha256=sha, map_location=map_location)


def _save_metadata(config: Any, model: nn.Module) -> Metadata:
    if config is None:
        meta = getattr(model, "metadata", None)
        if isinstance(meta, Metadata):
            return meta
        if not hasattr(model, "get_config"):
            raise TypeError(f"save_pretrained: pass config=... for a {type(model).__name__} (it has no get_config()).")
        return Metadata.from_dict(model.get_config())  # type: ignore[operator]
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
    """Refuse a config that does not rebuild ``model`` (same state_dict keys and shapes, same normalization)."""
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


def _check_bound_owner(record: Mapping[str, Any] | None, model: nn.Module, input_shape, where: str) -> None:
    """Refuse results whose bound record names another model's fingerprint (one line naming both)."""
    if record is not None and record.get("fingerprint") is not None:
        from lipzoo.bounds.fingerprint import check_owner  # a lower layer; the bounds package is heavy to import

        check_owner(record["fingerprint"], record.get("model_summary"), model, input_shape, where)


def save_checkpoint(model: nn.Module, directory: str | os.PathLike, *, config: Any = None,
                    card: Mapping[str, Any] | None = None, storage_dtype: str = "float32") -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` into ``directory``.

    Published as ``lipzoo.save_pretrained``.

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
    if storage_dtype not in files.STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {list(files.STORAGE_DTYPES)}; got {storage_dtype!r}.")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    meta = _save_metadata(config, model)
    _check_rebuilds(model, meta)
    if card is not None:
        meta = meta.replace(extra={**meta.extra, "card": dict(card)})
        json.dumps(dict(card), allow_nan=False)
    tensors = files.storage_tensors(model.state_dict(), storage_dtype)
    blob = files.serialize(tensors)
    meta = meta.for_weights(hashlib.sha256(blob).hexdigest(), zoo_weights=zoo.published_sha256())
    if meta.results is not None:  # results kept for these weights: their bound must name this very model
        twin = build_model(meta)
        twin.load_state_dict({k: tensors[k].to(v.dtype) if v.is_floating_point() else tensors[k]
                              for k, v in twin.state_dict().items()}, strict=True)
        _check_bound_owner(meta.results.bound, twin.eval(), meta.input_shape, "save_pretrained")
    directory = Path(directory)
    files.write_weights(directory, blob)
    meta = meta.replace(storage_dtype=storage_dtype, lipzoo_version=files.lipzoo_version())
    files.write_config_and_card(directory, meta)
    logger.info("Saved %s checkpoint to %s (sha256 %s)", meta.architecture, directory, meta.sha256)
    return directory


def push_checkpoint(directory: str | os.PathLike, repo_id: str, *, token: str | None = None,
                    revision: str | None = None, private: bool = False,
                    commit_message: str = "Upload lipzoo checkpoint") -> Any:
    """Upload a checkpoint folder to the Hugging Face Hub after checking it loads.

    The folder must load (checksum, strict state dict); its card is re-rendered from its
    ``config.json``, so the uploaded card shows only numbers measured on the uploaded weights.
    Only ``model.safetensors``, ``config.json``, ``README.md`` and ``certificate.json`` (when present) are
    uploaded. Published as ``lipzoo.push``.

    Args:
        directory: a folder written by :func:`save_checkpoint`.
        repo_id: ``"owner/name"``; created if it does not exist.
        token: Hub token; default from ``HF_TOKEN`` / the huggingface_hub login.
        revision: the branch to commit to (created if needed); default ``main``. The name
            huggingface_hub gives it, as in ``lipzoo.load(..., revision=)`` and ``lipzoo push --revision``.
        private: create the repo as private.
        commit_message: the commit message.

    Returns:
        The ``huggingface_hub.CommitInfo`` of the upload (``.commit_url``, ``.oid``).

    Raises:
        ValueError: not a checkpoint folder (or one that does not load), a malformed ``repo_id``, a
            repo or revision the Hub does not have.
        PermissionError: no token, or one that may not write to ``repo_id``.
        ConnectionError: the Hub cannot be reached.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"push: directory {str(directory)!r} does not exist.")
    absent = [n for n in (files.WEIGHTS_NAME, files.CONFIG_NAME) if not (directory / n).is_file()]
    if absent:
        raise ValueError(f"push: {str(directory)!r} lacks {absent}; write it with lipzoo.hub.save_pretrained.")
    if not files.is_repo_id(repo_id):
        raise ValueError(f"push: repo_id must look like 'owner/name'; got {repo_id!r}.")
    meta = cast(Metadata, _load_folder(directory).metadata)  # the loaded lipzoo model's metadata
    files.write_config_and_card(directory, meta)  # the card and config say exactly what the folder holds
    info = files.upload(directory, repo_id, token=token, revision=revision, private=private,
                        commit_message=commit_message)
    logger.info("Pushed %s to %s; zoo weights: {repo_id: %s, revision: %s, sha256: %s}", directory,
                getattr(info, "commit_url", repo_id), repo_id, getattr(info, "oid", revision), meta.sha256)
    return info
