"""Command line: ``lipzoo train | certify | bounds | interop | push | list``. Orchestration only.

Arguments are checked before anything heavy happens (``--eps`` and the integer options at parse
time, in :mod:`lipzoo.cli_parser`; the data's shape, channels and pixels right after loading, before any
bound is computed).
``lipzoo --help`` imports neither torch nor timm.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import sys
from pathlib import Path

from lipzoo.cli_parser import build_parser, parse_args

__all__ = ["main", "build_parser", "parse_args"]


def _device(name: str | None) -> str:
    """``--device``, else ``cuda`` when a GPU is present (the guaranteed bound runs there in float64)."""
    import torch

    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_model(target: str, device: str | None = None):
    """A model with its config from a zoo entry, a checkpoint folder or a Hub repo id, on ``device``."""
    from lipzoo.hub import load

    model = load(target, map_location=device or "cpu")
    return model, dict(getattr(model, "lipzoo_config", {}) or {})


# Bounds are cached on disk as the Python API caches them (keyed by the model's fingerprint), so certify after
# bounds is instant: ``$LIPZOO_CACHE`` or ``~/.cache/lipzoo/bounds``; ``LIPZOO_CACHE=off`` disables.
_CACHE = None


def _shipped(model, args):
    """The checkpoint's shipped certificate for this run (None with --recompute or when there is none), and a line
    saying how the bound is obtained."""
    record = getattr(model, "lipzoo_certificate", None)
    if record is None or args.recompute or args.norm != "auto":
        return None, None
    return record, (f"bound: from the checkpoint's certificate.json ({len(record['chains'])} certified operator "
                    "norms, each checked against this run's estimate from below; --recompute computes from scratch)")


def _bound_options(args, certificate=None):
    """The bound's options from the command line: one :class:`~lipzoo.bounds.options.BoundOptions` for everything
    after it (a probabilistic bound gets fresh random start vectors: ``seed=None``). Without ``--bound-effort``, the
    effort of the checkpoint's shipped ``certificate`` (the bound its card's numbers come from), else the default."""
    from lipzoo.bounds import BoundOptions

    effort = args.bound_effort
    if effort is None:
        effort = (certificate or {}).get("options", {}).get("effort", "medium")
    return BoundOptions(method=getattr(args, "method", "liplt"), norm=args.norm, max_dense=args.max_dense,
                        effort=effort, failure_probability=args.failure_probability,
                        seed=None if args.norm == "lanczos" else 0)


def _default_out(prefix: str, target: str) -> str:
    """A folder name of its own per model: ``certify-crm-mnist-4c3f``, ``certify-runs-A-final``, ``certify-o-r``."""
    path = Path(target)
    parts = path.resolve().relative_to(Path.cwd()).parts if path.is_dir() and path.resolve().is_relative_to(
        Path.cwd()) else path.parts
    slug = "-".join(p for p in parts if p not in ("", ".", "..", "/")).replace(":", "-") or "model"
    return f"{prefix}-{slug}"


def _check_data(dataset, input_shape, limit: int | None, num_classes: int | None = None) -> None:
    """Refuse data the model cannot take (shape, channels, labels past its classes) or pixels that are
    not numbers, before any bound."""
    import torch

    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise ValueError("The dataset is empty; nothing to certify.")
    x, _ = dataset[0]
    want = tuple(int(s) for s in input_shape)
    if tuple(x.shape) != want:
        what = "channels" if len(x.shape) == len(want) and x.shape[1:] == want[1:] else "shape"
        raise ValueError(f"The data does not fit the model ({what}): one image is {tuple(x.shape)}, the model takes "
                         f"{want}. Pass data of the model's input shape (--data), or another model.")
    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        bad = ~torch.isfinite(images[:n])
        if bool(bad.any()):
            raise ValueError(f"The data holds {int(bad.sum())} NaN/inf pixel values (first image "
                             f"{int(bad.flatten(1).any(1).nonzero()[0])}); clean the data before certifying.")
    labels = getattr(dataset, "labels", None)
    if num_classes is not None and isinstance(labels, torch.Tensor) and labels.numel():
        low, high = int(labels[:n].min()), int(labels[:n].max())
        if low < 0 or high >= int(num_classes):
            raise ValueError(f"The data has label {low if low < 0 else high}, but the model has {num_classes} classes "
                             f"(0..{int(num_classes) - 1}): certify it on data with its classes.")


def _cmd_train(args) -> int:
    import time

    started = time.monotonic()  # --time-budget caps the command, imports and data loading included
    from lipzoo.train import TrainOptions, resolve_config, train

    with _train_log():
        # the data and the initial weights are checked here, before the first step
        config = resolve_config(args.target, args.overrides, data=args.data, init=args.init,
                                normalization=args.normalization, data_root=args.data_root)
        out = args.out or _default_run(args.target, config, args.data)
        opts = TrainOptions(out_dir=out, data_root=args.data_root, device=args.device, seed=args.seed,
                            resume=args.resume, amp=args.amp, num_workers=args.workers,
                            max_steps_per_epoch=args.max_steps, progress=not args.no_progress, threads=args.threads,
                            time_budget=args.time_budget, compile=args.compile, init=args.init, data=args.data,
                            started=started)
        run_dir = train(config, opts)
    data = f" --data {shlex.quote(args.data)}" if args.data and not _known_dataset(args.data) else ""
    print(f"Training finished: {run_dir}/final (metrics in {run_dir}/metrics.jsonl). Certify it with:\n"
          f"  lipzoo certify {run_dir}/final{data} --attach")
    return 0


class _TrainLogFormat(logging.Formatter):
    """``lipzoo train: epoch 3/10: ...`` and ``lipzoo train: warning: ...``, the command's own voice."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
        return f"lipzoo train: {level}{record.getMessage()}"


