"""Certified ECLipsE-style bound (lipzoo.bounds.eclipse) against eclipse-nn, LipLT and the naive bound.

For each MLP (ReLU, float64, random weights drawn once per model from ``--seed``), in one run on the
same weights:

* **naive**: ``lipzoo.lipschitz_bound(method="naive", norm="exact")``, the product of layer norms;
* **LipLT**: ``lipzoo.lipschitz_bound(method="liplt", norm="exact")`` (Theorem 3 / eq. 16);
* **eclipse-nn Fast**: ``eclipse_nn.LipConstEstimator(weights=...).estimate("ECLipsE_Fast")`` of the
  package ``eclipse-nn`` (Xu & Sivaranjani, NeurIPS 2024), given the same ``(out, in)`` weight
  matrices (its convention, as ``nn.Linear.weight``; biases play no part in a Lipschitz constant) and
  ReLU slopes ``[0, 1]``. An unverified float64 number; a bench-only dependency (skipped with a
  message when not installed). ``--eclipse-sdp`` adds its SDP-based ``ECLipsE`` (cvxpy + SCS, slow);
* **lipzoo greedy**: ``eclipse_bound(structure, ("global",), sweeps=0)``, the per-stage closed form
  with the ECLipsE-Fast multipliers, certified;
* **lipzoo tuned**: ``eclipse_bound(structure, ("global",))``, multipliers tuned for the bound,
  certified (the method ``lipschitz_bound(method="eclipse")`` uses);
* the pairwise mean (off-diagonal) of ``eclipse_bound(..., ("pairwise",))`` against LipLT's pairwise mean.

Ratios are of values from this run; seconds are medians over ``--repeats`` after ``--warmup`` runs.

    python bench/eclipse.py --threads 1 --repeats 3
    python bench/eclipse.py --models 64-128-128-128-10 --repeats 1 --warmup 0   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import torch
from _common import add_timing_args, setup, timed
from torch import nn

import lipzoo
from lipzoo.bounds.eclipse import eclipse_bound
from lipzoo.bounds.structure import build_structure

MODELS = ["64-128-128-128-10", "784-256-256-10", "100-64-64-64-64-64-10"]


def make_mlp(spec: str, seed: int, init: str) -> nn.Sequential:
    sizes = [int(s) for s in spec.split("-")]
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1], dtype=torch.float64)
        if init == "uniform":  # eclipse-nn's generate_random_weights: U[0, 1) entries
            with torch.no_grad():
                lin.weight.uniform_(0, 1)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def _eclipse_nn():
    try:
        import eclipse_nn  # noqa: F401
        from eclipse_nn import LipConstEstimator
    except ImportError:
        return None
    return LipConstEstimator


def bench_model(spec, args, device, estimator) -> dict:
    model = make_mlp(spec, args.seed, args.init)
    n0 = int(spec.split("-")[0])
    structure = build_structure(model, (n0,))
    weights = [m.weight.detach().clone() for m in model if isinstance(m, nn.Linear)]
    r: dict = {"model": spec}

    def run(name, fn):
        out = {}

        def call():
            out["v"] = fn()
        r[name + "_s"] = timed(call, device, args.warmup, args.repeats) / 1e3
        r[name] = out["v"]

    run("naive", lambda: float(lipzoo.lipschitz_bound(model, (n0,), method="naive", mode="global",
                                                      norm="exact").value))
    run("liplt", lambda: float(lipzoo.lipschitz_bound(model, (n0,), method="liplt", mode="global",
                                                      norm="exact").value))
    run("greedy", lambda: float(eclipse_bound(structure, ("global",), sweeps=0)["global"]))
    run("tuned", lambda: float(eclipse_bound(structure, ("global",))["global"]))
    off = ~torch.eye(int(spec.split("-")[-1]), dtype=torch.bool)
    run("pair", lambda: float(eclipse_bound(structure, ("pairwise",))["pairwise"][off].mean()))
    run("pair_liplt", lambda: float(lipzoo.lipschitz_bound(model, (n0,), method="liplt", mode="pairwise",
                                                           norm="exact").value[off].mean()))
    if estimator is not None:
        def fast():
            est = estimator(weights=[w.clone() for w in weights])  # alphas 0, betas 1: ReLU
            return float(est.estimate("ECLipsE_Fast"))
        run("fast", fast)
        if args.eclipse_sdp:
            def sdp():
                est = estimator(weights=[w.clone() for w in weights])
                with contextlib.redirect_stdout(io.StringIO()):
                    return float(est.estimate("ECLipsE"))
            saved = args.repeats, args.warmup
            args.repeats, args.warmup = 1, 0
            run("sdp", sdp)
            args.repeats, args.warmup = saved
    return r


def head_tail_table(seeds) -> None:
    """Conv head + dense tail (1x28x28 -> conv 4@3x3/2 -> ReLU -> conv 8@3x3/2 -> ReLU -> 288-128-128-10):
    LipLT of the whole, the product LipLT(head) x LipLT(tail), the product LipLT(head) x eclipse(tail)
    (valid: Lipschitz constants multiply under composition) and eclipse_bound on the whole network with the
    convolutions materialized (sides 784, 676, 288 <= MAX_SIDE)."""
    print("\n# Conv head + dense tail, global mode, float64 (ratios to LipLT of the whole network)\n")
    print("| seed | LipLT whole | LipLT(head) x LipLT(tail) | LipLT(head) x eclipse(tail) | eclipse whole | s eclipse whole |")
    print("|---:|---:|---:|---:|---:|---:|")
    for seed in seeds:
        torch.manual_seed(seed)
        head = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2), nn.ReLU()).double()
        tail = nn.Sequential(nn.Flatten(), nn.Linear(288, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                             nn.Linear(128, 10)).double()
        model = nn.Sequential(head, tail).eval()

        def liplt(m, shape):
            return float(lipzoo.lipschitz_bound(m, shape, method="liplt", mode="global", norm="exact").value)
        whole = liplt(model, (1, 28, 28))
        lt_head, lt_tail = liplt(head, (1, 28, 28)), liplt(tail, (8, 6, 6))
        ecl_tail = float(eclipse_bound(build_structure(tail, (8, 6, 6)), ("global",))["global"])
        t0 = time.perf_counter()
        ecl_whole = float(eclipse_bound(build_structure(model, (1, 28, 28)), ("global",))["global"])
        secs = time.perf_counter() - t0
        print(f"| {seed} | {whole:.4f} | {lt_head * lt_tail:.4f} ({lt_head * lt_tail / whole:.3f}) | "
              f"{lt_head * ecl_tail:.4f} ({lt_head * ecl_tail / whole:.3f}) | {ecl_whole:.4f} "
              f"({ecl_whole / whole:.3f}) | {secs:.2f} |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS, help="layer widths joined by '-'")
    p.add_argument("--device", default="cpu", choices=["cpu"])
    p.add_argument("--init", default="torch", choices=["torch", "uniform"],
                   help="torch: nn.Linear's default initialisation; uniform: U[0,1) weights (eclipse-nn's generator)")
    p.add_argument("--eclipse-sdp", action="store_true", help="also run eclipse-nn's ECLipsE (SDP per layer; slow)")
    p.add_argument("--head-tail", type=int, default=2, metavar="N",
                   help="also the conv-head + dense-tail table for seeds 0..N-1 (0: skip)")
    add_timing_args(p)
    args = p.parse_args(argv)
    device, where = setup(p, args)
    estimator = _eclipse_nn()
    if estimator is None:
        print("eclipse-nn is not installed (pip install eclipse-nn==0.1.7): its columns are left out.\n")
    print(f"# Certified ECLipsE-style bound vs eclipse-nn and LipLT, global mode, ReLU, float64 ({where}; "
          f"torch {torch.__version__}; init {args.init}, seed {args.seed}; seconds: median of {args.repeats} "
          f"after {args.warmup} warm-up)\n")
    cols = ["model", "naive", "LipLT", "eclipse-nn Fast", "lipzoo greedy", "lipzoo tuned", "tuned / LipLT",
            "tuned / Fast", "greedy / Fast", "s LipLT", "s Fast", "s greedy", "s tuned",
            "pairwise mean tuned / LipLT"]
    if args.eclipse_sdp:
        cols[4:4] = ["eclipse-nn ECLipsE (SDP)"]
        cols.insert(-1, "s SDP")
    print("| " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * (len(cols) - 1))
    for spec in args.models:
        r = bench_model(spec, args, device, estimator)
        has = "fast" in r
        na = "n/a"
        row = [r["model"], f"{r['naive']:.4f}", f"{r['liplt']:.4f}", f"{r['fast']:.4f}" if has else na,
               f"{r['greedy']:.4f}", f"{r['tuned']:.4f}", f"{r['tuned'] / r['liplt']:.3f}",
               f"{r['tuned'] / r['fast']:.3f}" if has else na, f"{r['greedy'] / r['fast']:.8f}" if has else na,
               f"{r['liplt_s']:.3f}", f"{r['fast_s']:.3f}" if has else na, f"{r['greedy_s']:.3f}",
               f"{r['tuned_s']:.3f}", f"{r['pair'] / r['pair_liplt']:.3f}"]
        if args.eclipse_sdp:
            row[4:4] = [f"{r['sdp']:.4f}" if "sdp" in r else na]
            row.insert(-1, f"{r['sdp_s']:.1f}" if "sdp" in r else na)
        print("| " + " | ".join(row) + " |", flush=True)
    if args.head_tail:
        head_tail_table(range(args.head_tail))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
