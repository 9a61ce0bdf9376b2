"""The model card (``README.md``) of a lipzoo checkpoint, rendered from its ``config.json``.

Every number in the card comes from the config (measured) or the ``card`` dict (the paper's
numbers); nothing is typed by hand. Accuracies are fractions in ``[0, 1]`` (as ``lipzoo.certify``
reports them) and shown as percentages.
"""

from __future__ import annotations

import shlex
from typing import Any, Mapping

import yaml

from lipzoo.meta import DATASETS, Eps, Results, parse_eps

__all__ = ["render_card", "certify_command", "attach_command", "metric_table"]

_ACCURACY_KINDS = ("clean", "pgd", "certified")
_DATA_PLACEHOLDER = "path/to/the/data"
_CITATION = """@inproceedings{fazlyab2023certified,
  title     = {Certified Robustness via Dynamic Margin Maximization and Improved Lipschitz Regularization},
  author    = {Fazlyab, Mahyar and Entesari, Taha and Roy, Aniket and Chellappa, Rama},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2023}
}"""


def certify_command(config: Mapping[str, Any], target: str) -> str:
    """The ``lipzoo certify`` command line that reproduces a checkpoint's certified numbers.

    It names the data the numbers were measured on when that is not the model's known dataset
    (``--data``), every radius the card shows (one ``--eps`` each: the config's and any other
    measured), and the attack, arithmetic and bound settings of the measurement.

    Args:
        config: the checkpoint's config (uses ``eps``, ``dataset`` and ``metrics``).
        target: what ``lipzoo certify`` loads: a zoo name, a Hub repo id or a directory.

    Returns:
        A shell-quoted command, e.g. ``lipzoo certify crm-cifar10-6c2f --eps 36/255``.
    """
    found = config.get("metrics")
    metrics: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    parts = ["lipzoo", "certify", target, *_data_flags(config), *_eps_flags(config)]
    attack = metrics.get("attack")
    attack = attack if attack is not None else config.get("certify_attack")
    if isinstance(attack, Mapping):
        parts += ["--attack-steps", str(attack.get("steps", 50)), "--restarts", str(attack.get("restarts", 1))]
    arithmetic = metrics.get("arithmetic")
    if arithmetic and arithmetic != "float64":  # the command line's default
        parts += ["--arithmetic", str(arithmetic)]
    parts += _bound_flags(metrics.get("bound"))
    return shlex.join(parts)


def attach_command(config: Mapping[str, Any], target: str) -> str:
    """The ``lipzoo certify ... --attach`` command that measures an uncertified checkpoint's numbers
    and writes them into its folder (its data and radii as in :func:`certify_command`)."""
    return shlex.join(["lipzoo", "certify", target, *_data_flags(config), *_eps_flags(config), "--attach"])


def _data_flags(config: Mapping[str, Any]) -> list[str]:
    """``--data X`` when ``lipzoo certify`` would not find the data by itself: the numbers were measured
    on other data (``metrics.data``), or the model's dataset is the user's own file or folder."""
    found = config.get("metrics")
    metrics: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    data = metrics.get("data") or config.get("dataset")
    if data is None:  # e.g. a new classifier on an unnamed task: the user has to say which data
        return ["--data", _DATA_PLACEHOLDER]
    return [] if data == config.get("dataset") and data in DATASETS else ["--data", str(data)]


def _eps_flags(config: Mapping[str, Any]) -> list[str]:
    """One ``--eps`` per radius of the card: the config's ε, then any other ε measured (by value)."""
    eps_list = [str(e) for e in config.get("eps") or (config.get("certify") or {}).get("eps") or []]
    metrics = config.get("metrics")
    return [flag for eps in metric_table(metrics or None, eps_list) for flag in ("--eps", eps)]


def _bound_flags(bound: Any) -> list[str]:
    """The bound's settings as ``lipzoo certify`` options: its effort when not the default (a record of lipzoo
    before 0.2 names a seconds budget instead, which no longer exists: the default effort applies)."""
    if isinstance(bound, Mapping) and bound.get("effort") not in (None, "medium"):
        effort = bound["effort"]
        return ["--bound-effort", effort if isinstance(effort, str) else f"{float(effort):g}"]
    return []


def metric_table(metrics: Mapping[str, Any] | None, eps_list: list[str]) -> dict[str, dict[str, Any]]:
    """Rows of ``clean`` and per-ε ``pgd`` / ``certified`` accuracies.

    ``metrics`` is a checkpoint's ``metrics`` (``{"clean", "eps": {"36/255": {...}}}``) or the flat
    layout of ``lipzoo certify`` (``certified@36/255``); ε are matched by exact value, so ``"1.58"``
    and ``"79/50"`` are the same row.

    Args:
        metrics: the numbers (may be ``None``).
        eps_list: the ε values (strings) that get a row, in order; other ε found in ``metrics`` are appended.

    Returns:
        ``{eps_string: {"clean": v, "pgd": v, "certified": v}}`` with missing values as ``None``.
    """
    rows: dict[Eps, str] = {}
    for given in eps_list:
        rows.setdefault(parse_eps(str(given)), str(given))
    if not metrics:
        return {text: {"clean": None, "pgd": None, "certified": None} for text in rows.values()}
    # the owner does not matter for display; Results.parse checks the layout and the values
    results = Results.parse(metrics, metrics.get("sha256") or "0" * 64)
    for eps in results.per_eps:
        rows.setdefault(eps, eps.text)
    return {text: {"clean": results.clean, "pgd": results.at(eps).pgd, "certified": results.at(eps).certified}
            for eps, text in rows.items()}


