"""confirm's rows from the confirm folder's result files (no Ray: the files written here). A
run is finished when it reported its last evaluation: with a searched encoding (question
answering's data.doc_stride) configurations train different numbers of samples, so no one
sample budget says which reached the end."""

from __future__ import annotations

import json

import pandas as pd

from raytune_ft.tuning.confirm import confirm_rows

ITERATIONS = 2  # evaluations of a full-budget run


def write_run(folder, trial_id: str, rank: int, seed: int, reports: list[dict]) -> None:
    trial = folder / f"train_{trial_id}"
    trial.mkdir()
    lines = [{"trial_id": trial_id, "config": {"confirm_rank": rank, "seed": seed},
              "diverged": False, **report} for report in reports]
    (trial / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_a_run_is_finished_by_its_last_evaluation_whatever_its_window_count(tmp_path):
    # stride 16: 333 windows a budget; stride 24: 368; the third run stopped after one
    write_run(tmp_path, "a", 1, 0, [{"training_iteration": 1, "samples_seen": 167,
                                     "eval_f1": 10.0},
                                    {"training_iteration": 2, "samples_seen": 333,
                                     "eval_f1": 20.0}])
    write_run(tmp_path, "b", 2, 0, [{"training_iteration": 1, "samples_seen": 184,
                                     "eval_f1": 12.0},
                                    {"training_iteration": 2, "samples_seen": 368,
                                     "eval_f1": 30.0}])
    write_run(tmp_path, "c", 2, 1, [{"training_iteration": 1, "samples_seen": 184,
                                     "eval_f1": 15.0}])
    chosen = pd.DataFrame({"rank": [1, 2], "trial_id": ["s1", "s2"],
                           "search_metric": [21.0, 31.0], "hp_data.doc_stride": [16, 24]})
    plan = [{"confirm_rank": rank, "confirm_source": source, "seed": seed}
            for rank, source, seed in ((1, "s1", 0), (2, "s2", 0), (2, "s2", 1))]
    rows = confirm_rows(tmp_path, plan, chosen, "eval_f1", ITERATIONS)
    assert list(rows["status"]) == ["finished", "finished", "incomplete"]
    assert list(rows["metric"][:2]) == [20.0, 30.0] and rows["metric"].isna().iloc[2]
    assert list(rows["samples_seen"]) == [333, 368, 184]
    assert list(rows["hp_data.doc_stride"]) == [16, 24, 24]
