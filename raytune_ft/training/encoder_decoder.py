"""An encoder-decoder warm-started from two pretrained encoders (`model.decoder_name`).

Rothe, Narayan and Severyn (2020), "Leveraging Pre-trained Checkpoints for Sequence
Generation Tasks": the encoder is `model.name`'s checkpoint, the decoder `model.decoder_name`'s
with causal self-attention and a new cross-attention in every layer
(`EncoderDecoderModel.from_encoder_decoder_pretrained`); both read one tokenizer, the
encoder's. The driver builds the pair once into a folder that `AutoModelForSeq2SeqLM` loads
(cross-attention drawn from a fixed seed, the start, end and pad tokens set from the
tokenizer), so the data, every trial and `export` see one ordinary seq2seq model folder.

The folder lives under `$RAYTUNE_FT_CACHE` (default `~/.cache/raytune_ft`), named by a hash
of the two checkpoints' files: the same pair is built once per machine. Trials on other
machines of a cluster need the same folder: build it there first, or name it as
`model.name` (it is an ordinary model folder).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from raytune_ft.errors import ModelError

log = logging.getLogger(__name__)
SEED = 0  # the new cross-attention's initialisation: every trial starts from the same model


def cache_root() -> Path:
    return Path(os.environ.get("RAYTUNE_FT_CACHE", "~/.cache/raytune_ft")).expanduser()


def fingerprint(*paths: str) -> str:
    """A hash of each checkpoint's name, file names, sizes and modification times."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.encode())
        folder = Path(path)
        if folder.is_dir():
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    stat = file.stat()
                    digest.update(f"{file.relative_to(folder)}:{stat.st_size}:"
                                  f"{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def special_ids(tokenizer, path: str) -> dict[str, int]:
    """Decoder start, end and pad ids of a BERT-style ([CLS] ... [SEP]) or BPE-style
    (<s> ... </s>) tokenizer."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else \
        tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else \
        tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if start is None or end is None or pad is None:
        raise ModelError(f"model.name: the tokenizer of {path} lacks a start ([CLS] or <s>), "
                         "end ([SEP] or </s>) or pad token; a warm-started decoder needs all "
                         "three")
    return {"decoder_start_token_id": start, "eos_token_id": end, "pad_token_id": pad}


def _check_vocabularies(encoder: str, decoder: str, tokenizer) -> None:
    from transformers import AutoConfig

    sizes = {path: getattr(AutoConfig.from_pretrained(path), "vocab_size", None)
             for path in (encoder, decoder)}
    if sizes[encoder] != sizes[decoder]:
        raise ModelError(f"model.decoder_name: {decoder} has a vocabulary of {sizes[decoder]} "
                         f"tokens, the encoder {encoder} one of {sizes[encoder]}; the "
                         "warm-started pair reads and writes one tokenizer, the encoder's")
    try:
        from raytune_ft.training.model import load_tokenizer

        other = load_tokenizer(decoder)
    except ModelError:
        return  # no tokenizer beside the decoder: its vocabulary size matched
    if other.get_vocab() != tokenizer.get_vocab():
        raise ModelError(f"model.decoder_name: the tokenizer of {decoder} is not the encoder's "
                         f"({encoder}); the warm-started pair reads and writes one tokenizer")


def warm_start(encoder: str, decoder: str) -> str:
    """The folder of the encoder-decoder warm-started from `encoder` and `decoder` (resolved
    paths or hub ids), built here the first time."""
    folder = cache_root() / "encoder_decoder" / fingerprint(encoder, decoder)
    if (folder / "config.json").is_file():
        return str(folder)
    import torch
    from transformers import EncoderDecoderModel
    from transformers.utils import logging as hf_logging

    from raytune_ft.training.model import load_failure, load_tokenizer

    tokenizer = load_tokenizer(encoder)
    _check_vocabularies(encoder, decoder, tokenizer)
    ids = special_ids(tokenizer, encoder)
    hf_logging.set_verbosity_error()  # the new cross-attention is "newly initialized"
    torch.manual_seed(SEED)
    try:
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(encoder, decoder)
    except (OSError, ValueError) as error:
        raise ModelError(f"model.decoder_name: cannot warm-start {encoder} + {decoder}: "
                         f"{load_failure(decoder, error)}") from None
    for key, value in ids.items():
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)
    model.config.vocab_size = model.config.decoder.vocab_size
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(folder)  # another process may have won the race: its copy is the same
    except OSError:
        if not (folder / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("warm-started %s + %s into %s", encoder, decoder, folder)
    return str(folder)
