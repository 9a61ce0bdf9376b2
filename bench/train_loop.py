"""Steps per second of ``lipzoo train``'s loop against an earlier lipzoo, side by side in one run.

Each measurement is a fresh subprocess that imports lipzoo from the given source folder, builds the
run exactly as ``lipzoo train ENTRY`` does (data, model, estimator, optimizer, loader) and times
``--steps`` training steps after ``--warmup`` steps (data loading, augmentation, forward, CRM bound,
backward, optimizer step, metrics). The two sources alternate ``--repeats`` times; medians and their
ratio are printed. The baseline is any checkout, e.g. the loop before the device-resident rewrite:

    git worktree add /tmp/lipzoo-before f8e7f5b
    LIPZOO_DATA=../shared/data python bench/train_loop.py --baseline /tmp/lipzoo-before --entry crm-cifar10-6c2f
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, tempfile, time, torch
from lipzoo.train import TrainOptions, resolve_config
from lipzoo.train import trainer as T
entry, device, steps, warmup, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
cfg = resolve_config(entry, ["recipe.validation_split=0.0", "recipe.crm.warmup_epochs=0"])
opts = TrainOptions(out_dir=tempfile.mkdtemp(), device=device, progress=False, max_steps_per_epoch=warmup)
run = T._Run(cfg, opts)
run.train_epoch()
run.opts.max_steps_per_epoch = steps
if device.startswith("cuda"):
    torch.cuda.synchronize()
t = time.perf_counter()
run.train_epoch()  # ends with a read of the device metrics: the time includes all queued work
print(json.dumps({"steps_per_s": steps / (time.perf_counter() - t)}))
"""


def measure(src: Path, args) -> float:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run([sys.executable, "-c", _CHILD, args.entry, args.device, str(args.steps), str(args.warmup),
                          str(args.threads)], env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{src}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])["steps_per_s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, required=True, help="source folder of the earlier lipzoo")
    p.add_argument("--candidate", type=Path, default=Path(__file__).resolve().parents[1],
                   help="source folder measured against it (default: this checkout)")
    p.add_argument("--entry", default="crm-mnist-4c3f")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    rates: dict[str, list[float]] = {"baseline": [], "candidate": []}
    for _ in range(args.repeats):
        for name in rates:
            rates[name].append(measure(getattr(args, name), args))
            print(f"  {name}: {rates[name][-1]:.3f} steps/s", flush=True)
    base, cand = (statistics.median(rates[k]) for k in ("baseline", "candidate"))
    print(f"\n| entry | device | threads | baseline steps/s | candidate steps/s | ratio |")
    print(f"|---|---|---:|---:|---:|---:|")
    print(f"| {args.entry} | {args.device} | {args.threads} | {base:.3f} | {cand:.3f} | {cand / base:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
