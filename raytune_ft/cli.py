"""`raytune-ft`: argument parsing and exit codes only.

Exit codes: 0 success, 1 every trial failed (or a command failed at run time), 2 bad input
(one line, no traceback; `--debug` shows it), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from raytune_ft.errors import RaytuneFtError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except RaytuneFtError as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raytune-ft", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True)

    tune = commands.add_parser("tune", help="run an experiment")
    _experiment_args(tune)
    tune.add_argument("--address", help="join a Ray cluster: auto, HOST:PORT or ray://HOST:PORT")
    tune.add_argument("--overwrite", action="store_true", help="replace an existing experiment")
    tune.set_defaults(handler=_tune)

    validate = commands.add_parser("validate", help="check an experiment without training")
    _experiment_args(validate)
    validate.set_defaults(handler=_validate)

    resume = commands.add_parser("resume", help="continue an interrupted experiment")
    resume.add_argument("experiment_dir")
    resume.add_argument("--address")
    resume.set_defaults(handler=_resume)
    return parser


def _experiment_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a setting, e.g. train.max_epochs=1")


def _load(args):
    from raytune_ft.config import load_config

    return load_config(args.experiment, args.overrides)


def _validate(args) -> int:
    from raytune_ft.runner import prepare

    prepared = prepare(_load(args), overwrite=True)
    _print_header(prepared)
    print("ok: the experiment is valid")
    return EXIT_OK


def _tune(args) -> int:
    from raytune_ft.runner import prepare, run_experiment

    prepared = prepare(_load(args), overwrite=args.overwrite)
    _print_header(prepared)
    results = run_experiment(prepared, address=args.address, overwrite=args.overwrite)
    return _finish(results, prepared)


def _resume(args) -> int:
    from raytune_ft.runner import resume_experiment

    results, prepared = resume_experiment(args.experiment_dir, address=args.address)
    return _finish(results, prepared)


def _print_header(prepared) -> None:
    from raytune_ft.runner import accumulation_steps

    config, bundle = prepared.config, prepared.bundle
    train = config.train
    space = config.search or {}
    sizes = sorted({v for d in config.space().values() if d.kind in ("choice", "grid")
                    for v in d.args if isinstance(v, int)} if "batch_size" in space else
                   {train.batch_size})
    batches = ", ".join(f"{b} (accumulation {accumulation_steps(b, train.max_micro_batch)} x "
                        f"<= {train.max_micro_batch})" for b in sizes)
    budget = round(train.max_epochs * len(bundle.train))
    print(f"experiment   {config.name} -> {prepared.experiment_dir}")
    print(f"model        {config.model.name} ({prepared.model_path})")
    print(f"data         {bundle.task}: {len(bundle.train)} train, {len(bundle.eval)} eval, "
          f"labels {bundle.label_names}")
    print(f"budget       {budget} samples per trial ({train.max_epochs:g} epochs), "
          f"{config.iterations} evaluations of {train.eval_every_epochs:g} epoch")
    print(f"batch        effective {batches}")
    print(f"resources    {config.resources.cpus_per_trial:g} CPU, "
          f"{config.resources.gpus_per_trial:g} GPU per trial; {config.run.num_samples} trials")
    print(f"scheduler    {config.scheduler.type}; search {config.search_alg.type}; "
          f"{config.metric} ({config.mode})")
    for key, spec in space.items():
        print(f"  search     {key}: {spec}")


def _finish(results, prepared) -> int:
    config = prepared.config
    errors = sum(1 for r in results if r.error is not None)
    print(f"trials       {len(results)} run, {errors} failed")
    if errors == len(results):
        print(f"error: every trial failed; first error: {results[0].error}", file=sys.stderr)
        return EXIT_FAILED
    best = results.get_best_result(config.metric, config.mode, scope="all")
    value = best.metrics_dataframe[config.metric]
    best_value = value.max() if config.mode == "max" else value.min()
    searched = {k: best.config.get(k) for k in config.search}
    print(f"best         {config.metric}={best_value:.4f} {searched}")
    print(f"results      {prepared.experiment_dir}")
    return EXIT_OK


def run() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())


if __name__ == "__main__":
    run()
