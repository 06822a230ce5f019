"""The pbt_events table from Ray's `pbt_global.txt`.

Ray's PBT (`PopulationBasedTraining._log_config_on_step`) appends one JSON list per exploit:
[target trial tag, clone trial tag, target iteration, clone iteration, clone's config, new
config]. Tags are the trials' original experiment tags (`<index>_<vars>`), which we map back
to trial ids. Ray's "old config" is the donor's config; the target's own previous values are
taken from its report the exploit was decided on (`old_hp_*`), Ray's logged one is
`donor_hp_*`. raytune_ft's PBT and PB2 log the iterations of the results the decision used
(tuning/population.py); Ray's own logger wrote the target's previous report's.
"""

from __future__ import annotations

import json
import logging

import pandas as pd
import pyarrow as pa

from raytune_ft.analysis._layout import flatten
from raytune_ft.analysis._results import coerce
from raytune_ft.analysis._tables import HP, Experiment, arrow_type

logger = logging.getLogger(__name__)

PBT_FILE = "pbt_global.txt"


def pbt_schema(exp: Experiment) -> pa.Schema:
    s, i64 = pa.string(), pa.int64()
    fields = [
        ("event", i64),
        ("timestamp", pa.float64()),
        ("target_trial_id", s),
        ("donor_trial_id", s),
        ("target_tag", s),
        ("donor_tag", s),
        ("target_iteration", i64),
        ("donor_iteration", i64),
    ]
    for prefix in ("old_", "donor_", "new_"):
        fields += [(prefix + HP + h, arrow_type(t)) for h, t in exp.hp_types.items()]
    return pa.schema(fields)


def _tag_resolver(exp: Experiment):
    by_tag = {t.orig_tag: t.trial_id for t in exp.trials if t.orig_tag}
    by_index = {t.orig_tag.split("_", 1)[0]: t.trial_id for t in exp.trials if t.orig_tag}

    def resolve(tag: str) -> str | None:
        return by_tag.get(tag) or by_index.get(str(tag).split("_", 1)[0])

    return resolve


def _read_policy(exp: Experiment) -> list[list]:
    path = exp.path / PBT_FILE
    if not path.is_file():
        return []
    events = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
            if not (isinstance(ev, list) and len(ev) == 6):
                raise ValueError("expected a list of 6 items")
        except ValueError as e:
            logger.warning("%s: skipping corrupt line %d (%s)", path, n, e)
            continue
        events.append(ev)
    return events


def _report_at(rows: pd.DataFrame | None, iteration: int) -> pd.Series | None:
    """The target's last report at or before `iteration` (a clone's iterations can jump)."""
    if rows is None:
        return None
    upto = rows[rows["iteration"] <= iteration]
    return upto.iloc[-1] if len(upto) else None


def _deciding_reports(exp: Experiment, policy: list[list], resolve) -> list[pd.Series | None]:
    """Per exploit, the target's result line it was decided on: in the order its lines were
    written, the first at the logged iteration after the line of its previous exploit (a clone
    that resumed from an earlier checkpoint reports that iteration again later)."""
    index = {t.trial_id: i for i, t in enumerate(exp.trials)}
    lines = {i: rows.sort_values("_line") for i, rows in exp.raw.groupby("_trial")}
    after: dict[int, int] = {}
    found = []
    for event in policy:
        trial = index.get(resolve(event[0]))
        rows = lines.get(trial)
        if rows is None:
            found.append(None)
            continue
        at = rows[(rows["_line"] >= after.get(trial, 0))
                  & (rows["training_iteration"] == int(event[2]))]
        found.append(at.iloc[0] if len(at) else None)
        if len(at):
            after[trial] = int(at.iloc[0]["_line"]) + 1
    return found


def pbt_frame(exp: Experiment, iterations: pd.DataFrame) -> pd.DataFrame:
    """One row per exploit, in the order Ray logged them; empty when the run was not PBT."""
    resolve = _tag_resolver(exp)
    policy = _read_policy(exp)
    targets = {resolve(ev[0]) for ev in policy}
    mine = iterations[iterations["trial_id"].isin(targets)] if policy else iterations.iloc[:0]
    by_trial = {tid: g.sort_values("iteration") for tid, g in mine.groupby("trial_id")}
    deciding = _deciding_reports(exp, policy, resolve)
    rows = []
    for n, (tgt, donor, tgt_it, donor_it, old_cfg, new_cfg) in enumerate(policy):
        tgt_id = resolve(tgt)
        row = {
            "event": n,
            "target_trial_id": tgt_id,
            "donor_trial_id": resolve(donor),
            "target_tag": str(tgt),
            "donor_tag": str(donor),
            "target_iteration": int(tgt_it),
            "donor_iteration": int(donor_it),
            "timestamp": None,
        }
        report = deciding[n]  # without its line: the last report up to that iteration
        before = _report_at(by_trial.get(tgt_id), int(tgt_it))
        if report is not None or before is not None:
            row["timestamp"] = float((report if report is not None else before)["timestamp"])
        old, new = flatten(old_cfg or {}), flatten(new_cfg or {})
        for h, t in exp.hp_types.items():
            prev = before[HP + h] if before is not None else None
            if report is not None and f"config.{h}" in report.index:
                prev = report[f"config.{h}"]
            row["old_" + HP + h] = None if prev is None or pd.isna(prev) else coerce(prev, t)
            row["donor_" + HP + h] = coerce(old.get(h), t)
            row["new_" + HP + h] = coerce(new.get(h), t)
        rows.append(row)
    return pd.DataFrame(rows, columns=[f.name for f in pbt_schema(exp)])
