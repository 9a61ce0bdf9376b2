"""Tightness, cost and reproducibility of the guaranteed bound against a converged power-iteration estimate.

For every model (architectures at PyTorch's default random initialisation, seed ``--seed``, and shipped
weights), in one run:

* **estimate**: mean pairwise LipLT bound from batched power iteration (float64) run until every
  inner norm moves by less than ``--rtol`` between iterations (at most ``--max-iter``); output rows exact.
  Power iteration under-estimates each norm, so this is (nearly) the smallest value any sound method can give.
* **guaranteed**: ``lipschitz_bound(norm="auto", effort=...)`` (exact or proved), cache off.
* ratio guaranteed / estimate and the seconds of each.
* **at the estimates**: the library's own ``details["liplt_at_estimates"]`` (the recursion at every norm's
  Lanczos estimate from below, computed with the bound at no extra cost): the exact LipLT value lies
  between it and the guaranteed bound, so *guaranteed / at the estimates* bounds how loose the bound is
  without the converged estimate.

    python bench/guarantee_paths.py                       # every architecture and shipped model
    python bench/guarantee_paths.py --models 4c3f crm-mnist-4c3f --efforts low medium high
    python bench/guarantee_paths.py --models 4c3f --max-dense 4096   # the old fixed-size path
    # 8C2F: high effort after a medium run, from the chains it certified (the certificate cache)
    python bench/guarantee_paths.py --models 8c2f --efforts medium high --carry --estimate 8c2f=1.7325
    # side by side with another checkout (e.g. `git worktree add /tmp/old dcf624f`: the seconds budget before
    # issue 23), alternating per model; this checkout runs twice and reports whether the bits agree:
    python bench/guarantee_paths.py --models crm-mnist-4c3f 4c3f --compare /tmp/old --threads 1

With ``--compare`` every guaranteed bound (this checkout's and the other's) runs in its own subprocess
(``PYTHONPATH`` set to the checkout), one after the other for each model, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import lipzoo
from lipzoo.bounds import build_structure, lipschitz_bound
from lipzoo.bounds.liplt import liplt_recursion, output_norms, output_rows
from lipzoo.bounds.sweep import forward_sweep, power_iteration

DEFAULT_MODELS = ["4c3f", "6c2f", "8c2f", "lt-res-s", "lt-res-m", "lt-res-l", "crm-mnist-4c3f", "crm-cifar10-6c2f"]


def _model(name: str, seed: int):
    torch.manual_seed(seed)
    if name in lipzoo.list_pretrained():
        model = lipzoo.load(name)
        return model, tuple(model.lipzoo_config["input_shape"]), "shipped"
    model = lipzoo.create_model(name)
    return model, tuple(model.input_shape), f"random init (seed {seed})"


def converged_estimate(model, shape, rtol: float, max_iter: int, seed: int, device="cpu") -> tuple[float, int]:
    """Mean pairwise LipLT from power iteration run to convergence; returns (value, iterations)."""
    net = copy.deepcopy(model).double().eval().to(device)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        s = build_structure(net, shape)
        keys = [(t, j) for t in range(s.depth) for j in range(-1, t)]
        v = {}
        for k in keys:
            x = torch.randn(1, *s.space_shape(*k)[0], generator=gen, dtype=torch.float64).to(device)
            v[k] = x / x.norm()
        prev, it = None, max_iter
        for i in range(1, max_iter + 1):
            v = power_iteration(s, v, 1)
            out = forward_sweep(s, v)
            norms = torch.stack([out[k].norm() for k in keys])
            if prev is not None and bool(((norms - prev).abs() <= rtol * prev).all()):
                it = i
                break
            prev = norms
        inner = dict(zip(keys, norms))
        rows = output_rows(s, range(-1, s.depth))
        final = {j: output_norms(r, "pairwise") for j, r in rows.items()}
        value, _ = liplt_recursion(s, inner, final)
    value = value.cpu()
    off = ~torch.eye(value.shape[0], dtype=torch.bool)
    return float(value[off].mean()), it


def _estimate(args, name: str, model, shape):
    """The converged estimate and its iterations: given with ``--estimate``, or run."""
    if name in args.known:
        return args.known[name], "given"
    return converged_estimate(model, shape, args.rtol, args.max_iter, args.seed, args.device)


_WORKER = r"""
import json, logging, sys, time, torch
records = []
class H(logging.Handler):
    def emit(self, r):
        records.append(r.getMessage())
