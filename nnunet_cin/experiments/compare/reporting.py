"""A comparison's report: statistics over cases (nnunet_cin.evaluation.statistics), Markdown tables, CSV and plots.

Tables (comparison.md): a summary (mean Dice and whole heart per modality), normalization x conditioning (what each
lever buys, when the four arms that isolate them ran), each method against the reference method (paired per-case
differences with a bootstrap interval, a Wilcoxon signed-rank test and a verdict), the replicates (one mean per seed)
and one table per modality with every structure. Cells are means over validation cases with a 95% Student-t
interval; see nnunet_cin.experiments.compare.cases for the unit of analysis.
"""
import csv
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from nnunet_cin.evaluation.statistics import (ALPHA, BOOTSTRAP_RESAMPLES, CONFIDENCE, Interval, PairedComparison,
                                              compare_paired, mean_ci)
from nnunet_cin.experiments.compare.arms import (COMPARISON_PLANS, LEVERS, PLAIN_PLANS, ComparisonPlan,
                                                 plans_with_normalization)
from nnunet_cin.experiments.compare.cases import MEAN, WHOLE_HEART, CaseTable

STATISTICS_NOTE = (
    f"Statistics: the unit is the validation case (every case of every fold; with several seeds each case's values "
    f"are averaged over the seeds first, so a case counts once). Cells: mean over cases [{CONFIDENCE:.0%} "
    f"Student-t confidence interval]. Paired table: mean over the cases both methods validated of the per-case "
    f"difference (method - reference), [{CONFIDENCE:.0%} percentile-bootstrap interval, {BOOTSTRAP_RESAMPLES} "
    f"resamples of cases, seeded], p: two-sided Wilcoxon signed-rank test over the cases; verdict \"better\" or "
    f"\"worse\" only when the interval excludes 0 and p < {ALPHA}, else \"no detectable difference\" "
    f"(with fewer than 6 cases the test cannot reach p < 0.05).")