@contextlib.contextmanager
def _train_log():
    """The trainer's INFO lines (one per epoch, the time budget's plan) and warnings on stderr, for this command."""
    log = logging.getLogger("lipzoo.train")
    if log.getEffectiveLevel() <= logging.INFO:  # -v: the root handler shows them already
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_TrainLogFormat())
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def _default_run(target: str, config: dict, data: str | None) -> str:
    """``runs/<name>``; a run on other data gets the data's name too (``runs/crm-cifar10-6c2f-my``)."""
    base = config["name"] or Path(target).stem
    if data is None:
        return f"runs/{base}"
    from lipzoo.data import data_label

    return f"runs/{base}-{Path(data_label(data)).stem}"


def _known_dataset(name: str) -> bool:
    from lipzoo.meta import DATASETS

    return name in DATASETS


def _attack_workers(threads: int | None) -> int:
    """The attack's single-threaded workers: ``--threads``, else one per core the other jobs leave idle.

    On a CPU shared with other jobs, torch's intra-op threads wait for each other at every operator
    (4x slower than one thread on this project's loaded 2-core machine), and two workers were slower
    than one there too (docs/benchmarks.md); free cores are worth a worker each.
    """
    import torch

    if threads:
        return threads
    cores = torch.get_num_threads()
    return max(1, min(cores, round(_idle_cores(cores))))


def _idle_cores(cores: int, interval: float = 0.25) -> float:
    """How many of ``cores`` the other jobs leave idle: the machine's idle fraction over ``interval`` seconds
    (``/proc/stat``), else ``cores`` minus the 1-minute load average (which lags: a job that just ended
    still counts)."""
    import os
    import time

    def sample():
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        return values[3] + values[4], sum(values[:8])  # idle + iowait, all but guest time

    try:
        idle0, total0 = sample()
        time.sleep(interval)
        idle1, total1 = sample()
        fraction = (idle1 - idle0) / max(total1 - total0, 1)
        return min(cores, fraction * (os.cpu_count() or cores))
    except (OSError, ValueError, IndexError):
        try:
            return cores - os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average on this platform
            return float(cores)


