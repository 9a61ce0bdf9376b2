"""Gram iteration against the Lanczos + Cholesky certificate, on the Gram matrix of a real chain.

Issue 23 asked to look at Gram iteration (Delattre et al., ICML 2023) beside the shifted-Cholesky certificate of
``lipzoo.bounds.eigen`` and keep whatever is faster. For a symmetric PSD ``G`` of side ``n``, ``k`` Gram steps give
``lambda_max(G) <= ||G^(2^k)||_F^(1/2^k)`` (rescaled at each step so nothing overflows), over-estimating by at most
``n^(1/2^k)``; each step is a ``2 n^3``-flop product. The certificate costs one ``n^3 / 3`` Cholesky (and ~256 cheap
Lanczos steps) for a bound within ~1e-7. This script forms the Gram matrix of one inner operator of a zoo model in
float64 (no rounding bound: only tightness and time are compared) and prints, side by side in one run, the seconds
and the ratio to ``eigvalsh`` of: the certificate, and Gram iteration after 4 to 12 steps.

    python bench/gram_iteration.py --model crm-mnist-4c3f --chain 3 1 --threads 1
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import lipzoo
from lipzoo.bounds import build_structure
from lipzoo.bounds.eigen import certified_lambda_max
from lipzoo.bounds.steps import basis, gram_steps


def gram_matrix(model, shape, key) -> torch.Tensor:
    net = model.double().eval()
    with torch.no_grad():
        s = build_structure(net, shape)
        steps, side, n = gram_steps(s.chain(*key), s.space_shape(*key)[0])
        cols = []
        for a in range(0, n, 256):
            x = basis(a, min(a + 256, n), n, side, None)
            for st in steps:
                x = st(x)
            cols.append(x.reshape(x.shape[0], n))
    g = torch.cat(cols)
    return (g + g.T) / 2


def gram_iteration(g: torch.Tensor, steps: int) -> float:
    """``lambda_max(g) <= ||g_k||_F^(1/2^k) * prod scales``: log-domain rescaling (Delattre et al., Alg. 1)."""
    log_scale = 0.0
    for k in range(steps):
        f = float(g.norm())
        g = g / f
        log_scale = 2 * (log_scale + math.log(f)) if k else 2 * math.log(f)
        g = g @ g
    # after k squarings of g / ... : lambda_max^(2^k) <= ||g||_F * exp(log_scale)
    return math.exp((math.log(float(g.norm())) + log_scale) / 2 ** steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="crm-mnist-4c3f")
    p.add_argument("--chain", type=int, nargs=2, default=[3, 1], metavar=("T", "J"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = lipzoo.load(args.model)
    g = gram_matrix(model, tuple(model.lipzoo_config["input_shape"]), tuple(args.chain))
    n = g.shape[0]
    true = float(torch.linalg.eigvalsh(g)[-1])
    print(f"# {args.model}, S{tuple(args.chain)}: Gram side {n}, {args.threads} thread(s), torch {torch.__version__}\n")
    print("| method | seconds | bound / lambda_max |")
    print("|---|---:|---:|")
    t0 = time.perf_counter()
    cert = certified_lambda_max(g, generator=torch.Generator().manual_seed(0))
    print(f"| Lanczos + shifted Cholesky (proved, rounding included) | {time.perf_counter() - t0:.2f} | {cert / true:.9f} |")
    for k in (4, 6, 8, 10, 12):
        t0 = time.perf_counter()
        b = gram_iteration(g.clone(), k)
        print(f"| Gram iteration, {k} steps (rounding not bounded) | {time.perf_counter() - t0:.2f} | {b / true:.6f} |")


if __name__ == "__main__":
    main()
