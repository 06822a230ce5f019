"""Write the demo model for German-to-English translation on a CPU (Multi30K).

    python -m raytune_ft.multi30k data

writes `data/marian-multi30k/`: a tokenizer trained on the Multi30K training pairs with the
`tokenizers` library (BPE over both languages: one shared de+en vocabulary of `VOCAB_SIZE`
pieces, sentencepiece-style word boundaries so that decoding gives back the spaces; trained
on the file contents alone, so the same files give the same tokenizer), and a small
Marian-style encoder-decoder (`MarianConfig`, `LAYERS` + `LAYERS` layers of `D_MODEL`) with
weights drawn from a fixed seed. It is *not* pretrained: no pretrained translation model can be
downloaded on this machine. A real run names a hub model (`Helsinki-NLP/opus-mt-de-en`,
`t5-small`) instead.

The Multi30K files (../shared/data/translation) are for non-commercial research and
education only (their LICENSE): the tokenizer written here is derived from them and shares
that restriction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "translation"
VOCAB_SIZE = 8000  # shared de+en BPE pieces: most Multi30K words are one or two pieces
D_MODEL = 256  # hidden size: small enough for a CPU epoch in minutes
LAYERS = 3  # encoder layers, and as many decoder layers
HEADS = 4
FFN = 1024  # feed-forward width (4 x d_model, as in the Transformer)
MAX_POSITIONS = 256  # tokens per sentence; Multi30K's longest is well below
SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2: pad (also the decoder's start), eos, unk


def corpus_lines(corpus: Path, languages: tuple[str, ...] = ("de", "en"),
                 limit: int | None = None) -> list[str]:
    """The training lines of both languages (the first `limit` of each), in file order: the
    tokenizer's input."""
    lines = []
    for language in languages:
        path = corpus / f"train.{language}"
        lines += path.read_text(encoding="utf-8").splitlines()[:limit]
    return lines


def train_tokenizer(lines: list[str], vocab_size: int = VOCAB_SIZE):
    """A shared BPE tokenizer as a `PreTrainedTokenizerFast`: `</s>` ends every encoded text,
    `<pad>` pads and starts the decoder. BPE training counts pairs, so the same lines give the
    same vocabulary on every run and machine."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFC()
    # words keep their leading space marker; punctuation is a piece of its own, so "Freien."
    # and "Freien" share one piece (decoding joins punctuation to the word before it)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation("isolated")])
    tokenizer.decoder = decoders.Metaspace()
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                         show_progress=False)
    tokenizer.train_from_iterator(lines, trainer=trainer)
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A $B </s>", special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>",
                                   model_max_length=MAX_POSITIONS)


def build_model(vocab_size: int, seed: int = 0, d_model: int = D_MODEL, layers: int = LAYERS,
                heads: int = HEADS, ffn: int = FFN, dropout: float = 0.1):
    """A Marian-style translation model from its config, seeded random weights."""
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=vocab_size, decoder_vocab_size=vocab_size, d_model=d_model,
        encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
        decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
        max_position_embeddings=MAX_POSITIONS, activation_function="relu", dropout=dropout,
        scale_embedding=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        forced_eos_token_id=1, share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = MarianMTModel(config)
    model.generation_config = GenerationConfig(
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1,
        max_new_tokens=MAX_POSITIONS // 2, num_beams=1)
    return model


def write_model(out: Path, corpus: Path = DEFAULT_CORPUS, seed: int = 0,
                vocab_size: int = VOCAB_SIZE, lines: int | None = None, **sizes) -> int:
    """The tokenizer (trained on the first `lines` of each training file, None: all) and the
    seeded model in `out`; returns the vocabulary size. Tests write tiny ones."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = train_tokenizer(corpus_lines(corpus, limit=lines), vocab_size)
    model = build_model(len(tokenizer), seed, **sizes)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return len(tokenizer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write marian-multi30k/ into")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS),
                        help="folder holding Multi30K's train.de and train.en "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    out, corpus = Path(args.out) / "marian-multi30k", Path(args.corpus)
    missing = [str(corpus / f"train.{lang}") for lang in ("de", "en")
               if not (corpus / f"train.{lang}").is_file()]
    if missing:
        print(f"--corpus: {', '.join(missing)} not found; give the Multi30K folder")
        return 2
    if out.exists():
        print(f"{out} exists; remove it to write it again")
        return 2
    vocab = write_model(out, corpus)
    print(f"wrote {out} (MarianConfig {LAYERS}+{LAYERS} layers, d_model {D_MODEL}, seeded "
          f"random weights; BPE tokenizer of {vocab} pieces trained on {corpus}/train.de and "
          "train.en, research and education use only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
