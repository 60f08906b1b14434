"""The per-case values a comparison's statistics are computed from: for each table row (method), modality and column
(each structure, "mean" and "WH"), the Dice of every validation case in every seed's run.

Columns: a structure's Dice; "mean": the case's mean Dice over the structures (NaN ones, structures absent from both
reference and prediction, left out); "WH": the Dice of the union of all foreground labels (whole heart), measured by
nnunet_cin.evaluation.evaluate.evaluate_folder.

The unit of the statistics is the case. With several seeds, every case has one value per seed (each seed trains all
folds, so each case is validated once per seed, by the model that did not see it); `per_case` averages them first,
so that a case counts once however many seeds ran: the seeds' values of one case are not independent observations
(same image, same reference), and counting them as such would narrow every interval by about the square root of the
number of seeds without any more evidence about new cases. Averaging also removes part of the run-to-run noise from
each case's value; the run-to-run spread itself is reported apart (`seed_means`: one mean over the cases per seed).
"""
import math
from collections import defaultdict
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

MEAN, WHOLE_HEART = "mean", "WH"


def columns_of(structures: Sequence[str]) -> List[str]:
    return list(structures) + [MEAN, WHOLE_HEART]


def _nanmean(values: Iterable[Optional[float]]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


class CaseTable:
    """Per-case values of a comparison, built from the evaluation records of its runs."""

    def __init__(self, structures: Sequence[str]):
        self.structures = list(structures)
        self.columns = columns_of(structures)
        self.rows: List[dict] = []  # long format: method, arm, modality, seed, fold, case, column, value
        self._index: Dict[Tuple[str, str, str], List[dict]] = defaultdict(list)

    def add(self, method: str, arm: str, seed: Optional[int], fold, case: str, modality: str,
            dice: Mapping[str, Optional[float]]):
        """One case of one run: `dice` maps each structure (and "WH") to its Dice; "mean" is computed here."""
        values = {s: dice.get(s) for s in self.structures}
        values[MEAN] = _nanmean(values.values())
        values[WHOLE_HEART] = dice.get(WHOLE_HEART)
        for column, value in values.items():
            row = {"method": method, "arm": arm, "modality": modality, "seed": seed, "fold": fold, "case": case,
                   "column": column, "value": float("nan") if value is None else float(value)}
            self.rows.append(row)
            self._index[(method, modality, column)].append(row)

    @classmethod
    def from_evaluations(cls, rows: Iterable[Tuple[str, Mapping[str, str]]], evaluations: Iterable[dict],
                         structures: Sequence[str]) -> "CaseTable":
        """rows: (method key, {modality: arm name}) of the table; evaluations: the runs' records (arm, seed, fold,
        cases: [{"case", "modality", "Dice"}]). A record's case fills the cell of every row whose arm made it."""
        table = cls(structures)
        by_arm = defaultdict(list)
        for record in evaluations:
            by_arm[record["arm"]].append(record)
        for method, cells in rows:
            for modality, arm in cells.items():
                for record in by_arm.get(arm, []):
                    for case in record["cases"]:
                        if case["modality"] == modality:
                            table.add(method, arm, record["seed"], record["fold"], case["case"], modality,
                                      case["Dice"])
        return table

    def _rows(self, method: str, modality: str, column: str) -> List[dict]:
        return self._index.get((method, modality, column), [])

    def per_case(self, method: str, modality: str, column: str) -> Dict[str, float]:
        """{case: mean over the seeds of its finite values} (NaN when it has none)."""
        groups = defaultdict(list)
        for r in self._rows(method, modality, column):
            groups[r["case"]].append(r["value"])
        return {case: _nanmean(values) for case, values in sorted(groups.items())}

    def seed_means(self, method: str, modality: str, column: str) -> Dict[Optional[int], float]:
        """{seed: mean over that seed's cases}: one number per replicate, to show the run-to-run spread."""
        groups = defaultdict(list)
        for r in self._rows(method, modality, column):
            groups[r["seed"]].append(r["value"])
        return {seed: _nanmean(values) for seed, values in groups.items()}

    def fold_means(self, method: str, modality: str, column: str) -> Dict[str, float]:
        """{fold: mean over the fold's cases (each averaged over seeds first)}."""
        case_fold = {r["case"]: str(r["fold"]) for r in self._rows(method, modality, column)}
        groups = defaultdict(list)
        for case, value in self.per_case(method, modality, column).items():
            groups[case_fold[case]].append(value)
        return {fold: _nanmean(values) for fold, values in groups.items()}
