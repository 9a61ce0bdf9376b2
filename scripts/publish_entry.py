"""Maintainer tool: turn a finished training run into a shipped, certified zoo entry.

    python scripts/publish_entry.py NAME RUN_DIR/final [--dtype float16]      # 1. ship the weights
    lipzoo certify NAME --attack-steps 20 --out certify-NAME                 # 2. certify the shipped copy
    python scripts/publish_entry.py NAME --report certify-NAME/report.json   # 3. attach the numbers

1. re-saves the run's checkpoint into ``lipzoo/weights/NAME`` (safetensors + config + card) and
   pins repo id, sha256, storage dtype and local path in ``lipzoo/zoo_configs/NAME.yaml``;
3. attaches the report to the shipped folder (``lipzoo.hub.attach_results``: refused unless the
   report was measured on exactly those weights), with the ``certificate.json`` that ``lipzoo certify`` wrote
   beside it, and copies the results into the entry's YAML.

Numbers never travel from the run to the entry: only a report of the shipped bytes is attached.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

import lipzoo
from lipzoo.bounds.shipped import read_certificate
from lipzoo.hub import attach_results, load, read_config, save_pretrained
from lipzoo.models import zoo

PKG = Path(lipzoo.__file__).parent
PAPER = {
    "crm-mnist-4c3f": {"clean": 0.9627, "pgd@1.58": 0.8804, "certified@1.58": 0.6337},
    "crm-cifar10-6c2f": {"clean": 0.7482, "pgd@18/255": 0.7231, "certified@18/255": 0.6416},
}


def _replace_top_level(text: str, key: str, value) -> str:
    """Replace a top-level ``key: ...`` block of a YAML file, keeping comments elsewhere."""
    # a bare null would be dumped in flow style as "{metrics: null}", which is not a top-level key
    dumped = (f"{key}: null" if value is None else
              yaml.safe_dump({key: value}, default_flow_style=None, sort_keys=False, width=1000).strip())
    pattern = re.compile(rf"^{key}:.*?(?=^\S|\Z)", re.S | re.M)
    if not pattern.search(text):
        raise ValueError(f"no top-level {key!r} in the YAML")
    return pattern.sub(lambda _: dumped + "\n", text, count=1)


def _clear_zoo_cache() -> None:
    zoo._entry_files.cache_clear()
    zoo._load.cache_clear()


def ship(name: str, checkpoint: str, dtype: str) -> None:
    entry_path = PKG / "zoo_configs" / f"{name}.yaml"
    out = PKG / "weights" / name
    model = load(checkpoint)
    card = {"target": name, "paper_metrics": PAPER.get(name)}
    config = dict(model.lipzoo_config)
    training = config.get("training") or {}
    # The stored copy is the run's model in another dtype, not other work: its training record and
    # recipe stay. A run trained from scratch with this entry's recipe has no parent (it is not
    # derived from the weights it replaces); a fine-tuned one keeps the parent it recorded.
    parent = config.get("parent") if training.get("init") else None
    base = {**config, "sha256": None, "name": None, "weights": None, "metrics": None, "parent": parent}
    save_pretrained(model, out, config=base, card=card, storage_dtype=dtype)
    sha = read_config(out)["sha256"]
    weights = {"repo_id": f"lipzoo/{name}", "revision": None, "sha256": sha, "filename": "model.safetensors",
               "local": f"weights/{name}", "storage_dtype": dtype}
    text = _replace_top_level(entry_path.read_text(), "weights", weights)
    entry_path.write_text(_replace_top_level(text, "metrics", None))  # old numbers belonged to old weights
    _clear_zoo_cache()
    # saved again now that the entry pins these bytes (same tensors, same sha256): the name is its own
    save_pretrained(model, out, config={**base, "name": name}, card=card, storage_dtype=dtype)
    print(f"shipped {name}: {out} sha256={sha}; now run `lipzoo certify {name}` and --report")


def attach(name: str, report_path: str) -> None:
    entry_path = PKG / "zoo_configs" / f"{name}.yaml"
    out = PKG / "weights" / name
    # the certificate `lipzoo certify` wrote beside the report: the bound these numbers come from
    cert_path = Path(report_path).parent / "certificate.json"
    certificate = read_certificate(cert_path) if cert_path.is_file() else None
    meta = attach_results(out, json.loads(Path(report_path).read_text()), certificate=certificate)
    entry_path.write_text(_replace_top_level(entry_path.read_text(), "metrics", meta.results.to_dict()))
    _clear_zoo_cache()
    zoo.get_metadata(name)  # the entry still validates (metrics.sha256 == weights.sha256)
    print(f"attached {report_path} to {name} (sha256 {meta.results.sha256})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="zoo entry")
    ap.add_argument("checkpoint", nargs="?", help="the run's final/ folder (step 1)")
    ap.add_argument("--report", help="report.json of `lipzoo certify NAME` (step 3)")
    ap.add_argument("--dtype", default="float16", help="storage dtype of the shipped weights")
    args = ap.parse_args()
    if args.checkpoint:
        ship(args.name, args.checkpoint, args.dtype)
    if args.report:
        attach(args.name, args.report)
    if not args.checkpoint and not args.report:
        ap.error("pass a checkpoint folder (step 1) and/or --report (step 3)")


if __name__ == "__main__":
    main()
