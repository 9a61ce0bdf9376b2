"""Train one zoo architecture with each of lipzoo's losses at an equal budget, certify each, write one table.

Every run uses the same entry (architecture, data, normalization, optimizer, seed), the same number of
epochs and steps per epoch, one CPU thread, and differs only in ``recipe.loss``; every model is then
certified with the same guaranteed bound (``lipzoo certify --no-attack``, pairwise LipLT, proved norms)
at the same radii. Runs already finished (their ``report.json`` exists) are not redone, so the script
can be stopped and started again::

    LIPZOO_DATA=/path/to/data python scripts/compare_losses.py crm-mnist-4c3f --eps 0.5 --eps 1.58 \\
        --epochs 6 --steps 40 --out runs/losses
    LIPZOO_DATA=/path/to/data python scripts/compare_losses.py crm-cifar10-6c2f --eps 36/255 --eps 72/255 \\
        --epochs 4 --steps 40 --out runs/losses

It prints a Markdown table (and writes it to ``OUT/ENTRY.md``): clean and certified accuracy at each
radius, the mean pairwise bound and the wall clock of training, one row per loss.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

LOSSES = ("crm", "ce", "gloro", "emma", "hkr")


def _run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` with its output in ``log``; returns the wall clock in seconds (raises on failure)."""
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - start


def run_one(entry: str, loss: str, args: argparse.Namespace) -> dict:
    """Train and certify one loss (skipped when its report exists); returns its row."""
    out = Path(args.out) / f"{entry}-{loss}"
    report = out / "certify" / "report.json"
    timing = out / "timing.json"
    if not report.exists():
        out.mkdir(parents=True, exist_ok=True)
        lipzoo = [sys.executable, "-m", "lipzoo.cli"]
        common = ["--threads", str(args.threads), "--no-progress", "--device", "cpu"]
        train = [*lipzoo, "train", entry, f"recipe.loss={loss}", f"recipe.epochs={args.epochs}",
                 "--max-steps", str(args.steps), "--seed", str(args.seed), "--out", str(out / "run"),
                 *(["--resume"] if (out / "run").exists() else []), *common]
        train_s = _run(train, out / "train.log")
        eps = [x for e in args.eps for x in ("--eps", e)]
        certify = [*lipzoo, "certify", str(out / "run" / "final"), "--no-attack", *eps,
                   "--bound-effort", args.bound_effort, "--out", str(out / "certify"), *common]
        certify_s = _run(certify, out / "certify.log")
        timing.write_text(json.dumps({"train_s": train_s, "certify_s": certify_s,
                                      "train": " ".join(train[2:]), "certify": " ".join(certify[2:])}, indent=2))
    rep = json.loads(report.read_text())
    times = json.loads(timing.read_text()) if timing.exists() else {}
    m = rep["metrics"]
    return {"loss": loss, "clean": m["clean"], "certified": {e: m[f"certified@{e}"] for e in rep["eps"]},
            "mean_L": rep["bound"]["pairwise_mean"], "guarantee": rep["bound"]["guarantee"],
            "train_s": times.get("train_s")}


def table(entry: str, rows: list[dict], args: argparse.Namespace) -> str:
    eps = list(rows[0]["certified"])
    head = ["loss", "clean", *[f"certified at {e}" for e in eps], "mean L_ij (proved)", "training wall clock"]
    lines = [f"{entry}: {args.epochs} epochs of {args.steps} steps, seed {args.seed}, {args.threads} CPU thread(s)",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['loss']}`", f"{100 * r['clean']:.2f} %",
                 *[f"{100 * r['certified'][e]:.2f} %" for e in eps], f"{r['mean_L']:.4g} ({r['guarantee']})",
                 "-" if r["train_s"] is None else f"{r['train_s']:.0f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("entry", help="zoo entry, e.g. crm-mnist-4c3f")
    p.add_argument("--eps", action="append", required=True, help="certification radius (repeatable)")
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=40, help="steps per epoch (--max-steps of lipzoo train)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bound-effort", default="low")
    p.add_argument("--out", default="runs/losses")
    args = p.parse_args(argv)
    rows = [run_one(args.entry, loss, args) for loss in args.losses]
    text = table(args.entry, rows, args)
    Path(args.out, f"{args.entry}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
