"""Bound your own network: a guaranteed bound, an estimate, and what separates them."""

import os

import torch
from torch import nn

import lipzoo
from lipzoo.certify import evaluate

TINY = os.environ.get("LIPZOO_TUTORIAL_TINY") == "1"  # the tests run every tutorial on tiny settings
NUM_POINTS = 8 if TINY else 64
torch.manual_seed(0)

# 1. A network: an nn.Sequential of lipzoo layers. Each layer declares its Lipschitz structure
#    (lipschitz_state()); Normalize is part of the network, so inputs are pixels in [0, 1].
model = nn.Sequential(
    lipzoo.Normalize([0.5], [0.25]),
    lipzoo.LTConv2d(1, 16, 3, stride=2, padding=1),  # convolution + ReLU
    lipzoo.LTResidualConv(16, 32, 3),  # sqrt(rho)-Lipschitz by construction (Proposition 2)
    lipzoo.Flatten(),
    lipzoo.LTLinear(16 * 14 * 14, 10, activation=None),  # the logits
).eval()
input_shape = (1, 28, 28)

# 2. A guaranteed bound. L[i, j] bounds the Lipschitz constant of z_i - z_j (the logit difference
#    that decides between classes i and j); the diagonal is zero.
bound = lipzoo.lipschitz_bound(model, input_shape, method="liplt", mode="pairwise")
print(f"guaranteed bound: guarantee={bound.guarantee!r}, guaranteed={bound.guaranteed}, "
      f"shape {tuple(bound.value.shape)}, max L_ij {bound.value.max().item():.4f}")
# LipLT evaluated at every operator norm's estimate from below: the exact LipLT value lies between
# this and bound.value, so it says how much tighter any computation of LipLT could get.
below = torch.tensor(bound.details["liplt_at_estimates"]["pairwise"], dtype=torch.float64)
print(f"LipLT at the norms' estimates from below: max {below.max().item():.4f}")

# 3. An estimate: power iteration is fast but converges from below, so it may under-estimate
#    the Lipschitz constant. It is labelled so, and it is not a certificate.
estimate = lipzoo.lipschitz_bound(model, input_shape, norm="power")
print(f"estimate: guarantee={estimate.guarantee!r}, guaranteed={estimate.guaranteed}, "
      f"max L_ij {estimate.value.max().item():.4f}")

# 4. Certification refuses an estimate (a radius from it could be a false promise) unless you ask
#    for numbers labelled "estimated".
x = torch.rand(NUM_POINTS, *input_shape)
y = model(x).argmax(dim=1)
try:
    evaluate(model, [(x, y)], estimate, ["0.1"], progress=False)
except ValueError as err:
    print(f"evaluate refused the estimate: {str(err)[:60]}...")
estimated = evaluate(model, [(x, y)], estimate, ["0.1"], allow_estimate=True, progress=False)
print(f"with allow_estimate=True: kind={estimated['kind']!r}, keys {sorted(estimated['summary'])}")
certified = evaluate(model, [(x, y)], bound, ["0.1"], progress=False)
print(f"with the guaranteed bound: kind={certified['kind']!r}, keys {sorted(certified['summary'])}")

# 5. Check the bound from below: at any point, the gradient norm of z_i - z_j is a lower bound
#    on its Lipschitz constant, so it can never exceed L[i, j].
x = torch.rand(NUM_POINTS, *input_shape, requires_grad=True)
logits = model(x)
worst = 0.0
for i in range(10):
    for j in range(i + 1, 10):
        (grad,) = torch.autograd.grad((logits[:, i] - logits[:, j]).sum(), x, retain_graph=True)
        ratio = grad.flatten(1).norm(dim=1).max().item() / bound.value[i, j].item()
        worst = max(worst, ratio)
print(f"largest gradient norm / L_ij over {NUM_POINTS} random points: {worst:.3f} (<= 1)")
assert worst <= 1.0

# 6. Plain torch works too: nn.Conv2d, nn.Linear, activations, nn.Flatten, nn.AvgPool2d and
#    eval-mode BatchNorm are bounded as they are; anything else raises TypeError naming it.
plain = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 28 * 28, 10))
print(f"plain torch: guarantee={lipzoo.lipschitz_bound(plain, input_shape).guarantee!r}")
try:
    lipzoo.lipschitz_bound(nn.Sequential(nn.Conv2d(1, 8, 3), nn.MaxPool2d(2)), input_shape)
except TypeError as err:
    print(f"refused: {str(err)[:70]}...")
