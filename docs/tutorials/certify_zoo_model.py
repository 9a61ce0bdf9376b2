"""Certify a zoo model: load crm-mnist-4c3f, bound it, and certify MNIST test images."""

import os

import torch
from torch.utils.data import DataLoader, Subset

import lipzoo
from lipzoo.certify import evaluate
from lipzoo.data import load_dataset

TINY = os.environ.get("LIPZOO_TUTORIAL_TINY") == "1"  # the tests run every tutorial on tiny settings
NUM_IMAGES = 100 if TINY else 500
ATTACK_STEPS = 5 if TINY else 20
# effort: the work the bound may spend certifying large operators exactly ("none", "low", "medium"
# (the default), "high"). Every value is proved either way; "none" (with only small operators
# computed exactly, max_dense=64) is looser, and takes a second or two.
BOUND_OPTIONS = {"effort": "none", "max_dense": 64} if TINY else {}

# 1. Load a zoo entry by name. Its weights ship inside the package: no network, sha256-checked.
model = lipzoo.load("crm-mnist-4c3f")
meta = model.metadata
print(f"{meta.name}: {meta.architecture}, input {meta.input_shape}, eps {[e.text for e in meta.eps]}")

# 2. Run it in float64, as `lipzoo certify` does: every radius subtracts a proved bound on the
#    rounding of the logits, and in float64 that bound is ~1e-8 (in float32 it costs certificates).
model = model.double()

# 3. The guaranteed pairwise bound: L[i, j] bounds the Lipschitz constant of z_i - z_j.
bound = lipzoo.lipschitz_bound(model, meta.input_shape, mode="pairwise", **BOUND_OPTIONS)
print(f"bound: guarantee={bound.guarantee}, mean L_ij={bound.value.sum().item() / (10 * 9):.3f}")

# 4. The first test images. The MNIST test split ships with lipzoo ($LIPZOO_DATA is used when set).
test = load_dataset("mnist", split="test")
loader = DataLoader(Subset(test, range(NUM_IMAGES)), batch_size=100)

# 5. Clean, certified and PGD accuracy. PGD runs only on the correct points the bound does not
#    certify (a certificate proves the others robust).
result = evaluate(model, loader, bound, [e.text for e in meta.eps], attack={"steps": ATTACK_STEPS},
                  arithmetic=torch.float64, progress=False)
print(f"kind: {result['kind']}")  # "certified": the bound is exact or proved
for key, value in result["summary"].items():
    print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")

# 6. Per-point certified radii (0 for a misclassified image): image i is provably robust to every
#    l2 perturbation of norm < radii[i].
radii = result["radii"]
print(f"median certified radius: {radii.median().item():.3f}")
