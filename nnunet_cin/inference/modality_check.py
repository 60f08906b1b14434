"""Never trust the modality blindly: every input case compared with what each modality looked like in training.

A conditional model predicts well only for the modality it is told; told the wrong one (a wrong -m, a file named
after the wrong rule) it still returns a segmentation, a bad one, with exit code 0. The plans of our planners carry
each modality's signature (nnunet_cin.planning.signature: whole-image features learned from the training cases).
Before anything is predicted or written, `nnUNetPredictorCIN.modalities_of_cases` reads every case's first channel
with the plans' reader, computes its features (`features_of_cases`) and asks `ModalityCheck.match` which modality it
looks like:

- given a modality (by -m, or by the model's dataset.json rules), a case that clearly looks like ANOTHER modality
  (verdict "match" with a margin of at least the signatures' min_margin) stops the run (`ModalityCheckError`, every
  such case listed); a case without a clear match ("ambiguous", or "none": like no trained modality) is reported and
  predicted as given;
- with -m auto, each case is predicted as the modality it clearly looks like; a case that matches none clearly is an
  error naming it.
Plans made before the signatures existed (or with features of another version) have none: the check is skipped, with
one notice. `CaseModality` is the decision for one case, as recorded in the output folder's modalities.json.
"""
import json
import math
import os
import tempfile
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_cin.inference.checks import file_key
from nnunet_cin.modalities import ModalityError
from nnunet_cin.planning import signature as sig

AUTO = "auto"  # -m auto: each case's modality recognised from the signatures
BY_RULES, BY_FLAG, BY_SIGNATURE = "rules", "-m", "auto"  # how a case's modality was decided (modalities.json)
OVERRIDE = "--skip-modality-check (Python: predictor.check_modalities = False)"
MAX_CACHED = 100_000


class ModalityCheckError(ModalityError):
    """Input cases whose images contradict the modality they were given, or that -m auto cannot recognise."""


@dataclass(frozen=True)
class CaseModality:
    """The modality one case is predicted as, how it was decided, and what its signature check said."""
    modality: str
    decided_by: str                    # BY_RULES, BY_FLAG or BY_SIGNATURE
    match: Optional[sig.Match] = None  # None: not checked

    def record(self) -> dict:
        """JSON-ready (modalities.json)."""
        out = {"modality": self.modality, "decided_by": self.decided_by, "checked": self.match is not None}
        if self.match is not None:
            out.update(verdict=self.match.verdict, looks_like=self.match.candidate, runner_up=self.match.second,
                       margin=_finite(self.match.margin))
        return out

    def describe(self) -> str:
        """One line for the run's table: what the check saw."""
        if self.match is None:
            return "not checked"
        return looks_like(self.match)


def _finite(x: float) -> Optional[float]:
    return None if x is None or math.isinf(x) else round(float(x), 1)


def looks_like(m: sig.Match) -> str:
    """What a match says, in words."""
    margin = "" if math.isinf(m.margin) else f", margin {m.margin:.1f}"
    if m.verdict == "match":
        return f"looks like {m.best}" + (f" (over {m.second}{margin})" if m.second else "")
    if m.verdict == "ambiguous":
        return f"no clear match: closest {m.candidate}, then {m.second}{margin}"
    return f"looks like none of the trained modalities (closest {m.candidate}, distance {m.scores[m.candidate]:.1f})"


# ------------------------------------------------------------------------------------------------------ features
_cache: Dict[tuple, dict] = {}  # (file, size, mtime, inode, reader) -> features: a run's checks do not read twice


def image_features(files: Sequence[str], reader_class: type) -> dict:
    """signature.case_features of a case's first channel (files[0]), read as nnU-Net reads it for prediction (the
    plans' reader class); the same features fingerprinting computed on the training cases."""
    key = (*file_key(files[0]), reader_class.__name__)
    if key not in _cache:
        image, properties = reader_class().read_images([files[0]])
        if len(_cache) >= MAX_CACHED:
            _cache.clear()
        _cache[key] = sig.case_features(image, properties["spacing"])
    return _cache[key]


def features_of_cases(cases: Mapping[str, Sequence[str]], reader_class: type, num_workers: int = 4
                      ) -> Dict[str, dict]:
    """{case: features} of every case ({case: its image files}), read on `num_workers` threads. A file that cannot be
    read is a ModalityCheckError naming it."""
    def one(item):
        case, files = item
        try:
            return case, image_features(files, reader_class)
        except Exception as e:  # noqa: BLE001 (any reader's error): name the file
            return case, f"{files[0]} cannot be read for the modality check ({str(e).strip().splitlines()[-1]})"

    with ThreadPoolExecutor(max(1, min(num_workers, len(cases)))) as pool:
        results = dict(pool.map(one, cases.items()))
    bad = [r for r in results.values() if isinstance(r, str)]
    if bad:
        raise ModalityCheckError("\n".join(bad))
    return results


