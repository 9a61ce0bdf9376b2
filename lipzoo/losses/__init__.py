"""Training losses on pairwise Lipschitz bounds: CRM (paper eqs. 5-6) and the field's GloRo, EMMA and hinge-KR.

Each is a pure function ``f(logits, labels, pairwise_L, ...)`` plus a thin module over it, where
``pairwise_L[i, j]`` bounds the Lipschitz constant of ``z_i - z_j`` (the trainer passes the
differentiable :class:`lipzoo.LipLTEstimator` estimate). ``lipzoo train`` picks one by ``recipe.loss``.
"""

from lipzoo.losses.crm import G_FUNCTIONS, CRMLoss, crm_loss, soft_radius
from lipzoo.losses.emma import EMMALoss, emma_logits, emma_loss
from lipzoo.losses.gloro import GloRoLoss, bottom_logit, gloro_loss
from lipzoo.losses.hkr import HKRLoss, hkr_loss

__all__ = ["CRMLoss", "G_FUNCTIONS", "crm_loss", "soft_radius", "GloRoLoss", "gloro_loss", "bottom_logit",
           "EMMALoss", "emma_loss", "emma_logits", "HKRLoss", "hkr_loss"]
