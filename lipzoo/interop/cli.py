"""``lipzoo interop MODEL.pt --input-shape C H W``: load a peer library's network, convert it, bound it, compare
with the peer's own rule and (with ``--data``) certify it the three ways of :mod:`lipzoo.interop.compare`.

The command line's handler (:func:`run`); the arguments are in :mod:`lipzoo.cli_parser`.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["load_model", "parse_claims", "run"]


def _import_builder(spec: str):
    """``module:function`` or ``path/to/file.py:function`` -> the function (imported: it runs that code)."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ValueError(f"--builder must be module:function or path/to/file.py:function, got {spec!r}.")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise FileNotFoundError(f"--builder: {path} does not exist.")
        loaded = importlib.util.spec_from_file_location(f"_lipzoo_builder_{path.stem}", path)
        if loaded is None or loaded.loader is None:
            raise ValueError(f"--builder: cannot import {path}.")
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"--builder: {where} has no function {name!r}.")
    return fn


def load_model(path, *, trust_pickle: bool = False, builder: str | None = None) -> nn.Module:
    """The network in ``path``: a state dict loaded into ``builder()`` (``torch.load(weights_only=True)``), or, only
    with ``trust_pickle``, a whole pickled module (``torch.load(weights_only=False)``, which runs code stored in
    the file), or a lipzoo checkpoint folder (``lipzoo.load``: safetensors, no code), so that lipzoo's own 1-Lipschitz
    families (``sll-*``, ``aol-*``) can be set against the same rule."""
    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file():
        from lipzoo.hub import load

        return load(str(p))
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist.")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)  # safe: tensors and containers only
    except pickle.UnpicklingError:
        obj = None  # a pickled module (or anything else that needs code to load)
    except (RuntimeError, OSError, EOFError) as err:
        raise ValueError(f"cannot read {p} with torch.load: {err}") from None
    if builder is not None:
        if not isinstance(obj, dict):
            raise ValueError(f"--builder loads a state dict into the model it builds, but {p} is not a state dict "
                             "(save one with torch.save(model.state_dict(), path)).")
        model = _import_builder(builder)()
        if not isinstance(model, nn.Module):
            raise TypeError(f"--builder {builder} returned {type(model).__name__}, not a torch.nn.Module.")
        model.load_state_dict(obj, strict=True)
        return model
    if isinstance(obj, dict):
        raise ValueError(f"{p} holds a state dict, not a model: pass --builder module:function, a function that "
                         "builds the network it belongs to.")
    if obj is not None:
        raise ValueError(f"{p} holds a {type(obj).__name__}, not a model.")
    if not trust_pickle:
        raise ValueError(f"{p} is a pickled model: loading it runs code stored in the file (torch.load with "
                         "weights_only=False). Pass --trust-pickle if you trust where it comes from, or save its state "
                         "dict and pass --builder module:function.")
    try:
        model = torch.load(p, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as err:  # a class the pickle names is not importable here
        raise ValueError(f"cannot unpickle {p}: {type(err).__name__}: {err} (install the library that defines the "
                         "model's classes, e.g. pip install 'lipzoo[interop]')") from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"{p} holds a {type(model).__name__}, not a torch.nn.Module.")
    return model


def parse_claims(items: list[str] | None) -> dict[str, float]:
    """``["0=3.2457", ...]`` (``--claim PATH=VALUE``) -> ``{"0": 3.2457}``."""
    out: dict[str, float] = {}
    for item in items or []:
        path, sep, value = item.partition("=")
        try:
            out[path] = float(value)
        except ValueError:
            sep = ""
        if not sep or not path:
            raise ValueError(f"--claim must be PATH=VALUE (a layer's path in the model and the constant its library "
                             f"claims for it, e.g. 0=3.2457), got {item!r}.")
    return out


def _write_radii(path: Path, result: dict[str, Any]) -> None:
    per = result["per_point"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "label", "prediction", "margin", "radius_lipzoo", "radius_rule_proved",
                    "radius_rule_claimed"])
        rows = zip(per["labels"].tolist(), per["predictions"].tolist(), per["margins"].tolist(),
                   per["radii"]["lipzoo"].tolist(), per["radii"]["proved"].tolist(), per["radii"]["claimed"].tolist())
        for i, (y, p, m, a, b, c) in enumerate(rows):
            w.writerow([i, y, p, f"{m:.9g}", f"{a:.9g}", f"{b:.9g}", f"{c:.9g}"])