# ------------------------------------------------------------------------------------------------------ the check
class ModalityCheck:
    """The modality signatures of a model's plans, and what they say about input cases.

    `signatures` None (plans made before the signatures) or of another feature version: `usable` is False and
    `why_unusable` says why, in a sentence. `modalities`: the model's (conditioning order); signatures of modalities
    the model was not trained on (an MR signature in the plans of a CT-only baseline) still take part, so that an MR
    image given to it is recognised as MR."""

    def __init__(self, signatures: Optional[dict], modalities: Sequence[str]):
        self.modalities = list(modalities)
        self.signatures = signatures
        self.why_unusable: Optional[str] = None
        if not signatures or not signatures.get("modalities"):
            self.why_unusable = ("the model's plans hold no modality signatures (they were made before nnunet-cin "
                                 "learned them; nnUNetv2_plan_and_preprocess_cin makes plans with them)")
        elif signatures.get("version") != sig.VERSION:
            self.why_unusable = (f"the model's modality signatures are of feature version {signatures.get('version')}"
                                 f", this nnunet-cin computes version {sig.VERSION}")
        self.usable = self.why_unusable is None
        self.known = list(signatures["modalities"]) if self.usable else []
        self.unsigned = [m for m in self.modalities if m not in self.known]  # model modalities without a signature

    def match(self, features: Mapping[str, float]) -> sig.Match:
        return sig.match(self.signatures, features)

    def check_given(self, given: Mapping[str, CaseModality], features: Mapping[str, dict], flag: str = "-m"
                    ) -> Dict[str, CaseModality]:
        """The given decisions with their match; ModalityCheckError listing every case that clearly looks like
        another modality than it was given. Cases given a modality that has no signature are not checked."""
        out, wrong = {}, []
        for case, decision in given.items():
            if decision.modality not in self.known:
                out[case] = decision
                continue
            m = self.match(features[case])
            out[case] = CaseModality(decision.modality, decision.decided_by, m)
            if m.verdict == "match" and m.best != decision.modality:
                wrong.append(f"{case}: given {decision.modality} ({_how(decision, flag)}), looks like {m.best} "
                             f"(margin {_margin(m)})")
        if wrong:
            raise ModalityCheckError(
                f"{len(wrong)} of {len(given)} input case(s) do not look like the modality they were given, so "
                f"nothing was predicted or written. Each image was compared with what every modality's training "
                f"images looked like (the modality signatures in the model's plans); a clear match needs a margin of "
                f"{self.min_margin:g}:\n  - " + "\n  - ".join(wrong) +
                f"\nGive each case its modality ({flag} NAME for a folder of one modality, or {flag} auto: each case "
                f"as the modality it looks like). If the images really are of the modality given (e.g. intensities that "
                f"differ from the training images'), override the check: {OVERRIDE}.")
        return out

    def recognise(self, cases: Sequence[str], features: Mapping[str, dict], flag: str) -> Dict[str, CaseModality]:
        """-m auto: each case as the modality its signature clearly matches; ModalityCheckError listing every case
        that matches none clearly, or matches a modality the model was not trained on."""
        out, unknown = {}, []
        for case in cases:
            m = self.match(features[case])
            if m.verdict == "match" and m.best in self.modalities:
                out[case] = CaseModality(m.best, BY_SIGNATURE, m)
            elif m.verdict == "match":
                unknown.append(f"{case}: looks like {m.best}, a modality this model was not trained on (it serves "
                               f"{self.modalities})")
            else:
                unknown.append(f"{case}: {looks_like(m)}")
        if unknown:
            raise ModalityCheckError(
                f"{flag} auto: {len(unknown)} of {len(cases)} case(s) match no modality clearly (a clear match needs "
                f"a margin of {self.min_margin:g}), so nothing was predicted or written:\n  - " + "\n  - ".join(unknown)
                + f"\nPredict these cases with {flag} NAME (the modality they are), or name them after the model's "
                  f"rules (modality_patterns in its dataset.json).")
        return out

    @property
    def min_margin(self) -> float:
        return float(self.signatures.get("min_margin", sig.MIN_MARGIN)) if self.usable else sig.MIN_MARGIN


def _how(decision: CaseModality, flag: str) -> str:
    return "by the model's dataset.json rules" if decision.decided_by == BY_RULES else f"by {flag}"


def _margin(m: sig.Match) -> str:
    return "-" if math.isinf(m.margin) else f"{m.margin:.1f}"


def table(decisions: Mapping[str, CaseModality]) -> List[str]:
    """The run's decisions, one line per case: case, modality, how it was decided, what the check saw."""
    width = max([len(c) for c in decisions] + [4])
    mod_width = max([len(d.modality) for d in decisions.values()] + [8])
    return [f"  {c:<{width}}  {d.modality:<{mod_width}}  {d.decided_by:<5}  {d.describe()}"
            for c, d in decisions.items()]


def unclear(decisions: Mapping[str, CaseModality]) -> Dict[str, CaseModality]:
    """Checked cases predicted as given although their image matches no modality clearly."""
    return {c: d for c, d in decisions.items() if d.match is not None and d.match.verdict != "match"}


def array_features(image: np.ndarray, properties: Mapping) -> dict:
    """case_features of an image array as nnU-Net's readers return it ((c, z, y, x), properties['spacing'])."""
    return sig.case_features(image, properties["spacing"])


# ------------------------------------------------------------------------------------------------------ the record
RECORD = "modalities.json"


@contextmanager
def _locked(folder: str):
    """Exclusive lock on a folder (runs of -num_parts share one output folder): flock on the folder itself, which
    leaves no file behind. Without fcntl (Windows) no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def record_decisions(folder: str, decisions: Mapping[str, CaseModality]) -> str:
    """Write (or update) `folder`/modalities.json: {case: CaseModality.record()}, sorted by case; the entries of cases
    of earlier runs into the same folder are kept, this run's replace theirs. Written aside, then renamed."""
    path = os.path.join(folder, RECORD)
    with _locked(folder):
        try:
            with open(path) as f:
                cases = json.load(f)
        except (OSError, ValueError):
            cases = {}
        if not isinstance(cases, dict):  # not ours: replaced
            cases = {}
        cases.update({c: d.record() for c, d in decisions.items()})
        fd, tmp = tempfile.mkstemp(prefix=f".{RECORD}.", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump(dict(sorted(cases.items())), f, indent=2)
        os.replace(tmp, path)
    return path