def _fmt(value: Optional[float], digits: int = 3, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def ci_cell(interval: Interval, digits: int = 3) -> str:
    if interval.mean is None:
        return "–"
    if interval.low is None:
        return _fmt(interval.mean, digits)
    return f"{_fmt(interval.mean, digits)} [{_fmt(interval.low, digits)}, {_fmt(interval.high, digits)}]"


def difference_cell(c: PairedComparison, digits: int = 3) -> str:
    if c.difference is None:
        return "–"
    if c.low is None:
        return _fmt(c.difference, digits, True)
    return f"{_fmt(c.difference, digits, True)} [{_fmt(c.low, digits, True)}, {_fmt(c.high, digits, True)}]"


def p_cell(p: Optional[float]) -> str:
    return "–" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


# ---------------------------------------------------------------------------------------------------------------------
# statistics


class Statistics:
    """Everything the report shows, computed once from the case table."""

    def __init__(self, table: CaseTable, plan: ComparisonPlan, reference: Optional[str] = None):
        self.table, self.plan, self.reference = table, plan, reference
        self.cells: Dict[tuple, Interval] = {}
        for row in plan.rows:
            for m in plan.modalities:
                for column in table.columns:
                    self.cells[(row.key, m, column)] = mean_ci(list(table.per_case(row.key, m, column).values()))
        self._paired: Dict[tuple, PairedComparison] = {}

    def paired(self, method: str, reference: str, modality: str, column: str) -> PairedComparison:
        """`method` against `reference` on the cases both validated (each case averaged over seeds first)."""
        key = (method, reference, modality, column)
        if key not in self._paired:
            a = self.table.per_case(method, modality, column)
            b = self.table.per_case(reference, modality, column)
            common = sorted(set(a) & set(b))
            self._paired[key] = compare_paired([a[c] for c in common], [b[c] for c in common])
        return self._paired[key]

    def levers_available(self) -> bool:
        keys = {r.key for r in self.plan.rows}
        return all(k in keys for k in LEVERS.values())


# ---------------------------------------------------------------------------------------------------------------------
# Markdown


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> List[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < right_from else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _bold_best(stats: Statistics, keys: Sequence[tuple], digits: int = 3) -> Dict[tuple, bool]:
    """For one column of cells: which hold the best mean (nothing in bold when all are equal)."""
    means = {k: round(stats.cells[k].mean, digits) for k in keys if stats.cells[k].mean is not None}
    if len(set(means.values())) < 2:
        return {k: False for k in keys}
    best = max(means.values())
    return {k: means.get(k) == best for k in keys}


def _cells_table(stats: Statistics, columns: Sequence[tuple], header: Sequence[str],
                 leading: Sequence[str] = ("method",), lead=lambda row: [row.label]) -> List[str]:
    """Rows: methods; columns: (modality, column) pairs; the best mean of each column in bold."""
    bold = {}
    for m, c in columns:
        bold.update(_bold_best(stats, [(row.key, m, c) for row in stats.plan.rows]))
    body = []
    for row in stats.plan.rows:
        cells = []
        for m, c in columns:
            text = ci_cell(stats.cells[(row.key, m, c)])
            cells.append(f"**{text}**" if bold[(row.key, m, c)] else text)
        body.append([*lead(row), *cells])
    return _table([*leading, *header], body, right_from=len(leading))


def levers_section(stats: Statistics, plans_names: Dict[str, str]) -> List[str]:
    """Normalization x conditioning, per modality, on the mean Dice over structures."""
    plan = stats.plan
    out = ["## Normalization × conditioning: what each lever buys (mean Dice over structures)", "",
           "The same trainer code and sampler in all four cells (`nnUNetTrainerJoint` / `nnUNetTrainerCIN`); only the "
           "plans (normalization) and the conditioning change. Differences are paired per case (row or column "
           "method minus the other), [95% bootstrap interval], p (Wilcoxon), verdict.", ""]
    body = []
    for m in plan.modalities:
        for plans in (COMPARISON_PLANS, PLAIN_PLANS):
            plain_key, cin_key = LEVERS[(plans, False)], LEVERS[(plans, True)]
            gain = stats.paired(cin_key, plain_key, m, MEAN)
            body.append([m, f"`{plans_names[plans]}`", ci_cell(stats.cells[(plain_key, m, MEAN)]),
                         ci_cell(stats.cells[(cin_key, m, MEAN)]),
                         f"{difference_cell(gain)}, p {p_cell(gain.p)}, {gain.verdict}"])
        gains = []
        for conditioned in (False, True):
            c = stats.paired(LEVERS[(COMPARISON_PLANS, conditioned)], LEVERS[(PLAIN_PLANS, conditioned)], m, MEAN)
            gains.append(f"{difference_cell(c)}, p {p_cell(c.p)}, {c.verdict}")
        body.append([m, f"normalization buys ({plans_names[COMPARISON_PLANS]} - {plans_names[PLAIN_PLANS]})", *gains,
                     ""])
    out += _table(["modality", "plans", "not conditioned (joint)", "conditioned (CIN)", "conditioning buys"], body,
                  right_from=2)
    if "nnunet" in {r.key for r in plan.rows}:
        out += ["", "For reference, plain nnU-Net (`nnUNetTrainer` on `" + plans_names[PLAIN_PLANS] + "`: nnU-Net's own "
                "sampling, no modality input): " + ", ".join(
                    f"{m} {ci_cell(stats.cells[('nnunet', m, MEAN)])}" for m in plan.modalities) + "."]
    return out


def paired_section(stats: Statistics) -> List[str]:
    plan, reference = stats.plan, stats.reference
    label = next(r.label for r in plan.rows if r.key == reference)
    out = [f"## Paired against {label}: per-case difference (method - {label})", ""]
    body = []
    for row in plan.rows:
        if row.key == reference:
            continue
        for m in plan.modalities:
            cells = [row.label, m]
            n = None
            for column in (MEAN, WHOLE_HEART):
                c = stats.paired(row.key, reference, m, column)
                n = c.n if n is None else n
                cells += [difference_cell(c), p_cell(c.p), c.verdict]
            body.append(cells[:2] + [str(n)] + cells[2:])
    out += _table(["method", "modality", "n", "mean Dice: difference [95% CI]", "p", "verdict",
                   f"{WHOLE_HEART}: difference [95% CI]", "p", "verdict"], body, right_from=2)
    return out


def replicates_section(stats: Statistics, seeds: Sequence[Optional[int]]) -> List[str]:
    out = ["## Replicates: mean Dice over structures, per seed (run-to-run spread)", ""]
    header, body = [], []
    for m in stats.plan.modalities:
        header += [f"{m} seed {s}" for s in seeds] + [f"{m} sd"]
    for row in stats.plan.rows:
        cells = [row.label]
        for m in stats.plan.modalities:
            means = stats.table.seed_means(row.key, m, MEAN)
            values = [means.get(s) for s in seeds]
            cells += [_fmt(v) for v in values]
            finite = [v for v in values if v is not None and not math.isnan(v)]
            sd = (math.sqrt(sum((v - sum(finite) / len(finite)) ** 2 for v in finite) / (len(finite) - 1))
                  if len(finite) > 1 else None)
            cells.append(_fmt(sd))
        body.append(cells)
    return out + _table(["method", *header], body)


def markdown(stats: Statistics, seeds: Sequence[Optional[int]], plans_names: Dict[str, str], title: str = "",
             notes: Sequence[str] = ()) -> str:
    plan = stats.plan
    out = [*([f"# {title}", ""] if title else []), *notes, "", STATISTICS_NOTE, "",
           f"## Summary: mean Dice over structures and whole heart ({WHOLE_HEART}), per modality [95% CI]", ""]
    plans_of = lambda row: plans_with_normalization(plans_names.get(plan.methods[row.key].plans, ""),
                                                    plan.methods[row.key].normalization)
    out += _cells_table(stats, [(m, c) for m in plan.modalities for c in (MEAN, WHOLE_HEART)],
                        [f"{m} {c}" for m in plan.modalities for c in (MEAN, WHOLE_HEART)],
                        leading=("method", "plans"), lead=lambda row: [row.label, f"`{plans_of(row)}`"])
    if stats.levers_available():
        out += ["", *levers_section(stats, plans_names)]
    if stats.reference is not None:
        out += ["", *paired_section(stats)]
    if len(seeds) > 1:
        out += ["", *replicates_section(stats, seeds)]
    for m in plan.modalities:
        out += ["", f"## {m}: every structure [95% CI]", ""]
        out += _cells_table(stats, [(m, c) for c in stats.table.columns], stats.table.columns)
    return "\n".join(out).lstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# CSV


CSV_COLUMNS = ["table", "method", "label", "arm", "modality", "structure", "n_cases", "mean", "ci_low", "ci_high",
               "ci_method", "reference", "reference_mean", "difference", "p_value", "verdict", "seed_sd"]


def _num(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6f}"


def write_csv(stats: Statistics, filename: Path, seeds: Sequence[Optional[int]], folds: Sequence):
    """comparison.csv, long format. table "dice": one row per method, modality and structure (mean, Student-t CI,
    the sd over the seeds' means, each seed's and each fold's mean); table "paired": one row per method (but the
    reference), modality and structure (means over the common cases, mean difference with its bootstrap CI,
    Wilcoxon p, verdict)."""
    plan, table = stats.plan, stats.table
    seed_cols = [f"seed_{s}" for s in seeds if s is not None]
    fold_cols = [f"fold_{f}" for f in folds]
    with open(filename, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS + seed_cols + fold_cols, restval="")
        writer.writeheader()
        for row in plan.rows:
            for m in plan.modalities:
                for column in table.columns:
                    cell = stats.cells[(row.key, m, column)]
                    by_seed = table.seed_means(row.key, m, column)
                    finite = [v for v in by_seed.values() if not math.isnan(v)]
                    sd = (math.sqrt(sum((v - sum(finite) / len(finite)) ** 2 for v in finite) / (len(finite) - 1))
                          if len(finite) > 1 else None)
                    by_fold = table.fold_means(row.key, m, column)
                    writer.writerow({"table": "dice", "method": row.key, "label": row.label, "arm": row.cells.get(m),
                                     "modality": m, "structure": column, "n_cases": cell.n, "mean": _num(cell.mean),
                                     "ci_low": _num(cell.low), "ci_high": _num(cell.high), "ci_method": "t",
                                     "seed_sd": _num(sd),
                                     **{f"seed_{s}": _num(by_seed.get(s)) for s in seeds if s is not None},
                                     **{f"fold_{fold}": _num(by_fold.get(str(fold))) for fold in folds}})
        if stats.reference is None:
            return
        for row in plan.rows:
            if row.key == stats.reference:
                continue
            for m in plan.modalities:
                for column in table.columns:
                    c = stats.paired(row.key, stats.reference, m, column)
                    writer.writerow({"table": "paired", "method": row.key, "label": row.label,
                                     "arm": row.cells.get(m), "modality": m, "structure": column, "n_cases": c.n,
                                     "mean": _num(c.mean), "ci_low": _num(c.low), "ci_high": _num(c.high),
                                     "ci_method": "bootstrap", "reference": stats.reference,
                                     "reference_mean": _num(c.reference_mean), "difference": _num(c.difference),
                                     "p_value": _num(c.p), "verdict": c.verdict})


def write_cases_csv(table: CaseTable, filename: Path):
    """cases.csv: every per-case value the statistics come from (method, arm, modality, seed, fold, case,
    structure, dice), for reanalysis."""
    with open(filename, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "arm", "modality", "seed", "fold", "case", "structure", "dice"])
        for r in table.rows:
            writer.writerow([r["method"], r["arm"], r["modality"], "" if r["seed"] is None else r["seed"], r["fold"],
                             r["case"], r["column"], _num(r["value"])])


# ---------------------------------------------------------------------------------------------------------------------
# plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_plot(stats: Statistics, filename: Path, title: str = ""):
    """One panel per modality: structures, mean and WH along x, one bar per method, error bars the 95% CI."""
    import numpy as np

    plt = _pyplot()
    plan, columns = stats.plan, stats.table.columns
    n_rows = len(plan.rows)
    width = 0.8 / max(n_rows, 1)
    fig, axes = plt.subplots(len(plan.modalities), 1, figsize=(max(8, 1.1 * len(columns) * (0.6 + 0.12 * n_rows)),
                                                               3.4 * len(plan.modalities)), squeeze=False)
    x = np.arange(len(columns))
    for ax, m in zip(axes[:, 0], plan.modalities):
        for i, row in enumerate(plan.rows):
            cells = [stats.cells[(row.key, m, c)] for c in columns]
            means = np.array([np.nan if c.mean is None else c.mean for c in cells])
            low = np.array([0 if c.low is None else c.mean - c.low for c in cells])
            high = np.array([0 if c.high is None else c.high - c.mean for c in cells])
            ax.bar(x - 0.4 + width * (i + 0.5), means, width, label=row.label, yerr=np.vstack([low, high]),
                   capsize=2)
        ax.set_xticks(x)
        ax.set_xticklabels(columns)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"Dice ({m})")
        ax.grid(axis="y", alpha=0.3)
        ax.axvline(len(stats.table.structures) - 0.5, color="gray", lw=0.8)
    axes[0, 0].legend(fontsize=8, ncol=min(n_rows, 3), loc="lower left", bbox_to_anchor=(0, 1.02))
    fig.suptitle((title + "\n" if title else "") + "mean Dice over validation cases, error bars: 95% CI",
                 fontsize=10, y=1.0)
    fig.tight_layout()
    fig.savefig(filename, dpi=110, bbox_inches="tight")
    plt.close(fig)


