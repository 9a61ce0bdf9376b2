"""Command line: ``lipzoo train | certify | bounds | push``. Orchestration only."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

__all__ = ["main"]


def _load_model(target: str, device: str | None = None):
    """A model with its config from a zoo entry, a checkpoint folder or a Hub repo id, on ``device``."""
    from lipzoo.hub import load

    model = load(target, map_location=device or "cpu")
    return model, dict(getattr(model, "lipzoo_config", {}) or {})


def _cmd_train(args) -> int:
    from lipzoo.train import TrainOptions, resolve_config, train

    config = resolve_config(args.target, args.overrides)
    out = args.out or f"runs/{config['name']}"
    opts = TrainOptions(out_dir=out, data_root=args.data_root, device=args.device, seed=args.seed,
                        resume=args.resume, amp=args.amp, num_workers=args.workers,
                        max_steps_per_epoch=args.max_steps, progress=not args.no_progress, threads=args.threads,
                        time_budget=args.time_budget, compile=args.compile)
    run_dir = train(config, opts)
    print(f"Training finished: {run_dir}/final (metrics in {run_dir}/metrics.jsonl). Certify it with:\n"
          f"  lipzoo certify {run_dir}/final")
    return 0


def _cmd_certify(args) -> int:
    from lipzoo.certify.report import certify, format_table
    from lipzoo.data import load_dataset

    model, config = _load_model(args.model, args.device)  # evaluate() runs where the model is
    data = args.data or config.get("dataset")
    if data is None:
        raise ValueError("No dataset: pass --data (mnist, cifar10, tinyimagenet or a .npz path).")
    eps_list = args.eps or config.get("eps") or (config.get("certify") or {}).get("eps")
    if not eps_list:
        raise ValueError("No eps: pass --eps, e.g. --eps 36/255.")
    dataset = load_dataset(data, split=args.split, root=args.data_root)
    attack = None if args.no_attack else {"steps": args.attack_steps, "restarts": args.restarts}
    compare = None
    if args.compare:
        other, other_cfg = _load_model(args.compare, args.device)
        rep = certify(other, dataset, eps_list, input_shape=other_cfg["input_shape"], limit=args.limit,
                      attack=None, norm=args.norm, max_dense=args.max_dense, progress=not args.no_progress,
                      name=args.compare, allow_estimate=args.norm == "power")
        compare = {args.compare if rep["kind"] == "certified" else f"{args.compare} (estimate)": rep["radii"]}
    name = args.model
    out = args.out or f"certify-{Path(name).name}"
    report = certify(model, dataset, eps_list, input_shape=config["input_shape"], out_dir=out, name=name,
                     limit=args.limit, batch_size=args.batch_size, attack=attack, norm=args.norm,
                     max_dense=args.max_dense, compare=compare, device=args.device, progress=not args.no_progress,
                     allow_estimate=args.norm == "power")  # --norm power asks for an estimate explicitly
    print(format_table(report))
    print(f"\nFiles: {', '.join(report['files'])}")
    viol = [v for k, v in report["metrics"].items() if k.startswith("consistency_violations") and v]
    return 3 if viol else 0


def _cmd_bounds(args) -> int:
    from lipzoo.certify.report import bounds_table

    model, config = _load_model(args.model)
    shape = args.input_shape or config["input_shape"]
    table = bounds_table(model, shape, norm=args.norm, max_dense=args.max_dense)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"{'method':>7} | {'mean L_ij':>10} | {'mean L_i+L_j':>12} | {'sqrt2*L':>10} | guarantee")
    for method, row in table.items():
        print(f"{method:>7} | {row['L_ij']:10.4g} | {row['L_i+L_j']:12.4g} | {row['sqrt2_L']:10.4g} | {row['guarantee']}")
    return 0


def _cmd_push(args) -> int:
    from lipzoo.hub import push

    info = push(args.directory, args.repo_id, token=args.token, revision=args.revision, private=args.private)
    print(f"Pushed {args.directory} to {args.repo_id}: {info}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lipzoo", description="Certifiably robust networks: train, certify, bound, push.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a zoo entry or YAML recipe (CRM or cross-entropy)")
    t.add_argument("target", help="zoo entry (e.g. crm-mnist-4c3f) or a YAML file")
    t.add_argument("overrides", nargs="*", help="recipe overrides key=value, e.g. recipe.epochs=5")
    t.add_argument("--out", help="run directory (default runs/<name>)")
    t.add_argument("--data-root", help="folder with mnist.npz / cifar10.npz (default: $LIPZOO_DATA)")
    t.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    t.add_argument("--amp", action="store_true", help="bfloat16 autocast for the network (the bound stays float32)")
    t.add_argument("--compile", action="store_true", help="torch.compile the network's forward")
    t.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="shrink the recipe's epochs, schedule and warm-up to what fits (measured on epoch 2)")
    t.add_argument("--workers", type=int, default=0, help="data loader workers")
    t.add_argument("--max-steps", type=int, help="cap steps per epoch (smoke tests)")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_cmd_train)

    c = sub.add_parser("certify", help="certified and PGD accuracy with a guaranteed pairwise LipLT bound")
    c.add_argument("model", help="zoo entry, checkpoint folder or Hub repo id")
    c.add_argument("--data", help="mnist, cifar10, tinyimagenet or a .npz path (default: the model's dataset)")
    c.add_argument("--data-root", help="folder with the dataset files (default: $LIPZOO_DATA; MNIST test ships)")
    c.add_argument("--split", default="test")
    c.add_argument("--eps", action="append", help="radius in pixel units, e.g. 36/255 (repeatable)")
    c.add_argument("--limit", type=int, help="first N samples only")
    c.add_argument("--batch-size", type=int, default=500)
    c.add_argument("--attack-steps", type=int, default=50)
    c.add_argument("--restarts", type=int, default=1)
    c.add_argument("--no-attack", action="store_true")
    c.add_argument("--compare", help="a second model drawn in the radius plot (e.g. a cross-entropy baseline)")
    c.add_argument("--norm", default="auto", choices=["auto", "exact", "power"],
                   help="operator norms: auto/exact are guaranteed, power is an estimate (reported as 'estimated')")
    c.add_argument("--max-dense", type=int, default=4096, help="largest side materialized exactly under --norm auto")
    c.add_argument("--out", help="output folder (default certify-<model>)")
    c.add_argument("--device")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=_cmd_certify)

    b = sub.add_parser("bounds", help="the paper's Table 2: mean L_ij, L_i+L_j, sqrt2*L, naive vs LipLT")
    b.add_argument("model")
    b.add_argument("--input-shape", type=int, nargs="+")
    b.add_argument("--norm", default="auto", choices=["auto", "exact", "power"])
    b.add_argument("--max-dense", type=int, default=4096)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=_cmd_bounds)

    u = sub.add_parser("push", help="upload a checkpoint folder to the Hugging Face Hub")
    u.add_argument("directory")
    u.add_argument("--repo-id", required=True)
    u.add_argument("--token", help="default: HF_TOKEN / the cached login")
    u.add_argument("--revision")
    u.add_argument("--private", action="store_true")
    u.set_defaults(func=_cmd_push)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, FloatingPointError) as err:
        print(f"lipzoo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
