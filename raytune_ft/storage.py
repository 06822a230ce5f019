"""Experiment folders that are local paths or URIs pyarrow reaches (s3://, gs://, file://).

Ray Tune writes an experiment to `run.storage_path` through pyarrow's filesystems; the few
files raytune_ft writes or reads itself (the experiment record, the analysis tables and the
report) go the same way, so an experiment on object storage needs no node's local disk.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from raytune_ft.experiment import ANALYSIS_DIR, atomic_write


def is_uri(path: str) -> bool:
    return "://" in path


def _resolve(uri: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)  # ArrowInvalid for an unknown scheme


def write_text(path: str, text: str) -> None:
    """Write a file, creating its folder: a local path or a URI. A local file is written
    atomically; an object store replaces an object whole anyway."""
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as staging:
            staging.write_text(text)
        return
    fs, inner = _resolve(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as stream:
        stream.write(text.encode())


def read_text(path: str) -> str:
    """A file's text; OSError (FileNotFoundError) when it is missing, ValueError for a bad URI."""
    if not is_uri(path):
        return Path(path).expanduser().read_text()
    fs, inner = _resolve(path)
    with fs.open_input_stream(inner) as stream:
        return stream.read().decode()


@contextlib.contextmanager
def local_experiment(experiment_dir: str) -> Iterator[str]:
    """A local folder holding the experiment, for the analysis export and the report.

    A local path or a file:// URI is used in place. Any other URI is copied to a temporary
    folder without its checkpoints (the analysis reads results, not weights), and on a
    clean exit the `analysis/` folder written there is uploaded back beside the trials.
    """
    if not is_uri(experiment_dir):
        yield experiment_dir
        return
    import pyarrow.fs

    fs, inner = _resolve(experiment_dir)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        yield inner
        return
    with tempfile.TemporaryDirectory(prefix="raytune_ft_") as tmp:
        local = Path(tmp) / Path(inner).name
        download_results(fs, inner, local)
        yield str(local)
        if (local / ANALYSIS_DIR).is_dir():
            fs.create_dir(f"{inner}/{ANALYSIS_DIR}", recursive=True)
            pyarrow.fs.copy_files(str(local / ANALYSIS_DIR), f"{inner}/{ANALYSIS_DIR}",
                                  source_filesystem=pyarrow.fs.LocalFileSystem(),
                                  destination_filesystem=fs)


def download_results(fs, root: str, local: Path) -> None:
    """Copy every file under `root` except checkpoints and an earlier analysis."""
    import pyarrow.fs

    local.mkdir(parents=True, exist_ok=True)
    selector = pyarrow.fs.FileSelector(root, recursive=True)
    for info in fs.get_file_info(selector):
        if info.type != pyarrow.fs.FileType.File:
            continue
        relative = Path(info.path[len(root.rstrip("/")) + 1:])
        if relative.parts[0] == ANALYSIS_DIR or any(
                part.startswith("checkpoint_") for part in relative.parts[:-1]):
            continue
        target = local / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
