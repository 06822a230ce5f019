"""Export a fine-tuned checkpoint as a model a user loads with the transformers Auto classes.

The folder gets `config.json` (with id2label/label2id), the weights, the tokenizer (its
`model_max_length` set to the `model.max_length` the model was trained with), a model card
`README.md` and `raytune_ft_export.json` (where it came from, its metrics). It is written to a
temporary folder beside `--out` and renamed into place, so a failed export leaves nothing.

Which checkpoint: by default the best recorded metric among the checkpoints kept by the trials
the ranking rule admits (finished, neither errored nor diverged; ties go to the better-ranked
trial); `--trial ID` the best kept one of that trial; `--confirmed` the end-of-budget
checkpoint of the best seed of the configuration with the best mean in confirm.parquet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from raytune_ft.config import DATA_SEARCH_PREFIX, MODEL_SEARCH_KEYS, TrainConfig
from raytune_ft.errors import ConfigError, ExperimentError
from raytune_ft.experiment import (
    EXPORT_RECORD,
    confirm_folder,
    confirm_summary,
    open_experiment,
    read_confirm_rows,
    trial_results,
)
from raytune_ft.schema import (
    ExperimentConfig,
    searches_model,
    trial_data,
    trial_hyperparameters,
    trial_model,
)
from raytune_ft.storage import atomic_write
from raytune_ft.tasks import Task, task_for
from raytune_ft.tuning.confirm import finished_trials

# The card's front matter in this order (ModelCardData's own puts base_model first).
CARD_FRONT_ORDER = ("library_name", "pipeline_tag", "tags", "base_model")


@dataclass
class Choice:
    """The checkpoint to export and what was recorded with it."""

    trial_id: str
    checkpoint: Path
    report: dict  # the result.json line reported with this checkpoint
    metric: str  # the experiment metric
    confirmed: dict = field(default_factory=dict)  # mean, sd, min, max, n over seeds


def kept_checkpoints(trial_folder: Path, reports: list[dict]) -> list[tuple[Path, dict]]:
    """(checkpoint folder, its result line) for every kept checkpoint holding weights."""
    by_name = {r["checkpoint_dir_name"]: r for r in reports if r.get("checkpoint_dir_name")}
    return [(path, by_name[path.name]) for path in sorted(trial_folder.glob("checkpoint_*"))
            if path.name in by_name and (path / "model.safetensors").is_file()]


def choose_checkpoint(directory: Path, config: ExperimentConfig, trial: str | None = None,
                      confirmed: bool = False) -> Choice:
    ranked = finished_trials(directory, config)  # refuses an experiment with none
    if confirmed:
        return _confirmed_choice(directory, config)
    results = trial_results(directory)
    if trial is not None:
        if trial not in results:
            raise ExperimentError(f"--trial: {trial!r} is not a trial of {directory} "
                                  f"(trials: {', '.join(sorted(results))})")
        candidates = [trial]
    else:
        candidates = [t for t in ranked["trial_id"] if t in results]
    kept = [(tid, path, report) for tid in candidates
            for path, report in kept_checkpoints(*results[tid])]
    kept = [k for k in kept if k[2].get(config.metric) is not None and not k[2].get("diverged")]
    if not kept:
        which = f"trial {trial}" if trial else "no finished trial"
        raise ExperimentError(f"{directory}: {which} kept a checkpoint (checkpoint_* folder "
                              "with model.safetensors and its reported result); nothing to "
                              "export")
    sign = 1 if config.mode == "max" else -1
    # max() keeps the first of equal values: the better-ranked trial, its earlier checkpoint
    tid, path, report = max(kept, key=lambda k: sign * k[2][config.metric])
    return Choice(tid, path, report, config.metric)


def _confirmed_choice(directory: Path, config: ExperimentConfig) -> Choice:
    rows = read_confirm_rows(directory)
    summary = confirm_summary(rows, config.mode)
    best = summary.iloc[0]
    if not best["n"]:
        raise ExperimentError(f"{directory}: no confirm run reached the end of its budget")
    runs = rows[(rows["config_rank"] == best["config_rank"]) & rows["metric"].notna()]
    runs = runs.sort_values("metric", ascending=config.mode == "min")
    confirm_dir = confirm_folder(directory, config.name)
    results = trial_results(confirm_dir) if confirm_dir.is_dir() else {}
    stats = {k: float(best[k]) for k in ("mean", "sd", "min", "max")}
    stats.update(n=int(best["n"]), config_rank=int(best["config_rank"]),
                 source_trial=str(best["trial_id"]), confirm_dir=str(confirm_dir))
    for _, run in runs.iterrows():
        if run["confirm_trial_id"] not in results:
            continue
        kept = kept_checkpoints(*results[run["confirm_trial_id"]])
        if kept:  # the end-of-budget checkpoint: the one with the most samples seen
            path, report = max(kept, key=lambda k: k[1].get("samples_seen", 0))
            return Choice(run["confirm_trial_id"], path, report, config.metric,
                          {**stats, "seed": int(run["seed"])})
    raise ExperimentError(f"{confirm_dir}: no checkpoint of configuration "
                          f"{int(best['config_rank'])} (trial {best['trial_id']}) is kept")


# ---------------------------------------------------------------------------- writing


def export_model(experiment_dir: str | Path, out: str | Path, trial: str | None = None,
                 confirmed: bool = False, overwrite: bool = False,
                 adapter: bool = False) -> tuple[Path, Choice]:
    """Write the chosen checkpoint to `out` as a transformers model folder; returns both.
    A LoRA trial's adapters are merged into the base (a plain transformers folder), or with
    `adapter` written alone, for `PeftModel.from_pretrained` over the base."""
    if trial is not None and confirmed:
        raise ConfigError("--trial and --confirmed: give one of them, not both")
    directory, config, record = open_experiment(experiment_dir)
    out = Path(out).expanduser().resolve()
    _check_out(out, overwrite)
    choice = choose_checkpoint(directory, config, trial, confirmed)
    # the trial's own model, max_length and data settings where the search varied them
    sampled = choice.report.get("config") or {}
    config = config.model_copy(update={"model": trial_model(config, sampled),
                                       "data": trial_data(config, sampled)})
    hp = trial_hyperparameters(config, _hyperparameters(choice))
    if adapter and not hp.lora_r:
        raise ConfigError(f"--adapter: trial {choice.trial_id} trained every weight (train."
                          "lora_r 0), it has no adapter; export it without --adapter")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as staging:  # an existing `out` goes once the new one is in place
        lora = _write_model(staging, choice, config, record, hp, adapter)
        _write_card(staging, choice, config, record, directory, lora)
    return out, choice


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_file():
        raise ExperimentError(f"--out: {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExperimentError(f"--out: {out} exists and is not empty; use --overwrite to "
                              "replace it")


def _write_model(staging: Path, choice: Choice, config: ExperimentConfig, record: dict,
                 hp: TrainConfig, adapter: bool) -> dict | None:
    """The model folder; returns the LoRA settings for the card (None: full fine-tuning)."""
    from safetensors.torch import load_model as load_weights

    from raytune_ft.training.lora import adapter_settings, apply_lora, load_trained_state
    from raytune_ft.training.model import resolve_model_path

    label_names = record.get("label_names")
    if label_names is None:  # a generating task has none ([]), a classifier its classes
        raise ExperimentError("raytune_ft.json holds no label_names; cannot name the labels")
    searched = record.get("model_paths") or {}  # model.name -> path, when it was searched
    model_path = searched.get(config.model.name) or (
        None if searched else record.get("model_path")) or resolve_model_path(config.model.name)
    task = task_for(config.data)
    model = task.load_model(model_path, label_names, seed=0)  # the head is overwritten next
    model = apply_lora(model, hp)  # unchanged without train.lora_r
    weights = str(choice.checkpoint / "model.safetensors")
    try:
        if hp.lora_r:
            from safetensors.torch import load_file

            missing, unexpected = load_trained_state(model, load_file(weights))
        else:
            missing, unexpected = load_weights(model, weights, strict=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file makes it unusable
        raise ExperimentError(f"checkpoint {choice.checkpoint} cannot be read: "
                              f"{type(error).__name__}: {error}") from None
    if missing or unexpected:
        raise ExperimentError(f"checkpoint {choice.checkpoint} does not match {model_path}: "
                              f"missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    lora = None
    if hp.lora_r:
        lora = {**adapter_settings(model), "lora_dropout": hp.lora_dropout,
                "lora_targets": hp.lora_targets, "form": "adapter" if adapter else "merged",
                "base": config.model.name, "base_path": model_path}
        if adapter:  # PeftModel.from_pretrained finds the base by this name
            model.peft_config["default"].base_model_name_or_path = model_path
        else:  # W + (alpha / r) B A in every adapted layer: a plain transformers model
            model = model.merge_and_unload()
    task.prepare_export(model, config)  # e.g. how a generating model generates
    model.save_pretrained(staging)
    if adapter and model.get_base_model().can_generate():
        # peft saves the adapters alone: how the tuned model generates goes beside them, and
        # the card loads the base with it
        model.get_base_model().generation_config.save_pretrained(staging)
        lora["generation_config"] = "generation_config.json"
    task.save_processor(model_path, str(staging), config.model.max_length)
    return lora


def _hyperparameters(choice: Choice) -> dict:
    """The train settings in force at the checkpoint (trainer_state.json), else its config."""
    try:
        state = json.loads((choice.checkpoint / "trainer_state.json").read_text())
        return state["hyperparameters"]
    except (OSError, KeyError, json.JSONDecodeError):
        return dict(choice.report.get("config", {}))


def _write_card(staging: Path, choice: Choice, config: ExperimentConfig, record: dict,
                directory: Path, lora: dict | None = None) -> None:
    hp = _hyperparameters(choice)
    hp.update({key: getattr(config.model, key.removeprefix("model."))
               for key in MODEL_SEARCH_KEYS if key in config.search})
    hp.update({key: getattr(config.data, key.removeprefix(DATA_SEARCH_PREFIX))
               for key in config.search if key.startswith(DATA_SEARCH_PREFIX)})
    report = choice.report
    metrics = {k: report[k] for k in (config.metric, *card_metrics(task_for(config.data)))
               if report.get(k) is not None}
    info = {"experiment": str(directory), "trial_id": choice.trial_id,
            "checkpoint": str(choice.checkpoint), "iteration": report.get("training_iteration"),
            "samples_seen": report.get("samples_seen"), "epoch": report.get("epoch"),
            "metric": config.metric, "mode": config.mode, "metrics": metrics,
            "hyperparameters": hp, "searched": sorted(config.search),
            "data": {"task": config.data.source, **data_sizes(config, record, report)},
            "confirmed": choice.confirmed or None, "lora": lora}
    (staging / EXPORT_RECORD).write_text(json.dumps(info, indent=1, default=str))
    (staging / "README.md").write_text(model_card(info, config, record))


def data_sizes(config: ExperimentConfig, record: dict, report: dict) -> dict:
    """The data's sizes for the card: its examples (questions, sentences, images) and,
    where a sample is a part of an example (question answering's windows), the samples: the
    trial's own training windows (its encoding's, where a search varied it: samples seen per
    epoch) and the eval windows where one encoding served every trial."""
    unit = task_for(config.data).samples_are
    fallback = {} if unit else record  # a record before the examples: its samples are them
    sizes = {"train_examples": record.get("train_examples", fallback.get("train_samples")),
             "eval_examples": record.get("eval_examples", fallback.get("eval_samples"))}
    if unit:
        searched = searches_model(config)
        seen, epoch = report.get("samples_seen"), report.get("epoch")
        sizes["samples_are"] = unit
        sizes["train_samples"] = (round(seen / epoch) if seen and epoch else
                                  None if searched else record.get("train_samples"))
        sizes["eval_samples"] = None if searched else record.get("eval_samples")
    return sizes


def card_metrics(task: Task) -> tuple[str, ...]:
    """The metrics a model card lists besides the experiment's: the task's, then eval_loss."""
    return (*(metric.name for metric in task.metrics), "eval_loss")


def model_card(info: dict, config: ExperimentConfig, record: dict) -> str:
    """A Hugging Face model card: what was trained on what, with which result."""
    from huggingface_hub import ModelCard, ModelCardData

    task = task_for(config.data)
    base = config.model.name
    hub_id = not Path(base).expanduser().exists() and not base.startswith((".", "/", "~"))
    card_data = ModelCardData(library_name="transformers", pipeline_tag=task.pipeline_tag,
                              tags=["raytune_ft", task.pipeline_tag],
                              base_model=base if hub_id else None)
    data = info["data"]
    sizes = ", ".join(f"{n if n is not None else 'unknown'} {what}" for n, what in
                      ((data["train_examples"], "train"), (data["eval_examples"], "dev/eval")))
    if data.get("samples_are"):  # windows: this trial's (its encoding's)
        samples = [f"{n} {what}" for n, what in ((data["train_samples"], "train"),
                                                  (data["eval_samples"], "dev/eval"))
                   if n is not None]
        sizes += f"; {data['samples_are']}: {', '.join(samples) or 'unknown'}"
    labels = ", ".join(f"{i}: {name}" for i, name in enumerate(record.get("label_names", [])))
    value = info["metrics"].get(config.metric)
    confirmed = info["confirmed"]
    source = f"the experiment `{config.name}`"
    if confirmed:  # a confirm run's trial: name it and the search trial it re-trained
        source = (f"the confirm run `{Path(confirmed['confirm_dir']).name}` (seed "
                  f"{confirmed['seed']}; search trial `{confirmed['source_trial']}` of "
                  f"`{config.name}` re-trained)")
    lines = ["", f"# {config.name}: {base} fine-tuned on {data['task']}", "",
             f"Fine-tuned by raytune_ft (a Ray Tune hyperparameter search) from `{base}`, "
             f"exported from trial `{info['trial_id']}` of {source} "
             f"(checkpoint `{Path(info['checkpoint']).name}`, iteration {info['iteration']}, "
             f"{info['samples_seen']} samples seen, epoch {info['epoch']:g}).", "",
             "## Data", "", f"- kind: `{task.name}` ({task.pipeline_tag})",
             f"- task: `{data['task']}`", f"- examples: {sizes}",
             *([f"- labels: {labels}"] if labels else []), *task.card_input(config), "",
             "## Result", "",
             f"- {config.metric} of this checkpoint on the dev/eval data: {value:.4f}"]
    lines += [f"- {k}: {v:.4f}" for k, v in info["metrics"].items() if k != config.metric]
    if confirmed:
        lines.append(f"- confirmed over {confirmed['n']} seeds, same configuration, full "
                     f"budget: {config.metric} {confirmed['mean']:.4f} ± {confirmed['sd']:.4f} "
                     f"(mean ± sample sd; min {confirmed['min']:.4f}, max "
                     f"{confirmed['max']:.4f}); this model is seed {confirmed['seed']}")
    lines += ["", "## Hyperparameters", "",
              "Searched settings are marked *; the values in force at this checkpoint.", "",
              "| setting | value |", "|---|---|"]
    searched = set(info["searched"])
    for key, val in sorted(info["hyperparameters"].items(), key=lambda kv: kv[0] not in searched):
        lines.append(f"| {key}{' *' if key in searched else ''} | {val} |")
    usage = task.card_usage(config)
    if info.get("lora"):
        lines += lora_card_lines(info["lora"])
        if info["lora"]["form"] == "adapter":
            usage = adapter_usage(task, record.get("label_names", []), info["lora"], usage)
    lines += ["", "## Use", "", "```python", *usage, "```", ""]
    front = card_data.to_yaml(original_order=list(CARD_FRONT_ORDER))
    return str(ModelCard(f"---\n{front}\n---\n" + "\n".join(lines)))


def lora_card_lines(lora: dict) -> list[str]:
    """The card's LoRA section: base, rank, alpha, targets, and what this folder holds."""
    targets = lora["target_modules"]
    leaves = sorted({name.rsplit(".", 1)[-1] for name in targets})
    form = ("the adapters merged into the base: a plain transformers model, peft not needed"
            if lora["form"] == "merged" else "the adapters and the task head only: load them "
            "over the base model with peft (below)")
    return ["", "## LoRA", "", f"- base model: `{lora['base']}` (frozen; `{lora['base_path']}`)",
            f"- rank r: {lora['lora_r']}, alpha: {lora['lora_alpha']:g} (update scale alpha/r "
            f"= {lora['lora_alpha'] / lora['lora_r']:g}), dropout: {lora['lora_dropout']:g}",
            f"- targets (`{lora['lora_targets']}`): {len(targets)} linear layers named "
            f"{', '.join(leaves)} in the encoder",
            f"- trained in full: {', '.join(lora['modules_to_save'])}",
            f"- this folder: {form}"]