def _percent(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.2f}"


def _duration(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        minutes, seconds = divmod(int(round(value)), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours}h {minutes:02d}m {seconds:02d}s"
    return str(value)


def _front_matter(config: Mapping[str, Any], card: Mapping[str, Any]) -> str:
    tags = ["lipzoo", "certified-robustness", "lipschitz", "pytorch", "safetensors"]
    for extra in (config.get("dataset"), config.get("architecture"), *card.get("tags", [])):
        if extra and str(extra) not in tags:
            tags.append(str(extra))
    meta: dict[str, Any] = {"library_name": "lipzoo", "license": card.get("license", "mit"), "tags": tags}
    if config.get("dataset"):
        meta["datasets"] = [str(config["dataset"])]
    meta["metrics"] = ["accuracy"]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _results(config: Mapping[str, Any], card: Mapping[str, Any], target: str) -> list[str]:
    eps_list = [str(e) for e in config.get("eps") or []]
    metrics = config.get("metrics")
    lines = ["## Results", ""]
    if not metrics:
        lines += ["Not certified yet: no numbers have been measured on these weights. Certify them and attach "
                  "the report to this folder:", "", "```bash", attach_command(config, target), "```",
                  *_data_note(config)]
        return lines
    ours = metric_table(metrics, eps_list)
    paper = metric_table(card["paper_metrics"], list(ours)) if card.get("paper_metrics") else None
    header = "| ε (ℓ2, pixels in [0, 1]) | clean | PGD | certified |"
    rule = "|---|---|---|---|"
    if paper is not None:
        header += " paper clean | paper PGD | paper certified |"
        rule += "---|---|---|"
    n = metrics.get("num_test_samples")
    data = f" of `{metrics['data']}`" if metrics.get("data") else ""
    arithmetic = metrics.get("arithmetic")
    held = (f" Certified radii hold for the model evaluated in `{arithmetic}` arithmetic: they subtract a proved bound "
            "on its rounding of the logits (lipzoo's docs/bounds.md, \"What certified means in floating point\")."
            if arithmetic else "")
    lines += [f"Accuracy (%) on {f'{n} images of ' if n else ''}the test set{data}, measured on these weights "
              f"(`model.safetensors` sha256 `{metrics.get('sha256', config.get('sha256'))}`).{held}", "", header, rule]
    for eps, row in ours.items():
        line = f"| {eps} | " + " | ".join(_percent(row[k]) for k in _ACCURACY_KINDS) + " |"
        if paper is not None:
            line += " " + " | ".join(_percent(paper[eps][k]) for k in _ACCURACY_KINDS) + " |"
        lines.append(line)
    if paper is not None and card.get("paper_source"):
        lines += ["", f"Paper numbers: {card['paper_source']}."]
    for note in card.get("notes") or []:  # e.g. why a re-measured figure changed
        lines += ["", f"Note: {note}"]
    lines += ["", "## Reproduce the certified numbers", "", "```bash", certify_command(config, target), "```",
              *_data_note(config)]
    return lines


def _data_note(config: Mapping[str, Any]) -> list[str]:
    """Under a command whose ``--data`` names a file or folder (recorded by its name): where it comes from."""
    flags = _data_flags(config)
    if not flags or flags[1] in DATASETS:
        return []
    if flags[1] == _DATA_PLACEHOLDER:
        return ["", "These weights record no dataset: give `--data` the test data of their task."]
    return ["", f"`--data {shlex.quote(flags[1])}` is the data the run used, recorded by its name: give its path on "
                "your machine."]


def _bound(config: Mapping[str, Any]) -> list[str]:
    metrics = config.get("metrics") or {}
    bound = metrics.get("bound")  # part of the results: shown only with numbers measured on these weights
    if not bound:
        return []
    lines = ["## Lipschitz bound", ""]
    for key in ("method", "mode", "guarantee", "effort", "mean", "max", "failure_probability"):
        if key in bound:
            lines.append(f"- {key}: `{bound[key]}`")
    if "pairwise_mean" in bound:
        lines.append(f"- mean L_ij (i != j): `{bound['pairwise_mean']!r}`, the `liplt` row of `lipzoo bounds` "
                     "on these weights")
    if "values" in bound or "value" in bound:
        lines.append("- values: stored in `config.json` (`metrics.bound.value`)")
    if bound.get("certificate"):
        lines.append(f"- certificate: `{bound['certificate']}` beside the weights: the certified operator norms this "
                     "bound was computed from, checked and used by `lipzoo bounds` / `lipzoo certify` "
                     "(`--recompute` computes from scratch; the format is lipzoo's docs/certificate-format.md)")
    return lines


def _pick(card: Mapping[str, Any], key: str, *fallbacks: Any) -> Any:
    """``card[key]`` if given, else the first fallback that is not ``None``."""
    if card.get(key) is not None:
        return card[key]
    return next((f for f in fallbacks if f is not None), None)


def _training(config: Mapping[str, Any], card: Mapping[str, Any]) -> list[str]:
    # what lipzoo.train records in config["training"]; the card dict may override it
    training = config.get("training") or {}
    recipe = _pick(card, "recipe", config.get("recipe"))
    epochs = _pick(card, "epochs", training.get("epochs_trained"), (config.get("metrics") or {}).get("epochs_trained"))
    hardware = _pick(card, "hardware", training.get("hardware"))
    seconds = _pick(card, "training_time", training.get("seconds_total"))
    lines = ["## Training", ""]
    if epochs is not None:
        planned = recipe.get("epochs") if isinstance(recipe, Mapping) else None
        lines.append(f"- epochs actually trained: {epochs}" + (f" (recipe: {planned})" if planned else ""))
    if hardware is not None:
        lines.append(f"- hardware: {hardware}")
    if seconds is not None:
        lines.append(f"- training time: {_duration(seconds)}")
    if recipe:
        lines += ["", "Recipe:", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```"]
    return lines if len(lines) > 2 else []


def _checkpoint(config: Mapping[str, Any]) -> list[str]:
    lines = ["## Checkpoint", "",
             f"- architecture: `{config.get('architecture')}`, model_args: `{config.get('model_args', {})}`",
             f"- input shape: `{config.get('input_shape')}`, classes: {config.get('num_classes')}",
             f"- normalization (inside the model; feed pixels in [0, 1]): `{config.get('normalization')}`",
             f"- `model.safetensors` sha256: `{config.get('sha256')}`",
             f"- storage dtype: {config.get('storage_dtype')}, lipzoo version: {config.get('lipzoo_version')}"]
    if config.get("storage_dtype") not in (None, "float32") and config.get("metrics"):
        if (config.get("metrics") or {}).get("measured_on_stored_weights", True):
            lines.append(f"- weights are stored in {config['storage_dtype']} and loaded as float32; the numbers "
                         "above were measured on exactly these stored weights")
        else:
            lines.append(f"- weights are stored in {config['storage_dtype']} and loaded as float32: re-run "
                         "`lipzoo certify` before relying on the numbers above for these exact weights")
    return lines


def render_card(config: Mapping[str, Any], card: Mapping[str, Any] | None = None) -> str:
    """Render a checkpoint's model card (Markdown with YAML front matter for the Hub).

    Results appear only when ``config["metrics"]`` holds numbers (which ``lipzoo.hub`` keeps only
    for the weights they were measured on); a ``parent`` is named, never its numbers.

    Args:
        config: the checkpoint config as written to ``config.json``.
        card: optional extras: ``title``, ``description``, ``license``, ``tags``, ``target``
            (what ``lipzoo certify`` should load; default the config's ``name``),
            ``paper_metrics`` (the paper's accuracies as fractions, flat ``certify`` layout),
            ``paper_source`` (where they come from, e.g. "Table 1"), ``notes`` (sentences shown under the
            results, e.g. why a re-measured figure changed), and overrides of what
            ``config["recipe"]`` / ``config["training"]`` say: ``recipe``, ``epochs``, ``hardware``,
            ``training_time`` (seconds or text).

    Returns:
        The card text.
    """
    card = dict(card or {})
    title = card.get("title") or config.get("name") or f"lipzoo {config.get('architecture')}"
    target = card.get("target") or config.get("name") or "path/to/this/checkpoint"
    intro = [f"# {title}", "", card.get("description") or
             f"A certifiably robust `{config.get('architecture')}` classifier for `{config.get('dataset')}` "
             "(ℓ2 threat model), trained with lipzoo."]
    parent = config.get("parent")
    if parent:
        who = f"`{parent['name']}`" if parent.get("name") else "another checkpoint"
        sha = f" (sha256 `{parent['sha256']}`)" if parent.get("sha256") else ""
        intro += ["", f"Derived from {who}{sha}: its certificate and measured numbers do not apply to these weights."]
    sections = [intro, _results(config, card, target), _bound(config), _training(config, card), _checkpoint(config),
                ["## Citation", "", "```bibtex", _CITATION, "```"]]
    body = "\n\n".join("\n".join(sec) for sec in sections if sec)
    return _front_matter(config, card) + "\n" + body + "\n"
