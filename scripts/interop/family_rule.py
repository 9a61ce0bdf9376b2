"""Certified accuracy of a lipzoo 1-Lipschitz family under the product rule, from a ``lipzoo interop`` run.

The rule its papers use: a logit pair moves by at most ``sqrt(2) * prod_k c_k * ||x - x'||`` with ``c_k = 1`` for the
layers that are 1-Lipschitz by construction (SLL blocks, AOL layers, sorts) and the proved norm of every other
layer (the input normalisation, an unconstrained stem or readout, pooling). ``lipzoo interop`` reports each layer's
proved constant in ``report.json`` and every test point's margin in ``radii.csv``; this script applies the rule with
those constants, subtracting twice the proved rounding bound as ``lipzoo interop`` does, and prints it beside
lipzoo's pairwise LipLT::

    lipzoo interop runs/families/crm-mnist-sll-s/final --input-shape 1 28 28 --data mnist --eps 0.5 --eps 1.58 \\
        --out runs/families/crm-mnist-sll-s-interop
    python scripts/interop/family_rule.py runs/families/crm-mnist-sll-s-interop --by-construction SLLConv2d SLLLinear
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from lipzoo.meta import parse_eps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="the --out folder of a lipzoo interop run on a lipzoo checkpoint")
    p.add_argument("--by-construction", nargs="+", required=True, metavar="CLASS",
                   help="layer classes counted at 1 (1-Lipschitz by construction), e.g. SLLConv2d SLLLinear")
    args = p.parse_args(argv)
    run = Path(args.run)
    report = json.loads((run / "report.json").read_text())
    layers = report["rule"]["layers"]
    rule = math.sqrt(2) * math.prod(1.0 if layer["kind"] in args.by_construction else layer["proved"]
                                    for layer in layers)
    err = 2 * report["rounding"]["margin_error_max"] if report.get("rounding") else 0.0
    rows = list(csv.DictReader((run / "radii.csv").open()))
    correct = [r for r in rows if r["label"] == r["prediction"]]
    print(f"product rule: sqrt(2) x prod, {', '.join(args.by_construction)} at 1: {rule:.6g}; "
          f"lipzoo pairwise LipLT mean {report['bound']['mean_L_ij']:.6g}")
    print(f"{'eps':>8} | {'product rule':>12} | {'lipzoo LipLT':>12}")
    for eps in report["eps"]:
        e = float(parse_eps(eps))  # '36/255' style radii too
        by_rule = sum((float(r["margin"]) - err) / rule >= e for r in correct) / len(rows)
        by_lipzoo = sum(float(r["radius_lipzoo"]) >= e for r in correct) / len(rows)
        print(f"{eps:>8} | {100 * by_rule:11.2f}% | {100 * by_lipzoo:11.2f}%")


if __name__ == "__main__":
    main()