def adapter_usage(task: Task, label_names: list[str], lora: dict, usage: list[str]
                  ) -> list[str]:
    """The card's `usage` lines with the model loaded as the base plus this adapter."""
    labels = dict(enumerate(label_names))
    # a classifier's base takes its labels; a generator has none, and generates as this
    # folder's generation config says, not as its base
    extra = f", num_labels={len(labels)}, id2label={labels}" if labels else ""
    lines = ["from peft import PeftModel"]
    if lora.get("generation_config"):
        lines.append("from transformers import GenerationConfig")
        extra += ', generation_config=GenerationConfig.from_pretrained("<this folder>")'
    for line in usage:
        if line.startswith("model = "):
            lines += [f'base = {task.auto_class}.from_pretrained("{lora["base_path"]}"{extra})',
                      'model = PeftModel.from_pretrained(base, "<this folder>")']
        else:
            lines.append(line)
    return lines


def summary_line(choice: Choice) -> str:
    metric = choice.metric
    value = choice.report.get(metric)
    text = f"{metric}={value:.4f}" if value is not None else f"{metric}=n/a"
    if choice.confirmed:
        c = choice.confirmed
        text += f" (configuration mean {c['mean']:.4f} ± {c['sd']:.4f} over {c['n']} seeds)"
    return text
