"""Training losses: Certified Radius Maximization (paper eqs. 5-6)."""

from lipzoo.losses.crm import G_FUNCTIONS, CRMLoss, crm_loss, soft_radius

__all__ = ["CRMLoss", "G_FUNCTIONS", "crm_loss", "soft_radius"]
