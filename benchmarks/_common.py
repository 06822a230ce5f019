"""Helpers shared by the benchmarks: environment, machine description, data, result lines."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = Path(os.environ.get("RAYTUNE_FT_DATA_DIR", REPO.parent / "shared" / "data" / "glue"))
MODEL = "all-MiniLM-L6-v2"


def load_average() -> str:
    """The 1/5/15-minute load averages: other people's jobs share this machine."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU ({cpu}), {gpu}, python {platform.python_version()}, "
            f"torch {torch.__version__}")


def header(name: str) -> None:
    print(f"# {name}  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"# machine: {machine()}")
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# load average at start: {load_average()}", flush=True)


def final(name: str, figure: str, target: str, met: bool | None) -> None:
    """The last line every benchmark prints: `name: figure (target)`."""
    verdict = "" if met is None else ("; met" if met else "; NOT met")
    print(f"# load average at end: {load_average()}")
    print(f"{name}: {figure} ({target}{verdict})", flush=True)


def model_path() -> str:
    from raytune_ft.training.model import resolve_model_path

    return resolve_model_path(MODEL)


def bundle(task: str, max_train: int | None = None, max_eval: int | None = None,
           max_length: int = 128):
    """A tokenized DataBundle of a GLUE task from ../shared/data/glue."""
    from raytune_ft.schema import data_settings
    from raytune_ft.tasks.sequence_classification import build_bundle
    from raytune_ft.training.model import load_tokenizer

    cfg = data_settings(task=task, path=str(GLUE_DIR), max_train_samples=max_train,
                     max_eval_samples=max_eval)
    return build_bundle(cfg, load_tokenizer(model_path()), max_length)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
