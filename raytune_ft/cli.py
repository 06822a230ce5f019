"""`raytune-ft`: argument parsing, printing what the runner returns, exit codes.

Exit codes (raytune_ft.errors): 0 success, 1 every trial failed (or a command failed at run
time), 2 bad input (one line, no traceback; `--debug` shows it), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from raytune_ft.errors import (
    EXIT_BAD_INPUT,  # noqa: F401 - tests and callers read the codes here
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    RaytuneFtError,
    error_line,
    exit_code,
)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (RaytuneFtError, KeyboardInterrupt) as error:
        if args.debug and isinstance(error, RaytuneFtError):
            traceback.print_exc()
        print(error_line(error), file=sys.stderr)
        return exit_code(error)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raytune-ft", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True)

    tune = commands.add_parser("tune", help="run an experiment")
    _experiment_args(tune)
    tune.add_argument("--address", help="join a running Ray cluster: auto, HOST:PORT, or "
                      "ray://HOST:PORT (Ray Client; storage must then be a URI)")
    tune.add_argument("--overwrite", action="store_true", help="replace an existing experiment")
    tune.set_defaults(handler=_tune)

    validate = commands.add_parser("validate", help="check an experiment without training")
    _experiment_args(validate)
    validate.add_argument("--address", help="the run will join this cluster: resources are "
                          "checked there, not against this machine")
    validate.add_argument("--overwrite", action="store_true",
                          help="the run will replace an existing experiment")
    validate.set_defaults(handler=_validate)

    resume = commands.add_parser("resume", help="continue an interrupted experiment, then "
                                 "export its analysis tables and report")
    resume.add_argument("experiment_dir", help="<storage_path>/<name>: a path or a URI")
    resume.add_argument("--address", help="join a running Ray cluster: auto, HOST:PORT or "
                        "ray://HOST:PORT")
    resume.set_defaults(handler=_resume)

    replay = commands.add_parser("replay", help="re-run a PBT trial's schedule from scratch")
    replay.add_argument("experiment_dir")
    replay.add_argument("--trial", help="trial id (default: the best trial)")
    replay.add_argument("--address")
    replay.set_defaults(handler=_replay)

    confirm = commands.add_parser("confirm", help="re-train the best configurations with new "
                                  "seeds: mean and sd per configuration")
    confirm.add_argument("experiment_dir")
    confirm.add_argument("--top", type=int, default=3, help="configurations (default 3)")
    confirm.add_argument("--seeds", type=int, default=3, help="new seeds each (default 3)")
    confirm.add_argument("--address")
    confirm.set_defaults(handler=_confirm)

    export = commands.add_parser("export", help="write a checkpoint as a transformers model")
    export.add_argument("experiment_dir")
    export.add_argument("--out", required=True, help="model folder to write")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--trial", help="this trial's best kept checkpoint")
    which.add_argument("--confirmed", action="store_true",
                       help="the best configuration of `raytune-ft confirm`")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    export.add_argument("--adapter", action="store_true",
                        help="a LoRA trial: write the adapter only (PeftModel.from_pretrained "
                             "over the base), not the merged model")
    export.set_defaults(handler=_export)

    from raytune_ft.analysis.__main__ import add_commands

    add_commands(commands)  # analyze, compare, report
    return parser


def _experiment_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a setting, e.g. train.max_epochs=1")
    parser.add_argument("--warm-start", dest="warm_start", nargs="+", default=[],
                        metavar="DIR", help="earlier experiments whose finished trials the "
                        "searcher learns from first (same searched keys)")


def _prepare(args):
    """Load, validate and prepare the experiment file: every check that needs no Ray."""
    from raytune_ft.schema import load_config
    from raytune_ft.tuning.runner import prepare

    config = load_config(args.experiment, args.overrides)  # errors start with the file
    try:
        prepared = prepare(config, overwrite=args.overwrite, address=args.address)
        if args.warm_start:
            from raytune_ft.tuning.warm_start import load_observations

            prepared.observations = load_observations(config, args.warm_start)
        return prepared
    except RaytuneFtError as error:
        raise type(error)(f"{args.experiment}: {error}") from error


def _validate(args) -> int:
    prepared = _prepare(args)
    _print_header(prepared)
    print("ok: the experiment is valid")
    return EXIT_OK


def _tune(args) -> int:
    from raytune_ft.tuning.runner import run_experiment

    prepared = _prepare(args)
    _print_header(prepared)
    try:
        summary = run_experiment(prepared, address=args.address, overwrite=args.overwrite)
    except KeyboardInterrupt:
        return _interrupted(prepared.experiment_dir)
    return _finish(summary)


def _resume(args) -> int:
    from raytune_ft.tuning.runner import resume_experiment

    try:
        summary = resume_experiment(args.experiment_dir, address=args.address)
    except KeyboardInterrupt:
        return _interrupted(args.experiment_dir)
    return _finish(summary)


def _replay(args) -> int:
    from raytune_ft.tuning.replay import replay_trial

    summary, trial_id = replay_trial(args.experiment_dir, args.trial, address=args.address)
    print(f"replayed     trial {trial_id} of {args.experiment_dir}")
    return _finish(summary)


def _confirm(args) -> int:
    from raytune_ft.tuning.confirm import confirm_experiment

    try:
        done = confirm_experiment(args.experiment_dir, args.top, args.seeds, args.address)
    except KeyboardInterrupt:
        done = None
    if done is None or done.interrupted:
        print("interrupted: no confirm.parquet written; run `raytune-ft confirm` again",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    rows, metric = done.rows, done.metric
    print(f"confirmed    {done.summary.shape[0]} configurations x {args.seeds} seeds "
          f"(seeds {sorted(rows['seed'].tolist())}) in {done.confirm_dir}")
    print(f"summary      {metric} at the end of the budget; sd is the sample sd (ddof=1)")
    for s in done.summary.itertuples():
        print(f"  rank {s.rank}  config {s.config_rank}  trial {s.trial_id}  mean {s.mean:.6f}  "
              f"sd {s.sd:.6f}  min {s.min:.6f}  max {s.max:.6f}  n {s.n}  "
              f"search {s.search_metric:.6f}")
    print(f"rows         {done.parquet}")
    return EXIT_OK if rows["metric"].notna().any() else EXIT_FAILED


def _export(args) -> int:
    from raytune_ft.model_export import export_model, summary_line

    out, choice = export_model(args.experiment_dir, args.out, trial=args.trial,
                               confirmed=args.confirmed, overwrite=args.overwrite,
                               adapter=args.adapter)
    print(f"exported     trial {choice.trial_id} {choice.checkpoint.name}: "
          f"{summary_line(choice)}")
    print(f"model        {out}")
    return EXIT_OK


def _interrupted(experiment_dir: str) -> int:
    print(f"interrupted: trials stopped at their last checkpoint; continue with "
          f"`raytune-ft resume {experiment_dir}`", file=sys.stderr)
    return EXIT_INTERRUPTED


def _print_header(prepared) -> None:
    config, bundle, plan = prepared.config, prepared.bundle, prepared.plan
    print(f"experiment   {config.name} -> {prepared.experiment_dir}")
    if "model.name" in config.search:  # each trial's model is its config's
        print(f"model        searched: {', '.join(prepared.models.paths)}")
    else:
        print(f"model        {config.model.name} ({prepared.model_path})")
    labels = f", {len(bundle.label_names)} labels" if bundle.label_names else ""
    print(f"data         {bundle.task}: {len(bundle.train)} train, {len(bundle.eval)} eval"
          f"{labels}")
    for name, text in prepared.about_data:
        print(f"{name:<12} {text}")
    others = "".join(f", {b.total_samples}" for b in plan.other_budgets)
    print(f"budget       {plan.budget.total_samples}{others} samples per trial "
          f"({plan.max_epochs:g} epochs{', by tokenization' if others else ''}), "
          f"{plan.iterations} evaluations of {plan.eval_every_epochs:g} epoch")
    print(f"batch        effective {_batch_text(plan)}")
    if config.resources.workers_per_trial > 1:
        print(f"workers      {_workers_text(config, plan)}")
    res = config.resources
    workers = "" if res.workers_per_trial == 1 else (
        f" ({res.workers_per_trial} data-parallel workers of {res.worker_cpus:g} CPU, "
        f"{res.worker_gpus:g} GPU, placement {res.placement})")
    print(f"resources    {res.workers_per_trial * res.worker_cpus:g} CPU, "
          f"{res.workers_per_trial * res.worker_gpus:g} GPU per trial{workers}; "
          f"{config.run.num_samples} trials")
    print(f"scheduler    {config.scheduler.type}; search {_search_text(config)}; "
          f"{config.metric} ({config.mode})")
    if prepared.cluster is not None:
        print(f"cluster      {prepared.cluster}")
    if config.objectives:
        goals = ", ".join(f"{o.metric} ({o.mode})" for o in config.objectives)
        print(f"objectives   {goals}; {_watched(config)}")
    if config.search_alg.points_to_evaluate:
        print(f"  start      {len(config.search_alg.points_to_evaluate)} points first")
    seen = prepared.observations
    if seen is not None:
        skipped = sum(s["skipped"] for s in seen.record())
        print(f"warm start   {len(seen.points)} of {len(seen.points) + skipped} trials "
              f"imported from {len(seen.sources)} experiment"
              f"{'s' if len(seen.sources) > 1 else ''} ({', '.join(seen.sources)})"
              + (f"; skipped: {seen.skip_text()}" if skipped else ""))
        if len(seen.sources) > 1:
            for i, source in enumerate(seen.record()):
                why = f" (skipped: {seen.skip_text(i)})" if source["skipped"] else ""
                print(f"  from       {source['experiment']}: {source['trials']} trials{why}")
    stop = config.run.stop
    if stop.any:
        print(f"stop rules   {_stop_text(stop)} (on {config.metric})")
    for key, spec in (config.search or {}).items():
        print(f"  search     {key}: {spec}")
    if config.tracking.enabled():
        from raytune_ft.tracking import tracking_header

        print(f"tracking     {tracking_header(config.tracking)}")
    for warning in prepared.warnings:
        print(f"warning: {warning}")


def _search_text(config) -> str:
    alg = config.search_alg
    if alg.type != "optuna":
        return alg.type
    sampler = alg.sampler or "tpe"
    multivariate = " multivariate" if sampler == "tpe" and alg.multivariate is not False else ""
    return f"optuna {sampler}{multivariate} (seed {alg.seed})"


def _watched(config) -> str:
    """Who optimises which objective: the searcher all, schedulers and stop rules the first."""
    searcher = ("the searcher optimises all" if config.search_alg.type == "optuna"
                else f"search {config.search_alg.type} weighs none")
    return (f"{searcher}; scheduler {config.scheduler.type}, stop rules and the best trial "
            f"use the first ({config.metric}); analysis marks the Pareto front")


def _stop_text(stop) -> str:
    parts = []
    if stop.plateau is not None:
        parts.append(f"plateau (patience {stop.plateau.patience} finished trials, "
                     f"min_delta {stop.plateau.min_delta:g})")
    if stop.max_device_hours is not None:
        parts.append(f"max_device_hours {stop.max_device_hours:g}")
    if stop.target is not None:
        parts.append(f"target {stop.target:g}")
    return ", ".join(parts)


def _batch_text(plan) -> str:
    """Every effective batch a trial can train with, with its gradient accumulation."""
    smallest, largest = plan.micro_batch
    parts = []
    for option in plan.batches:
        if not option.phased:
            name = "" if len(plan.batches) == 1 else "no schedule: "
        else:
            name = f"schedule {option.schedule}: " if option.schedule else "schedule: "
        texts = []
        for span in option.spans:
            text = (f"{_range(span.low, span.high)} (accumulation {_range(*span.accumulation)} x "
                    f"<= {_range(smallest, largest)})")
            texts.append(text if span.start is None else f"{text} from progress {span.start:g}")
        parts.append(name + ", ".join(texts))
    return "; ".join(parts)


def _workers_text(config, plan) -> str:
    """What each worker of a data-parallel trial trains of a batch: its share, accumulated."""
    from raytune_ft.plan import accumulation_steps

    workers, micro = config.resources.workers_per_trial, plan.micro_batch[1]
    high = max(span.high for option in plan.batches for span in option.spans)
    share = -(-high // workers)
    return (f"{workers} per trial; each trains its share of every batch (at most {share} "
            f"samples of {high}, accumulation {accumulation_steps(share, micro)} x <= "
            f"{micro}) and the gradients are summed before each step")


def _range(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}..{high}"


def _finish(summary) -> int:
    """Print what a run came to (`tuning.summary.RunSummary`); the exit code says whether any
    trial worked."""
    print(f"trials       {summary.trials} run, {len(summary.failed)} failed, "
          f"{summary.diverged} diverged")
    if summary.stopped_by is not None:
        print(f"stopped by   {summary.stopped_by['rule']}: {summary.stopped_by['detail']}")
    for path, error in summary.failed:
        print(f"  failed     {path}: {error}")
    if summary.report is not None:
        print(f"report       {summary.report}")
    else:
        print(f"warning: {summary.export_warning}", file=sys.stderr)
    for line in summary.not_logged:  # a tracker that failed; the run itself went on
        print(f"warning: tracking: {line}", file=sys.stderr)
    if summary.interrupted:
        return _interrupted(summary.experiment_dir)
    if summary.every_trial_failed:
        print(f"error: every trial failed; first error: {summary.first_error}",
              file=sys.stderr)
        return EXIT_FAILED
    best = summary.best
    if best is None:
        print(f"best         {summary.no_best}")
        return EXIT_OK
    print(f"best         {best.metric}={best.value:.4f} {best.searched}")
    print(f"results      {summary.experiment_dir}")
    return EXIT_OK


def run() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())


if __name__ == "__main__":
    run()
