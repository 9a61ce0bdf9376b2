"""Certified checkpoints in Hugging Face Hub layout: ``save_pretrained``, ``load``, ``push``, ``attach_results``.

Two levels (timm's ``_hub`` leaf under its ``_builder``):

* the file level, :mod:`lipzoo.hub.files` (the three files, sha256, safetensors, ``config.json``,
  download and upload) and :mod:`lipzoo.hub.card` (the model card): no model code, so
  :mod:`lipzoo.models` builds on them;
* the model level, :mod:`lipzoo.hub.checkpoint` (``load``, ``save_pretrained``, ``push``,
  ``attach_results``), above :mod:`lipzoo.models`.

The names below load on first use (PEP 562), so importing the file level never imports the models.
Importing this package changes nothing elsewhere.
"""

from __future__ import annotations

from lipzoo._lazy import lazy_attributes

# public name -> module that defines it
_EXPORTS = {
    "save_pretrained": "lipzoo.hub.checkpoint", "load": "lipzoo.hub.checkpoint", "push": "lipzoo.hub.checkpoint",
    "read_config": "lipzoo.hub.checkpoint", "read_metadata": "lipzoo.hub.checkpoint",
    "attach_results": "lipzoo.hub.checkpoint",
    "render_card": "lipzoo.hub.card", "certify_command": "lipzoo.hub.card",
}

_SUBMODULES = ("card", "checkpoint", "files")

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_attributes("lipzoo.hub", globals(), _EXPORTS, _SUBMODULES)