def _cmd_certify(args) -> int:
    import torch

    from lipzoo.certify.report import certify, format_table
    from lipzoo.data import load_dataset

    if args.attach and not Path(args.model).is_dir():
        raise ValueError(f"--attach writes the results into a checkpoint folder; {args.model!r} is not one. Certify "
                         "the folder you trained or saved (lipzoo certify runs/A/final --attach).")
    if args.attach and args.split != "test":
        raise ValueError("--attach records test-set numbers; certify with --split test (the default).")
    if args.attach and args.norm in ("power", "lanczos"):
        raise ValueError(f"--attach records proved numbers; --norm {args.norm} gives "
                         f"{'estimates' if args.norm == 'power' else 'probabilistic bounds'}. Use --norm auto or exact.")
    device = _device(args.device)
    model, config = _load_model(args.model, device)  # evaluate() and the bound run where the model is
    certificate, how = _shipped(model, args)
    if how:
        print(how)
    arithmetic = getattr(torch, args.arithmetic)
    model = model.to(arithmetic)  # the radii hold for the model run in this arithmetic (they account for it)
    data = args.data or config.get("dataset")
    if data is None:
        raise ValueError("No dataset: pass --data (mnist, cifar10, tinyimagenet, a .npz path or an image folder).")
    if not args.data and not _known_dataset(data) and not Path(data).exists():
        raise ValueError(f"{args.model} was trained on your own data {data!r}; pass its path: --data PATH/{data}.")
    eps_list = args.eps or config.get("eps") or (config.get("certify") or {}).get("eps")
    if not eps_list:
        raise ValueError("No eps: pass --eps, e.g. --eps 36/255.")
    dataset = load_dataset(data, split=args.split, root=args.data_root)
    _check_data(dataset, config["input_shape"], args.limit, config.get("num_classes"))
    if args.threads:
        torch.set_num_threads(args.threads)
    attack = None if args.no_attack else {"steps": args.attack_steps, "restarts": args.restarts,
                                          "workers": _attack_workers(args.threads),
                                          **({"attack_all": True} if args.attack_all else {})}
    compare = None
    if args.compare:
        other, other_cfg = _load_model(args.compare, device)
        rep = certify(other.to(arithmetic), dataset, eps_list, input_shape=other_cfg["input_shape"], limit=args.limit,
                      attack=None, options=_bound_options(args, getattr(other, "lipzoo_certificate", None)),
                      certificate=None if args.recompute else getattr(other, "lipzoo_certificate", None),
                      progress=not args.no_progress, cache=False if args.recompute else _CACHE,
                      name=args.compare, allow_estimate=args.norm == "power")
        compare = {args.compare if rep["kind"] == "certified" else f"{args.compare} ({rep['kind']})": rep["radii"]}
    name = args.model
    out = args.out or _default_out("certify", name)
    from lipzoo.certify.metrics import UnsoundBoundError

    try:
        report = certify(model, dataset, eps_list, input_shape=config["input_shape"], out_dir=out, name=name,
                         limit=args.limit, batch_size=args.batch_size, attack=attack,
                         options=_bound_options(args, getattr(model, "lipzoo_certificate", None)),
                         compare=compare, device=device, progress=not args.no_progress,
                         cache=False if args.recompute else _CACHE, certificate=certificate,
                         allow_estimate=args.norm == "power")  # --norm power asks for an estimate explicitly
    except UnsoundBoundError as err:  # --attack-all broke a certified point
        print(f"lipzoo certify: UNSOUND BOUND: {err}", file=sys.stderr)
        return 3
    shipped = None
    if config.get("sha256"):  # which weights these numbers belong to (checked by attach_results)
        report["sha256"] = config["sha256"]
        if report["bound"].get("norm") == "auto" and report["bound"]["guaranteed"] and "bound_object" in report:
            from lipzoo.bounds.shipped import certificate_record, write_certificate

            # the bound these numbers come from, checkable (docs/certificate-format.md); --attach ships it
            shipped = certificate_record(report["bound_object"], weights_sha256=config["sha256"])
            report["files"].append(str(write_certificate(out, shipped)))
            report["bound"]["certificate"] = "certificate.json"
        path = Path(out) / "report.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            path.write_text(json.dumps({**saved, "sha256": config["sha256"],
                                        "bound": {**saved["bound"], **({"certificate": "certificate.json"}
                                                                        if shipped else {})}}, indent=2))
    print(format_table(report))
    print(f"\nFiles: {', '.join(report['files'])}")
    viol = [v for k, v in report["metrics"].items() if k.startswith("consistency_violations") and v]
    if args.attach:
        from lipzoo.hub import attach_results

        from lipzoo.data import data_label

        # the data's name (a file name, not this machine's path) when it is not the model's dataset
        given = data_label(args.data) if args.data and data_label(args.data) != config.get("dataset") else None
        attach_results(args.model, {**report, "data": given}, certificate=shipped)
        print(f"Attached the results to {args.model} (config.json, README.md"
              + (" and certificate.json)." if shipped else ")."))
    return 3 if viol else 0


def _cmd_cache(args) -> int:
    from lipzoo.bounds import cache

    if cache.cache_dir() is None:
        print("The bound cache is off (LIPZOO_CACHE=off).")
        return 0
    if args.clear:
        print(f"Removed {cache.clear()} file(s) from {cache.cache_dir()}.")
    s = cache.summary()
    print(f"folder:  {s['folder']} ($LIPZOO_CACHE; LIPZOO_CACHE=off disables the cache)\n"
          f"holds:   {s['bounds']} bound file(s), {s['chains']} certificate file(s), {s['bytes'] / 1e6:.2f} MB\n"
          f"key:     {s['secret']} (HMAC key of the entries; $LIPZOO_CACHE_SECRET)")
    return 0


