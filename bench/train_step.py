"""Cost of a CRM training step against a plain cross-entropy step, measured in one run.

CRM step: forward, ``lipzoo.LipLTEstimator`` with the zoo recipe's power iterations (warm-started),
``lipzoo.crm_loss`` with the recipe's ``t``, ``lam``, ``r0``, ``g``, backward, Adam step.
Cross-entropy step: forward, ``F.cross_entropy``, backward, Adam step. Random data, batch 512 by
default; medians over ``--repeats`` steps after ``--warmup`` steps.

    python bench/train_step.py --device cpu --repeats 10
    python bench/train_step.py --device cuda --repeats 50
"""

from __future__ import annotations

import argparse

import torch
from _common import add_timing_args, setup, timed
import torch.nn.functional as F

import lipzoo
from lipzoo.models import get_entry

ENTRIES = {"4c3f": "crm-mnist-4c3f", "6c2f": "crm-cifar10-6c2f", "8c2f": "crm-tinyimagenet-8c2f"}




def bench_model(name: str, device: torch.device, batch_size: int, warmup: int, repeats: int, seed: int) -> dict:
    recipe = get_entry(ENTRIES[name])["recipe"]
    crm, lr = recipe["crm"], float(recipe["optimizer"]["lr"])
    torch.manual_seed(seed)
    model = lipzoo.create_model(name).to(device).train()
    shape = tuple(model.input_shape)
    x = torch.rand(batch_size, *shape, device=device)
    y = torch.randint(0, model.num_classes, (batch_size,), device=device)

    ce_model = lipzoo.create_model(name).to(device).train()
    ce_model.load_state_dict(model.state_dict())
    ce_opt = torch.optim.Adam(ce_model.parameters(), lr=lr)

    def ce_step():
        loss = F.cross_entropy(ce_model(x), y)
        ce_opt.zero_grad(set_to_none=True)
        loss.backward()
        ce_opt.step()

    estimator = lipzoo.LipLTEstimator(model, shape, n_iter=int(recipe["power_iterations"]), seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def crm_step():
        logits = model(x)
        loss = lipzoo.crm_loss(logits, y, estimator(), t=float(crm["t"]), lam=float(crm["lam"]),
                               r0=crm["r0"], g=crm["g"], regularize=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_ce = timed(ce_step, device, warmup, repeats)
    t_crm = timed(crm_step, device, warmup, repeats)
    return {"model": name, "input": "x".join(map(str, shape)), "power_iterations": int(recipe["power_iterations"]),
            "operators": len(estimator.keys), "ce_ms": t_ce, "crm_ms": t_crm, "ratio": t_crm / t_ce}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["4c3f", "6c2f"], choices=sorted(ENTRIES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=512)
    add_timing_args(p)
    args = p.parse_args(argv)
    device, where = setup(p, args)
    print(f"# Training step, batch {args.batch_size} ({where}; torch {torch.__version__}; median of "
          f"{args.repeats} after {args.warmup} warm-up)\n")
    print("| model | input | power iterations | operators S_tj | CE step (ms) | CRM step (ms) | ratio CRM/CE |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        r = bench_model(name, device, args.batch_size, args.warmup, args.repeats, args.seed)
        print(f"| {r['model']} | {r['input']} | {r['power_iterations']} | {r['operators']} | {r['ce_ms']:.1f} | "
              f"{r['crm_ms']:.1f} | {r['ratio']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