VERDICT_COLORS = {"better": "tab:green", "worse": "tab:red", "no detectable difference": "tab:gray"}


def paired_plot(stats: Statistics, filename: Path, title: str = ""):
    """Forest plot: per modality and metric (mean Dice, WH), each method's mean per-case difference to the reference
    with its bootstrap 95% CI; colour = verdict."""
    plt = _pyplot()
    plan, reference = stats.plan, stats.reference
    others = [r for r in plan.rows if r.key != reference]
    panels = [(m, c) for m in plan.modalities for c in (MEAN, WHOLE_HEART)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 2, 0.45 * len(others) + 1.6),
                             sharey=True, squeeze=False)
    for ax, (m, column) in zip(axes[0], panels):
        for y, row in enumerate(others):
            c = stats.paired(row.key, reference, m, column)
            if c.difference is None:
                continue
            color = VERDICT_COLORS[c.verdict]
            if c.low is not None:
                ax.plot([c.low, c.high], [y, y], color=color, lw=2)
            ax.plot([c.difference], [y], "o", color=color)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"{m} {column}", fontsize=9)
        ax.set_xlabel("Dice difference")
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(range(len(others)))
    axes[0, 0].set_yticklabels([r.label for r in others], fontsize=8)
    axes[0, 0].invert_yaxis()
    label = next(r.label for r in plan.rows if r.key == reference)
    fig.suptitle((title + "\n" if title else "") + f"per-case difference to {label}, 95% bootstrap CI "
                 f"(green: better, red: worse, gray: no detectable difference)", fontsize=9)
    fig.tight_layout()
    fig.savefig(filename, dpi=110, bbox_inches="tight")
    plt.close(fig)