def _check_data(dataset, shape) -> None:
    if len(dataset) == 0:
        raise ValueError("The dataset is empty; nothing to certify.")
    x, _ = dataset[0]
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"The data does not fit --input-shape: one image is {tuple(x.shape)}, the model takes "
                         f"{tuple(shape)}.")


def run(args) -> int:
    """The ``lipzoo interop`` command (arguments from :func:`lipzoo.cli_parser.build_parser`)."""
    from lipzoo.bounds import BoundOptions, lipschitz_bound
    from lipzoo.interop.compare import compare_certificates, format_comparison
    from lipzoo.interop.conversion import ConversionReport, conversion_report, convert
    from lipzoo.interop.rule import one_lipschitz_rule

    if args.data is None and args.eps:
        raise ValueError("--eps needs --data (the points to certify).")
    if args.data is not None and not args.eps:
        raise ValueError("--data needs at least one --eps, e.g. --eps 1.58.")
    claims = parse_claims(args.claim)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(args.input_shape)
    model = load_model(args.model, trust_pickle=args.trust_pickle, builder=args.builder)
    dataset = None
    if args.data is not None:  # the data is checked before any bound
        from lipzoo.data import load_dataset

        dataset = load_dataset(args.data, split=args.split, root=args.data_root)
        _check_data(dataset, shape)
    converted = convert(model, shape, check=not args.no_check)
    report = conversion_report(converted) or ConversionReport(shape, (), None)
    print(f"converted {len(report.conversions)} module(s) of {args.model}:")
    for c in report.conversions:
        print(f"  {c.path or '(model)'}: {c.original.rsplit('.', 1)[-1]} -> {c.equivalent} (probes: max relative "
              f"difference {c.max_difference:.2g})")
    if report.end_to_end_difference is not None:
        print(f"  converted vs original, end to end (float64): max relative difference "
              f"{report.end_to_end_difference:.2g}")
    device = args.device or "cpu"
    converted = converted.to(device)
    options = BoundOptions(effort=args.bound_effort or "medium", max_dense=args.max_dense)
    bound = lipschitz_bound(converted, shape, mode="pairwise", options=options, progress=not args.no_progress)
    rule = one_lipschitz_rule(converted, shape, claimed=claims)
    print("\nthe peer's rule, layer by layer (claimed: the constant the layer is built to have; proved: lipzoo's "
          "bound of that layer alone):")
    print(rule.format())
    off = ~torch.eye(bound.value.shape[0], dtype=torch.bool)
    pair = bound.value.to(torch.float64)[off]
    above = int((pair > rule.proved).sum()) // 2
    print(f"lipzoo pairwise LipLT: mean L_ij {float(pair.mean()):.6g}, max {float(pair.max()):.6g} ({bound.guarantee})"
          + (f"; {above} pair(s) above the proved rule {rule.proved:.6g}: lipzoo certifies them with the rule's "
             "constant (both are proved)" if above else f"; every pair at or below the proved rule {rule.proved:.6g}"))
    out = Path(args.out or f"interop-{Path(args.model).stem}")
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"model": str(args.model), "input_shape": list(shape), "conversion": report.to_dict(),
                               "rule": rule.to_dict(), "bound": {**bound.to_dict(), "mean_L_ij": float(pair.mean()),
                                                                 "max_L_ij": float(pair.max())}}
    files = [out / "report.json"]
    if dataset is not None:
        result = compare_certificates(converted, dataset, args.eps, input_shape=shape, bound=bound, rule=rule,
                                      limit=args.limit, batch_size=args.batch_size, progress=not args.no_progress)
        print()
        print(format_comparison(result, rule, name=str(args.model), guarantee=bound.guarantee))
        payload.update({"data": str(args.data), "split": args.split, "eps": result["eps"],
                        "metrics": result["summary"], "constants": result["constants"],
                        "rounding": result["rounding"]})
        _write_radii(out / "radii.csv", result)
        files.append(out / "radii.csv")
    (out / "report.json").write_text(json.dumps(payload, indent=2, default=str))
    print(f"\nFiles: {', '.join(str(f) for f in files)}", file=sys.stdout)
    return 0
