"""Corpus scores of generated text, from the libraries every paper quotes.

- BLEU and chrF: sacreBLEU (`sacrebleu.corpus_bleu`, `corpus_chrf`) with its defaults: the
  13a tokenizer for BLEU, character 6-grams and word order 0 for chrF (chrF, not chrF++),
  cased unless `lowercase`. The figures are those of `sacrebleu REF -i HYP -m bleu chrf`
  (with `-lc --chrf-lowercase` when lowercased).
- ROUGE-1, ROUGE-2, ROUGE-L: rouge-score's `RougeScorer` (Porter stemming on, as in the
  summarisation papers and Hugging Face's examples), the F-measure of each example averaged
  over the corpus. rouge-score's own tokenizer lowercases and keeps [a-z0-9] only, so ROUGE
  is English-centred and case-blind whatever `lowercase` says.

Every score is on a 0-100 scale (sacreBLEU's own; ROUGE F x 100, as Hugging Face's examples
report it).
"""

from __future__ import annotations

import importlib.util

SCORES = ("bleu", "chrf", "rouge")  # what `data.metrics` may name
METRICS_OF = {"bleu": ("eval_bleu",), "chrf": ("eval_chrf",),
              "rouge": ("eval_rouge1", "eval_rouge2", "eval_rougeL")}
PACKAGE_OF = {"bleu": "sacrebleu", "chrf": "sacrebleu", "rouge": "rouge_score"}
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def missing_packages(scores: list[str]) -> list[str]:
    """The scoring packages `scores` need that are not installed (pip names)."""
    names = {PACKAGE_OF[s] for s in scores if importlib.util.find_spec(PACKAGE_OF[s]) is None}
    return sorted(name.replace("_", "-") for name in names)


def bleu(hypotheses: list[str], references: list[str], lowercase: bool = False) -> float:
    from sacrebleu.metrics import BLEU

    return float(BLEU(lowercase=lowercase).corpus_score(hypotheses, [references]).score)


def chrf(hypotheses: list[str], references: list[str], lowercase: bool = False) -> float:
    from sacrebleu.metrics import CHRF

    return float(CHRF(lowercase=lowercase).corpus_score(hypotheses, [references]).score)


def rouge(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Mean F-measure x 100 of ROUGE-1, -2 and -L over the examples."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hypothesis, reference in zip(hypotheses, references):
        scores = scorer.score(reference, hypothesis)  # (target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    count = max(len(hypotheses), 1)
    return {f"eval_{name}": 100.0 * total / count for name, total in totals.items()}


def corpus_scores(hypotheses: list[str], references: list[str], scores: list[str],
                  lowercase: bool = False) -> dict[str, float]:
    """The `eval_` figures `scores` name, for hypotheses against one reference each."""
    out: dict[str, float] = {}
    if "bleu" in scores:
        out["eval_bleu"] = bleu(hypotheses, references, lowercase)
    if "chrf" in scores:
        out["eval_chrf"] = chrf(hypotheses, references, lowercase)
    if "rouge" in scores:
        out.update(rouge(hypotheses, references))
    return out


def describe(scores: list[str], lowercase: bool) -> str:
    """The run header's line about how the text is scored."""
    parts = []
    case = "lowercased" if lowercase else "cased"
    if "bleu" in scores:
        parts.append(f"sacreBLEU BLEU (13a tokenizer, {case})")
    if "chrf" in scores:
        parts.append(f"chrF (sacreBLEU, {case})")
    if "rouge" in scores:
        parts.append("ROUGE-1/2/L F (rouge-score, Porter stemmer, its own lowercasing "
                     "tokenizer)")
    return "; ".join(parts) + "; 0-100"
