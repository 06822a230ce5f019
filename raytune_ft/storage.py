"""Experiment folders that are local paths or URIs pyarrow reaches (s3://, gs://, file://).

Ray Tune writes an experiment to `run.storage_path` through pyarrow's filesystems; the few
files raytune_ft writes or reads itself (the experiment record, the analysis tables and the
report) go the same way, so an experiment on object storage needs no node's local disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of `path` to write a file or a folder into. On a clean exit it takes
    `path`'s place; on an error it is removed and whatever was at `path` stays as it was. So
    nothing half-written is ever at `path`, and readers see the old or the new, never a mix.

    A file moves in with one `os.replace`. A folder cannot replace a non-empty one in one step:
    the old one is renamed aside, the new one renamed in, and only then the old one removed.
    """
    path = Path(path)
    # Unique, in the same folder (a rename within a filesystem is atomic); not mkstemp, which
    # would leave a file mode 0600.
    staging = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield staging
        if staging.is_dir():
            _replace_folder(staging, path)
        else:
            os.replace(staging, path)
    except BaseException:
        if staging.is_dir() and not staging.is_symlink():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)
        raise


def _replace_folder(staging: Path, path: Path) -> None:
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old")
        path.rename(old)
    try:
        staging.rename(path)
    except BaseException:
        if old is not None:
            old.rename(path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)



def is_uri(path: str) -> bool:
    return "://" in path


def absolute(path: str) -> str:
    """A local path made absolute (`~` expanded, from the working directory); a URI as it
    is: what a record keeps so that any directory reads the same files."""
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


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
def local_experiment(experiment_dir: str, upload: str) -> Iterator[str]:
    """A local folder holding the experiment, for the analysis export and the report.

    A local path or a file:// URI is used in place. Any other URI is copied to a temporary
    folder without its checkpoints (the analysis reads results, not weights) nor its
    `upload` subfolder, and on a clean exit the `upload` folder written there (the
    analysis) is copied back beside the trials.
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
        download_results(fs, inner, local, skip=upload)
        yield str(local)
        if (local / upload).is_dir():
            fs.create_dir(f"{inner}/{upload}", recursive=True)
            pyarrow.fs.copy_files(str(local / upload), f"{inner}/{upload}",
                                  source_filesystem=pyarrow.fs.LocalFileSystem(),
                                  destination_filesystem=fs)


def download_results(fs, root: str, local: Path, skip: str) -> None:
    """Copy every file under `root` except checkpoints and the folder `skip` (an earlier
    analysis)."""
    import pyarrow.fs

    local.mkdir(parents=True, exist_ok=True)
    selector = pyarrow.fs.FileSelector(root, recursive=True)
    for info in fs.get_file_info(selector):
        if info.type != pyarrow.fs.FileType.File:
            continue
        relative = Path(info.path[len(root.rstrip("/")) + 1:])
        if relative.parts[0] == skip or any(
                part.startswith("checkpoint_") for part in relative.parts[:-1]):
            continue
        target = local / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
