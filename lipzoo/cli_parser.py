"""The ``lipzoo`` command line's arguments: :func:`build_parser`, :func:`parse_args` and the argparse types.

Arguments are checked at parse time (``--eps``, the integer, seconds and probability options); the
subcommands themselves are in :mod:`lipzoo.cli`. Importing this module imports neither torch nor timm.
"""

from __future__ import annotations

import argparse
import re

__all__ = ["build_parser", "parse_args"]


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1 (the option's name is added by argparse)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _float(text: str, ok, expected: str) -> float:
    """``text`` as a float for which ``ok(value)`` holds, else an ``ArgumentTypeError`` saying what was expected."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    return _float(text, lambda v: v >= 0 and v != float("inf"), "a number of seconds >= 0")


def _add_bound_options(p: argparse.ArgumentParser, power_note: str) -> None:
    """The options of the guaranteed bound, shared by ``certify`` and ``bounds``."""
    p.add_argument("--norm", default="auto", choices=["auto", "exact", "lanczos", "power"],
                   help=f"operator norms: auto/exact are proved; lanczos is probabilistic (seconds; the bound holds "
                        f"except with probability --failure-probability, and is labelled so); {power_note}")
    p.add_argument("--failure-probability", type=_probability, default=1e-9, metavar="P",
                   help="under --norm lanczos: the probability that the bound is below the Lipschitz constant")
    p.add_argument("--max-dense", type=_positive_int, default=None,
                   help="under --norm auto: materialize operators up to this side only (default: adaptive, "
                        "small ones always, larger ones where they tighten the bound most within --bound-effort)")
    p.add_argument("--bound-effort", type=_effort, default=None, metavar="LEVEL|UNITS",
                   help="work the guaranteed bound may spend tightening large operators exactly: none, low, medium "
                        "(default; for a checkpoint that ships certificate.json, the effort it was computed with), "
                        "high, or a number of work units (1e9 GEMM-equivalent flops, counted from the "
                        "shapes: the bound is the same on any machine, loaded or not). It stops earlier once it "
                        "cannot gain 0.2%%; every value is proved either way. Results and the chains certified on "
                        "the way are cached, so a later run with more effort starts from them")
    p.add_argument("--bound-budget", type=_budget_replaced, help=argparse.SUPPRESS)
    p.add_argument("--recompute", action="store_true",
                   help="compute the bound from scratch: no shipped certificate (certificate.json), no cache; "
                        "`lipzoo bounds --recompute` also compares it with the shipped one")


def _effort(text: str):
    """argparse type: a named effort or a number of work units >= 0."""
    from lipzoo.bounds.cost import EFFORT_LEVELS, resolve_effort

    try:
        value = text if text in EFFORT_LEVELS else float(text)
        resolve_effort(value)
        return value
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(EFFORT_LEVELS)} or a number of work units "
                                         f">= 0, got {text!r}") from None


def _budget_replaced(text: str):
    raise argparse.ArgumentTypeError("--bound-budget (seconds) was replaced by --bound-effort (none, low, medium, "
                                     "high or work units): a bound no longer depends on the machine's speed or load")


def _budget_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0 (``--time-budget``)."""
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _probability(text: str) -> float:
    """argparse type: a probability strictly between 0 and 1."""
    return _float(text, lambda v: 0 < v < 1, "a probability in (0, 1)")


def _eps(text: str) -> str:
    """argparse type: an exact radius such as 36/255 or 1.58 (checked here, kept as written)."""
    from lipzoo.meta import parse_eps

    try:
        return parse_eps(text, where="eps").text
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _version() -> str:
    from lipzoo import __version__  # the package's __init__ is cheap (no torch)

    return __version__


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in every help line, once: a help that states its default itself is left as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        return text if "default:" in text else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``lipzoo`` parser; each subcommand sets ``command``, which :func:`lipzoo.cli.main` dispatches on (this
    module knows the options, not the handlers: no import of :mod:`lipzoo.cli`)."""

    fmt = _HelpFormatter
    common = argparse.ArgumentParser(add_help=False)  # -v works before and after the subcommand
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log at INFO level")
    p = argparse.ArgumentParser(prog="lipzoo", description="Certifiably robust networks: train, certify, bound, push.",
                                formatter_class=fmt)
    p.add_argument("-v", "--verbose", action="store_true", default=False, help="log at INFO level")
    p.add_argument("--version", action="version", version=f"lipzoo {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a zoo entry or YAML recipe (CRM or cross-entropy)", parents=[common],
                       formatter_class=fmt)
    t.add_argument("target", help="zoo entry (e.g. crm-mnist-4c3f) or a YAML file")
    t.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, anywhere on the line, e.g. recipe.epochs=5 (the scheduler's start epoch and "
                        "the CE warm-up scale with recipe.epochs unless they are given too)")
    t.add_argument("--out", help="run directory (default: runs/<name>, runs/<name>-<data> with --data)")
    t.add_argument("--init", metavar="SOURCE",
                   help="start from these weights (checkpoint folder, zoo entry, arch.tag or hf-hub:owner/name); "
                        "a classifier of another class count is re-initialised; unused when --resume finds a "
                        "checkpoint")
    t.add_argument("--data", metavar="FILE|DIR",
                   help="train on your own data: a Keras-layout .npz (x_train, y_train, x_test, y_test) or an image "
                        "folder DIR/train/<class>/; classes and input shape come from it (default: the recipe's "
                        "dataset)")
    t.add_argument("--normalization", default="auto", choices=["auto", "data", "keep"],
                   help="the model's Normalize: auto = the --init checkpoint's, else the statistics of --data's "
                        "training split; data = always those statistics; keep = the checkpoint's or the recipe's")
    t.add_argument("--data-root", help="folder with mnist.npz / cifar10.npz (default: $LIPZOO_DATA)")
    t.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    t.add_argument("--seed", type=int, default=0, help="seed of the initialisation, data order and augmentation")
    t.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    t.add_argument("--amp", action="store_true", help="bfloat16 autocast for the network (the bound stays float32)")
    t.add_argument("--compile", action="store_true", help="torch.compile the network's forward")
    t.add_argument("--time-budget", type=_budget_seconds, metavar="SECONDS",
                   help="wall-clock cap on the whole run (the final save excepted; a resumed run counts its earlier "
                        "sessions): a few steps are timed before the first epoch and the recipe is fitted to what "
                        "is left -- its warm-up, constant phase and decay scaled together, with shorter epochs when "
                        "fewer than 10 fit -- and every epoch re-checks the rate and shortens the rest if it dropped "
                        "(docs/training.md)")
    t.add_argument("--workers", type=int, default=0, help="data loader workers")
    t.add_argument("--max-steps", type=_positive_int, help="cap steps per epoch (smoke tests)")
    t.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(command="train")

    c = sub.add_parser("certify", help="certified and PGD accuracy with a guaranteed pairwise LipLT bound",
                       parents=[common], formatter_class=fmt)
    c.add_argument("model", help="zoo entry, checkpoint folder or Hub repo id")
    c.add_argument("--data", help="mnist, cifar10, tinyimagenet, a .npz path or an image folder (its test split; "
                                  "default: the model's dataset)")
    c.add_argument("--data-root", help="folder with the dataset files (default: $LIPZOO_DATA; MNIST test ships)")
    c.add_argument("--split", default="test", choices=["train", "test"], help="which split to certify on")
    c.add_argument("--eps", action="append", type=_eps,
                   help="radius in pixel units, e.g. 36/255 (repeatable; default: the model's)")
    c.add_argument("--limit", type=_positive_int, help="first N samples only (default: all)")
    c.add_argument("--batch-size", type=_positive_int, default=500, help="samples per batch")
    c.add_argument("--attack-steps", type=_positive_int, default=50, help="PGD steps")
    c.add_argument("--restarts", type=_positive_int, default=1, help="PGD random restarts")
    c.add_argument("--no-attack", action="store_true", help="certified and clean accuracy only (no PGD)")
    c.add_argument("--attack-all", action="store_true",
                   help="audit: also attack the points certified at eps (by default they are skipped, the "
                        "certificate proves them robust) and fail (exit 3) if one is broken")
    c.add_argument("--arithmetic", default="float64", choices=["float64", "float32", "bfloat16", "float16"],
                   help="the floating-point arithmetic the model is run in, which the certified radii hold for: they "
                        "subtract a proved bound on its rounding of every logit difference (docs/bounds.md). "
                        "float64: ~1e-8, the exact-arithmetic numbers; float32: its worst-case rounding costs "
                        "certified points (run your model in the dtype you certified it in)")
    c.add_argument("--compare", help="a second model drawn in the radius plot (e.g. a cross-entropy baseline)")
    _add_bound_options(c, "power is an estimate (reported as 'estimated')")
    c.add_argument("--method", default="liplt", choices=["liplt", "best"],
                   help="liplt, or best: the entrywise minimum of LipLT and the ECLipsE-style bound where it applies "
                        "(networks without skip connections, layers of at most 4096 units a side)")
    c.add_argument("--out", help="output folder (default: certify-<model>, one per model)")
    c.add_argument("--attach", action="store_true",
                   help="write the results into the checkpoint folder's config.json and card (checked by sha256)")
    c.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    c.add_argument("--threads", type=_positive_int,
                   help="CPU threads: torch's, and the attack's workers of one thread each (default: torch's "
                        "choice for torch, one attack worker per core left idle by the 1-minute load average)")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.set_defaults(command="certify")

    b = sub.add_parser("bounds", help="the paper's Table 2: mean L_ij, L_i+L_j, sqrt2*L, naive vs LipLT (and best)",
                       parents=[common], formatter_class=fmt)
    b.add_argument("model", help="zoo entry, checkpoint folder or Hub repo id")
    b.add_argument("--input-shape", type=_positive_int, nargs="+", help="C H W (default: the model's)")
    _add_bound_options(b, "power is an estimate")
    b.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")
    b.set_defaults(command="bounds")

    i = sub.add_parser("interop", help="convert a deel-torchlip / orthogonium network, bound it and compare with the "
                                        "peer's sqrt(2) x 1-Lipschitz rule (docs/interop.md)",
                       parents=[common], formatter_class=fmt)
    i.add_argument("model", help="a saved network: a pickled module (with --trust-pickle), a state dict (with "
                                 "--builder) or a lipzoo checkpoint folder")
    i.add_argument("--input-shape", type=_positive_int, nargs="+", required=True, metavar="N",
                   help="per-sample input shape, e.g. 1 28 28")
    i.add_argument("--trust-pickle", action="store_true",
                   help="load a whole pickled module (torch.load with weights_only=False runs code stored in the "
                        "file: only for files you trust)")
    i.add_argument("--builder", metavar="MODULE:FUNCTION",
                   help="load MODEL as a state dict into the network FUNCTION() builds (module:function or "
                        "path/to/file.py:function)")
    i.add_argument("--data", help="mnist, cifar10, a .npz path or an image folder: certify its split (default: "
                                  "bounds only)")
    i.add_argument("--data-root", help="folder with the dataset files (default: $LIPZOO_DATA; MNIST test ships)")
    i.add_argument("--split", default="test", choices=["train", "test"], help="which split to certify on")
    i.add_argument("--eps", action="append", type=_eps, help="radius in pixel units (repeatable; needed with --data)")
    i.add_argument("--limit", type=_positive_int, help="first N samples only (default: all)")
    i.add_argument("--batch-size", type=_positive_int, default=500, help="samples per batch")
    i.add_argument("--claim", action="append", metavar="PATH=VALUE",
                   help="the constant the peer claims for the layer at PATH (repeatable; default: 1, or "
                        "deel-torchlip's k_coef_lip), e.g. 0=3.2457 for an input normalisation by 1/std")
    i.add_argument("--bound-effort", type=_effort, default=None, metavar="LEVEL|UNITS",
                   help="work the guaranteed bound may spend tightening large operators exactly (default: medium)")
    i.add_argument("--max-dense", type=_positive_int, default=None,
                   help="materialize operators up to this side only (default: adaptive)")
    i.add_argument("--no-check", action="store_true",
                   help="skip check_lipschitz_state on the equivalents and the end-to-end comparison (the per-layer "
                        "probes that recognise each layer always run)")
    i.add_argument("--out", help="output folder (default: interop-<model file name>)")
    i.add_argument("--device", help="cpu, cuda, cuda:1 (default: cpu)")
    i.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's choice)")
    i.add_argument("--no-progress", action="store_true", help="no progress bars")
    i.set_defaults(command="interop")

    u = sub.add_parser("push", help="upload a checkpoint folder to the Hugging Face Hub", parents=[common],
                       formatter_class=fmt)
    u.add_argument("directory", help="a folder written by save_pretrained / lipzoo train")
    u.add_argument("--repo-id", required=True, help="owner/name on the Hub (created if needed)")
    u.add_argument("--token", help="Hub token (default: HF_TOKEN / the cached login)")
    u.add_argument("--revision", help="the Hub revision (branch) to commit to, created if needed (default: main)")
    u.add_argument("--private", action="store_true", help="create the repo as private")
    u.set_defaults(command="push")

    k = sub.add_parser("cache", help="where the bound cache is, what it holds; --clear empties it",
                       parents=[common], formatter_class=fmt)
    k.add_argument("--clear", action="store_true", help="remove every cached bound and certificate")
    k.set_defaults(command="cache")

    ls = sub.add_parser("list", help="architectures and pretrained entries with their measured certified accuracy",
                        parents=[common], formatter_class=fmt)
    ls.add_argument("pattern", nargs="?", help="fnmatch filter, e.g. 'crm-*' (default: everything)")
    ls.set_defaults(command="list")
    return p


# a ``lipzoo train`` override written as an option (``--recipe.epochs=5``) gets a hint
_OVERRIDE = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*=")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``lipzoo train``'s ``key=value`` overrides taken anywhere on it.

    argparse gives positionals after an option back as unknown; for ``train`` they join
    ``args.overrides`` in the order written (one that is not ``key=value`` is reported with the
    others by :func:`lipzoo.train.config.apply_overrides`); an unknown option is still an error.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    train = getattr(args, "command", None) == "train"
    rest = [a for a in extra if not train or a.startswith("-")]
    if rest:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub = commands.choices.get(args.command, parser)  # the subcommand's usage, not lipzoo's
        hint = ""
        if train and any(a.startswith("--") and _OVERRIDE.match(a[2:]) for a in rest):
            hint = " (overrides are written without dashes, e.g. recipe.epochs=5)"
        sub.error(f"unrecognized arguments: {' '.join(rest)}{hint}")
    if train:
        args.overrides = list(args.overrides) + extra
    return args
