"""Certified checkpoints in Hugging Face Hub layout: ``save_pretrained``, ``load``, ``push``, ``attach_results``.

Importing this package changes nothing elsewhere: ``lipzoo.create_model(..., pretrained=True)``
calls :func:`load` itself (see :mod:`lipzoo.models.factory`).
"""

from lipzoo.hub.card import certify_command, render_card
from lipzoo.hub.checkpoint import attach_results, load, push, read_config, read_metadata, save_pretrained

__all__ = ["save_pretrained", "load", "push", "read_config", "read_metadata", "attach_results", "render_card",
           "certify_command"]