def _cmd_bounds(args) -> int:
    from lipzoo.certify.report import bounds_table

    model, config = _load_model(args.model, _device(args.device))  # the bound runs where the model is
    shape = args.input_shape or config["input_shape"]
    certificate, how = _shipped(model, args) if args.input_shape is None else (None, None)
    table = bounds_table(model, shape, options=_bound_options(args, getattr(model, "lipzoo_certificate", None)),
                         cache=False if args.recompute else _CACHE,
                         certificate=certificate)
    shipped = getattr(model, "lipzoo_certificate", None)
    if args.recompute and shipped is not None and args.input_shape is None:
        table["liplt"]["shipped_certificate"] = {"L_ij": shipped["bound"]["mean"],
                                                 "same": table["liplt"]["L_ij"] == shipped["bound"]["mean"]}
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    if how:
        print(how)
    print(f"{'method':>7} | {'mean L_ij':>10} | {'mean L_i+L_j':>12} | {'sqrt2*L':>10} | guarantee")
    for method, row in table.items():
        print(f"{method:>7} | {row['L_ij']:10.4g} | {row['L_i+L_j']:12.4g} | {row['sqrt2_L']:10.4g} | {row['guarantee']}")
    below = table["liplt"].get("L_ij_at_estimates")
    if below:
        print(f"LipLT at every norm's estimate from below: mean L_ij {below:.4g}; the exact LipLT value lies between "
              f"this and the bound above ({table['liplt']['L_ij'] / below - 1:.2%} apart)")
    chains = table["liplt"].get("chains")
    if chains:
        work = chains.get("work") or {}
        print(f"{chains['certified']} of {chains['total']} inner operators certified exactly"
              + (f"; refinement work {work['spent']:.4g} of {work['effort']:.4g} units" if work else "")
              + {"tolerance": " (stopped: no certificate could gain 0.2 %)",
                 "effort": " (stopped by the effort: a larger --bound-effort certifies more)"}.get(str(work.get("stopped")), ""))
    check = table["liplt"].get("shipped_certificate")
    if check:
        print(f"recomputed from scratch: mean L_ij {table['liplt']['L_ij']!r}; the shipped certificate's {check['L_ij']!r}"
              f" ({'identical' if check['same'] else 'different: see docs/certificate-format.md, Reproducing'})")
    return 0


def _cmd_list(args) -> int:
    from lipzoo.models import REGISTRY, get_metadata, list_architectures, list_entries, zoo
    from lipzoo.models.registry import filter_names

    archs = list_architectures(args.pattern)
    entries = filter_names(list_entries(), args.pattern)
    if archs:
        print("architectures:")
        for name in archs:
            info = REGISTRY.get(name)
            shape = "x".join(map(str, info.input_shape))
            print(f"  {name:<10} {shape:>8}  {info.num_classes:>4} classes  {info.description}")
    if entries:
        print("zoo entries (certified accuracy measured on the published weights):")
        for name in entries:
            meta = get_metadata(name)
            res = meta.results
            if res is None:
                measured = "not trained yet" if meta.weights is None else "not certified yet"
            else:
                cells = [f"{100 * res.at(e).certified:.2f}% @ {e.text}" for e in meta.eps  # type: ignore[operator]
                         if res.at(e).certified is not None]
                measured = f"clean {100 * res.clean:.2f}%, certified " + ", ".join(cells)  # type: ignore[operator]
            tag = f"{meta.architecture}.{zoo.pretrained_tag(name)}"
            print(f"  {name:<22} {tag:<22} {measured}")
    if not archs and not entries:
        print(f"nothing matches {args.pattern!r}")
    return 0


def _cmd_interop(args) -> int:
    from lipzoo.interop.cli import run

    return run(args)


def _cmd_push(args) -> int:
    from lipzoo.hub import push

    try:
        info = push(args.directory, args.repo_id, token=args.token, revision=args.revision, private=args.private)
    except (ConnectionError, PermissionError) as err:  # no network, no token: one line with the fix, as `load`
        print(f"lipzoo push: error: {err}", file=sys.stderr)
        return 2
    print(f"Pushed {args.directory} to {args.repo_id}: {getattr(info, 'commit_url', info)}")
    return 0


_COMMANDS = {"train": _cmd_train, "certify": _cmd_certify, "bounds": _cmd_bounds, "push": _cmd_push,
             "cache": _cmd_cache, "list": _cmd_list, "interop": _cmd_interop}
"""The handler of each subcommand (the parser, :mod:`lipzoo.cli_parser`, names it in ``args.command``)."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, FloatingPointError) as err:
        print(f"lipzoo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
