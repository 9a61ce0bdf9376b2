"""Maintainer tool: record golden outputs of a shipped zoo entry for tests/test_shipped.py.

    python scripts/make_golden.py NAME --report CERTIFY_DIR/report.json [--first 500]

Stores, in ``tests/golden/NAME.json``: the logits of the shipped weights on fixed inputs, and the
clean / certified accuracy on the first ``--first`` test images, read from the per-sample
``radii.csv`` that ``lipzoo certify NAME`` wrote beside the report (full test set), with its
pairwise bound.
"""

from __future__ import annotations

import argparse
import csv
import json
from fractions import Fraction
from pathlib import Path

import torch

import lipzoo

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"


def fixed_inputs(shape, n: int = 4) -> torch.Tensor:
    """The inputs the golden logits are recorded on (also used by the test)."""
    gen = torch.Generator().manual_seed(1234)
    return torch.rand(n, *shape, generator=gen)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--report", required=True, help="report.json of `lipzoo certify NAME`")
    ap.add_argument("--first", type=int, default=500)
    args = ap.parse_args()
    model = lipzoo.load(args.name)
    shape = model.lipzoo_config["input_shape"]
    with torch.no_grad():
        logits = model(fixed_inputs(shape))
    report = json.loads(Path(args.report).read_text())
    if not report["bound"]["guaranteed"] or report.get("kind", "certified") != "certified":
        raise SystemExit(f"{args.report} comes from an estimated bound (guarantee={report['bound']['guarantee']}): "
                         "golden certified numbers need a guaranteed one (`lipzoo certify NAME` without --norm power).")
    with open(Path(args.report).parent / "radii.csv") as fh:
        rows = list(csv.DictReader(fh))[: args.first]
    metrics = {"clean": sum(r["label"] == r["prediction"] for r in rows) / len(rows)}
    for eps in report["eps"]:
        metrics[f"certified@{eps}"] = sum(float(r["radius"]) > float(Fraction(eps)) for r in rows) / len(rows)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    out = {"name": args.name, "sha256": model.lipzoo_config["sha256"], "logits": logits.tolist(),
           "first_n": len(rows), "metrics": metrics, "eps": report["eps"],
           "pairwise_bound": report["bound"]["value"], "guarantee": report["bound"]["guarantee"],
           # the dtype the radii hold for (they account for its rounding): the test evaluates the model in it
           "arithmetic": (report.get("rounding") or {}).get("dtype", "float32")}
    (GOLDEN / f"{args.name}.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {GOLDEN / f'{args.name}.json'}")


if __name__ == "__main__":
    main()