log = logging.getLogger("lipzoo.bounds.proved"); log.setLevel(logging.DEBUG); log.addHandler(H())
import lipzoo
from lipzoo.bounds import lipschitz_bound
name, seed, options, threads = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(seed)
if name in lipzoo.list_pretrained():
    model = lipzoo.load(name); shape = tuple(model.lipzoo_config["input_shape"])
else:
    model = lipzoo.create_model(name); shape = tuple(model.input_shape)
t0 = time.perf_counter()
b = lipschitz_bound(model, shape, norm="auto", cache=False, progress=False, **options)
dt = time.perf_counter() - t0
off = ~torch.eye(b.value.shape[0], dtype=torch.bool)
print(json.dumps({"value": float(b.value[off].mean()), "guarantee": b.guarantee, "seconds": dt, "log": records,
                  "bits": b.value.double().numpy().tobytes().hex(), "lipzoo": lipzoo.__file__}))
"""


def _phases(log: list[str]) -> str:
    """Seconds per phase from the DEBUG log: groups certified on small sides, refinement, estimates."""
    groups = sum(float(m.group(1)) for s in log for m in [re.search(r"^exact group .*in ([0-9.]+)s", s)] if m)
    single = sum(float(m.group(1)) for s in log for m in [re.search(r"^exact S.*in ([0-9.]+)s", s)] if m)
    est = sum(float(m.group(1)) for s in log for m in [re.search(r"(?:estimates|estimates of .*): ([0-9.]+)s$", s)] if m)
    return f"groups {groups:.0f}, single {single:.0f}, est. {est:.1f}"


def _run_worker(checkout: str, name: str, seed: int, options: dict, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=checkout, LIPZOO_CACHE="off")
    out = subprocess.run([sys.executable, "-c", _WORKER, name, str(seed), json.dumps(options), str(threads or 0)],
                         env=env, capture_output=True, text=True, check=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(args) -> int:
    """This checkout (``--effort``, twice: the bits must agree) against another (``--compare``, with the options of
    ``--compare-options``: e.g. the seconds budget of lipzoo before issue 23), each in its own subprocess, one
    after the other per model so that they see the same machine load."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    before = json.loads(args.compare_options)
    print(f"# Guaranteed bound, {args.compare} {before} (before) vs {here} effort {args.effort!r} (after), "
          f"{args.threads or torch.get_num_threads()} thread(s), torch {torch.__version__}\n")
    print("| model | weights | estimate (mean L_ij) | before | ratio | s | after | ratio | s | after, again: same bits "
          "| after / before (value) | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    effort = args.effort if args.effort in ("none", "low", "medium", "high") else float(args.effort)
    for name in args.models:
        model, shape, weights = _model(name, args.seed)
        est, _ = _estimate(args, name, model, shape)
        old = _run_worker(args.compare, name, args.seed, before, args.threads)
        new = _run_worker(here, name, args.seed, {"effort": effort}, args.threads)
        again = _run_worker(here, name, args.seed, {"effort": effort}, args.threads)
        assert os.path.dirname(os.path.dirname(old["lipzoo"])) == os.path.abspath(args.compare), old["lipzoo"]
        print(f"| {name} | {weights} | {est:.5f} | {old['value']:.5f} | {old['value'] / est:.4f} | {old['seconds']:.1f} "
              f"| {new['value']:.5f} | {new['value'] / est:.4f} | {new['seconds']:.1f} "
              f"| {'yes' if again['bits'] == new['bits'] else 'NO'} ({again['seconds']:.1f} s) "
              f"| {new['value'] / old['value']:.6f} | {old['seconds'] / new['seconds']:.2f}x |", flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--efforts", nargs="+", default=["medium"], help="refinement efforts (levels or work units)")
    p.add_argument("--max-dense", type=int, help="also run the fixed-size path with this max_dense")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--max-iter", type=int, default=500)
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compare", help="another lipzoo checkout: run its guaranteed bound side by side (subprocesses)")
    p.add_argument("--compare-options", default='{"budget": 300}',
                   help="JSON keyword arguments of the other checkout's lipschitz_bound (default: the 300 s budget "
                        "of lipzoo before the deterministic planner)")
    p.add_argument("--effort", default="medium", help="this checkout's effort (a level or work units)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run each guaranteed bound this many times, each from the chains certified by the "
                        "rounds before it (a fresh certificate cache per model, the finished bound removed "
                        "between rounds)")
    p.add_argument("--carry", action="store_true",
                   help="the efforts run one after the other on one certificate cache per model, each from the "
                        "chains the runs before it certified (their times are the runs' own)")
    p.add_argument("--debug-log", metavar="FILE", help="write the DEBUG log of lipzoo.bounds (phases, certificates) here")
    p.add_argument("--estimate", nargs="+", default=[], metavar="MODEL=VALUE",
                   help="a converged estimate measured before (same seed), instead of running it again "
                        "(8C2F's takes ~8 minutes on 2 CPU cores)")
    args = p.parse_args(argv)
    known = {}
    for item in args.estimate:
        name, sep, value = item.partition("=")
        if not sep:
            p.error(f"--estimate takes MODEL=VALUE, got {item!r}")
        known[name] = float(value)
    args.known = known
    if args.debug_log:
        handler = logging.FileHandler(args.debug_log, mode="w")
        handler.setFormatter(logging.Formatter("%(relativeCreated)9.0f ms %(name)s: %(message)s"))
        log = logging.getLogger("lipzoo.bounds")
        log.setLevel(logging.DEBUG)
        log.addHandler(handler)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare:
        return compare(args)
    where = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"# Guaranteed bound vs converged estimate ({where}, torch {torch.__version__})\n")
    print("| model | weights | estimate (mean L_ij) | iters | est. s | path | guaranteed | guarantee | ratio | s "
          "| at the estimates | guaranteed / at the estimates |")
    print("|---|---|---:|---:|---:|---|---:|---|---:|---:|---:|---:|")
    cached = args.rounds > 1 or args.carry
    with tempfile.TemporaryDirectory() as cache:
        os.environ["LIPZOO_CACHE"] = cache  # this script's own folder; only --rounds and --carry use it
        for name in args.models:
            model, shape, weights = _model(name, args.seed)
            t0 = time.perf_counter()
            est, iters = _estimate(args, name, model, shape)
            t_est = time.perf_counter() - t0
            runs = [(f"auto, effort {e}", {"effort": e if e in ("none", "low", "medium", "high") else float(e)})
                    for e in args.efforts]
            if args.max_dense:
                runs.append((f"auto, max_dense={args.max_dense}", {"max_dense": args.max_dense}))
            total = 0.0
            for label, kw in runs:
                if not args.carry:  # each effort from no certificate
                    shutil.rmtree(Path(cache) / "chains", ignore_errors=True)
                    total = 0.0
                for r in range(1, args.rounds + 1):
                    for stale in Path(cache).glob("*.json"):
                        stale.unlink()  # the finished bound: the next round is a new request
                    t0 = time.perf_counter()
                    b = lipschitz_bound(model, shape, norm="auto", cache=cached, device=args.device, **kw)
                    dt = time.perf_counter() - t0
                    total += dt
                    off = ~torch.eye(b.value.shape[0], dtype=torch.bool)
                    val = float(b.value[off].mean())
                    below = float(b.liplt_at_estimates[off].mean())
                    path = (f"{label}, round {r} ({total:.0f} s in all)" if args.rounds > 1 else
                            f"{label}, after the runs above ({total:.0f} s in all)" if total > dt else label)
                    print(f"| {name} | {weights} | {est:.4f} | {iters} | {t_est:.1f} | {path} | {val:.4f} "
                          f"| {b.guarantee} | {val / est:.4f} | {dt:.1f} | {below:.4f} | {val / below:.4f} |",
                          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
