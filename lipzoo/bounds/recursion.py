"""The LipLT accountant: Theorem 3 / eq. (16) and the naive bound, globally, per class or per pair.

For ``y_k = W_k x_k``, ``x_{k+1} = H_k x_k + G_k phi_k(y_k)`` and ``z = W_L x_L`` (see
:mod:`lipzoo.bounds.structure`), with ``Hhat_k = H_k + (alpha_k+beta_k)/2 G_k W_k`` and
``d_k = (beta_k - alpha_k)/2``::

    m_0     = ||W_0||
    m_{t}   = ||W_t Hhat_{t-1} ... Hhat_0|| + sum_{j<t} d_j ||W_t Hhat_{t-1} ... Hhat_{j+1} G_j|| m_j

``m_t`` bounds the Lipschitz constant of ``x_0 -> y_t`` and ``m_L`` that of the network. For the
output (``t = L``) the operators have as many rows as there are classes, so their rows
``S^T e_i`` are computed exactly with one batched adjoint sweep; the pairwise bound of
``z_i - z_j`` then uses the row differences ``S^T (e_i - e_j)`` directly (not ``L_i + L_j``), for
any number of classes.
"""

from __future__ import annotations

import torch

from lipzoo.bounds.norms import reference_tensor
from lipzoo.bounds.structure import Structure, numel
from lipzoo.bounds.sweep import adjoint_sweep

__all__ = ["output_rows", "liplt_recursion"]


def output_rows(structure: Structure, sources) -> dict:
    """Rows ``S_{L,j}^T e_i`` for every source ``j`` in one batched adjoint sweep: ``{j: (K, n_j)}``."""
    L = structure.depth
    k = numel(structure.output_shape)
    ref = reference_tensor(structure)
    eye = torch.eye(k, dtype=ref.dtype, device=ref.device).reshape(k, *structure.output_shape)
    rows = adjoint_sweep(structure, {(L, j): eye for j in sources})
    return {j: rows[(L, j)].reshape(k, -1) for j in sources}


def liplt_recursion(structure: Structure, inner: dict, final: dict) -> tuple[torch.Tensor, list]:
    """Eq. (16): ``inner[(t, j)]`` are norms for targets ``t < L``; ``final[j]`` the output norms."""
    m: list[torch.Tensor] = []
    for t in range(structure.depth):
        mt = inner[(t, -1)]
        for j in range(t):
            mt = mt + structure.blocks[j].d * inner[(t, j)] * m[j]
        m.append(mt)
    out = final[-1]
    for j in range(structure.depth):
        out = out + structure.blocks[j].d * final[j] * m[j]
    return out, m
