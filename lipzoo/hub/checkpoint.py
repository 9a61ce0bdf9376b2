"""Checkpoints at the model level: ``load``, ``save_pretrained``, ``push``, ``attach_results``.

A checkpoint is a folder in Hugging Face Hub layout: ``model.safetensors`` + ``config.json`` +
``README.md``. ``config.json`` is :meth:`lipzoo.meta.Metadata.to_dict`: everything needed to
rebuild the model and to know what its numbers mean, plus the sha256 of ``model.safetensors``.

This module sits above :mod:`lipzoo.models`; the file level under it, :mod:`lipzoo.hub.files`
(bytes, sha256, downloads, uploads) and :mod:`lipzoo.hub.card`, imports no model code, and the
models import nothing from here. ``load``, ``save_pretrained`` and ``push`` are the factory's
:func:`~lipzoo.models.factory.load_checkpoint`, :func:`~lipzoo.models.factory.save_checkpoint` and
:func:`~lipzoo.models.factory.push_checkpoint` (``create_model(..., pretrained=True)`` and
``LipschitzSequential.from_pretrained`` need them below the hub, as timm's ``_builder`` does).

Provenance rules (enforced there and here, so callers need no special care):

* ``save_pretrained`` rebuilds the model from the config and checks every ``state_dict`` key and
  shape before writing anything;
* measured numbers (``metrics``) and a published ``weights`` reference are written only if they
  belong to the sha256 being written; a zoo name that belongs to other weights becomes ``parent``;
* :func:`attach_results` is the one way to add numbers to a folder: a ``lipzoo certify`` report
  of those very weights (checked by sha256); only then does the card show results.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from lipzoo.hub.files import CARD_NAME, CHECKPOINT_FILES, CONFIG_NAME, WEIGHTS_NAME, verified_weights, \
    write_config_and_card
from lipzoo.meta import Metadata, Results
from lipzoo.models.factory import checkpoint_metadata, load_checkpoint, push_checkpoint, save_checkpoint

__all__ = ["save_pretrained", "load", "push", "read_config", "read_metadata", "attach_results", "WEIGHTS_NAME",
           "CONFIG_NAME", "CARD_NAME", "CHECKPOINT_FILES"]

logger = logging.getLogger(__name__)

# The Hugging Face names of the factory's checkpoint functions (one implementation each).
load = load_checkpoint
save_pretrained = save_checkpoint
push = push_checkpoint


def read_metadata(directory: str | os.PathLike) -> Metadata:
    """Read and validate a checkpoint's ``config.json`` as :class:`lipzoo.meta.Metadata`.

    Numbers that do not belong to the folder's sha256 are dropped (lipzoo 0.1 runs copied them).
    """
    return checkpoint_metadata(directory)


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """:func:`read_metadata` as a dict (the ``config.json`` layout)."""
    return read_metadata(directory).to_dict()


def attach_results(directory: str | os.PathLike, report: Mapping[str, Any], certificate: Mapping | None = None
                   ) -> Metadata:
    """Attach a ``lipzoo certify`` report to the checkpoint folder it was measured on.

    The weights file is hashed and must match ``config.json`` (and ``report["sha256"]`` when the
    report names one); ``config.json`` and the card are rewritten with the results, the weights are
    untouched. ``certificate``: the bound's shipped certificate (:func:`lipzoo.bounds.shipped.certificate_record`
    of the report's bound), written as ``certificate.json``; it must name these weights and the report's bound.

    Returns:
        The folder's new metadata.

    Raises:
        ValueError: not a checkpoint folder, a changed weights file, or a report of other weights.
    """
    directory = Path(directory)
    meta = read_metadata(directory)
    _, sha = verified_weights(directory, meta, None)
    named = report.get("sha256")
    if named is not None and named != sha:
        raise ValueError(f"attach_results: the report was measured on weights with sha256 {named}, but "
                         f"{directory / WEIGHTS_NAME} has sha256 {sha}; certify this folder and attach that report.")
    model = load(directory)  # numbers go only into a folder that loads (strict, checksum)
    bound = report.get("bound") or {}
    if bound.get("fingerprint") is not None:  # the bound must be of these weights' model, as in save_pretrained
        from lipzoo.bounds.fingerprint import check_owner  # a lower layer, heavy to import

        check_owner(bound["fingerprint"], bound.get("model_summary"), model, meta.input_shape, "attach_results")
    if certificate is not None:
        from lipzoo.bounds.shipped import write_certificate

        if certificate.get("weights_sha256") != sha or certificate.get("fingerprint") != bound.get("fingerprint"):
            raise ValueError("attach_results: the certificate is not of these weights and this report's bound.")
        write_certificate(directory, certificate)
    results = Results.from_report(report, sha)
    trained = (meta.training or {}).get("epochs_trained")
    if results.epochs_trained is None and trained is not None:  # the weights' own training record
        results = dataclasses.replace(results, epochs_trained=int(trained))
    meta = meta.replace(results=results)
    write_config_and_card(directory, meta)
    logger.info("Attached certification results to %s (sha256 %s).", directory, sha)
    return meta
