"""Maintainer tool: turn a finished training run into a shipped, certified zoo entry.

    python scripts/publish_entry.py NAME RUN_DIR/final --report CERTIFY_DIR/report.json [--dtype float16]

1. re-saves the run's checkpoint into ``lipzoo/weights/NAME`` (safetensors + config + card),
2. records repo id, sha256, storage dtype and local path in ``lipzoo/zoo_configs/NAME.yaml``,
3. with ``--report``: copies the measured metrics (from ``lipzoo certify NAME``) and the bound into the
   entry's YAML and the checkpoint's config/card.

Run step 1-2 first, certify the shipped copy (``lipzoo certify NAME``), then run again with --report.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

import lipzoo
from lipzoo.hub import load, save_pretrained

PKG = Path(lipzoo.__file__).parent
PAPER = {
    "crm-mnist-4c3f": {"clean": 0.9627, "pgd@1.58": 0.8804, "certified@1.58": 0.6337},
    "crm-cifar10-6c2f": {"clean": 0.7482, "pgd@18/255": 0.7231, "certified@18/255": 0.6416},
}


def _replace_top_level(text: str, key: str, value) -> str:
    """Replace a top-level ``key: ...`` line of a YAML file, keeping comments elsewhere."""
    dumped = yaml.safe_dump({key: value}, default_flow_style=None, sort_keys=False, width=1000).strip()
    pattern = re.compile(rf"^{key}:.*?(?=^\S|\Z)", re.S | re.M)
    if not pattern.search(text):
        raise ValueError(f"no top-level {key!r} in the YAML")
    return pattern.sub(lambda _: dumped + "\n", text, count=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("checkpoint")
    ap.add_argument("--report", help="report.json of `lipzoo certify NAME`")
    ap.add_argument("--dtype", default="float16")
    args = ap.parse_args()

    model = load(args.checkpoint)
    config = dict(model.lipzoo_config)
    config["name"] = args.name
    entry_path = PKG / "zoo_configs" / f"{args.name}.yaml"
    card = {"target": args.name, "paper_metrics": PAPER.get(args.name)}
    if args.report:
        report = json.loads(Path(args.report).read_text())
        if not report["bound"]["guaranteed"] or report.get("kind", "certified") != "certified":
            raise SystemExit(f"{args.report} holds estimated radii (guarantee={report['bound']['guarantee']}); "
                             "a zoo entry publishes certified numbers only: rerun `lipzoo certify` with --norm auto.")
        metrics = dict(report["metrics"])
        metrics["epochs_trained"] = config.get("training", {}).get("epochs_trained")
        metrics["num_test_samples"] = report["num_samples"]
        config["metrics"] = metrics
        config["bound"] = {k: report["bound"][k] for k in ("method", "mode", "norm", "guarantee", "guaranteed",
                                                         "pairwise_mean", "pairwise_max", "value")}
        config["certify_attack"] = report["attack"]
        # the report comes from `lipzoo certify NAME`, which loads the shipped (rounded) weights
        config["metrics_measured_on_stored_weights"] = True
    out = PKG / "weights" / args.name
    save_pretrained(model, out, config=config, card=card, storage_dtype=args.dtype)
    saved = json.loads((out / "config.json").read_text())
    weights = {"repo_id": f"lipzoo/{args.name}", "revision": None, "sha256": saved["sha256"],
               "filename": "model.safetensors", "local": f"weights/{args.name}", "storage_dtype": args.dtype}
    text = _replace_top_level(entry_path.read_text(), "weights", weights)
    if args.report:
        text = _replace_top_level(text, "metrics", saved["metrics"])
    entry_path.write_text(text)
    print(f"published {args.name}: {out} sha256={saved['sha256']}")


if __name__ == "__main__":
    main()
