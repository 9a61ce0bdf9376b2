"""The LipLT accountant: Lipschitz bounds of logits and logit differences (paper, Theorem 3)."""

from lipzoo.bounds.certificate import LipschitzBound
from lipzoo.bounds.liplt import lipschitz_bound, lipschitz_bounds
from lipzoo.bounds.options import BoundOptions
from lipzoo.bounds.structure import Structure, build_structure

__all__ = ["BoundOptions", "LipschitzBound", "Structure", "build_structure", "lipschitz_bound", "lipschitz_bounds"]
