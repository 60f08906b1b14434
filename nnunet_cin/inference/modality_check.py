"""Never trust the modality blindly: every input case checked against physics and against what each modality looked
like in training.

A conditional model predicts well only for the modality it is told; told the wrong one (a wrong -m, a file named
after the wrong rule) it still returns a segmentation, a bad one, with exit code 0. Before anything is predicted or
written, `ModalityDecisions.of_files` (nnunet_cin.inference.decisions) reads every case's first channel with the
plans' reader and gathers its evidence (`features_of_cases` -> `CaseEvidence`): the signature features
(nnunet_cin.planning.signature: what each
modality's training cases looked like, in the plans) and what physics says about Hounsfield units
(nnunet_cin.inference.hounsfield). `ModalityCheck` decides, two parts each deciding what it can:

- physics decides "CT in HU or not" for any scanner and anatomy: a case given (or recognised as) a modality whose
  normalization needs HU (CTNormalization, noNorm, "CT..." schemes: hounsfield.needs_hu) is refused when it is not
  in HU, naming the fix (the DICOM rescale slope/intercept) and the storage that explains it (+1024 offset, x 0.5,
  (x + 1024) / 4); a case given another modality is refused when it is in HU (air at -1000, soft tissue near 0: a
  CT), or when undoing such a storage makes it a training-like CT;
- the signatures decide which trained modality a case resembles (they separate MR sequences): a case closer to
  another modality than to the one given by a clear margin (min_margin) is refused, also when it is unlike every
  training image (a scan from another hospital), unless physics rules that modality out;
- with -m auto, a case is predicted as a modality only when it is the closest by a clear margin, plausible (like the
  modality's training images) and physics agrees; otherwise an error names the case;
- a case without clear evidence (two modalities of one MR sequence, a crop that physics cannot judge and that is
  like no training image) is predicted as given, with a warning listing it (`unclear`).
Plans made before the signatures existed (or with features of another version) have none: the physical part still
runs, with one notice. `CaseModality` is the decision for one case, as recorded in the output folder's
modalities.json.
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

from nnunet_cin.inference import hounsfield as hf
from nnunet_cin.modalities import ModalityError
from nnunet_cin.planning import signature as sig

AUTO = "auto"  # -m auto: each case's modality recognised from the signatures
BY_RULES, BY_FLAG, BY_SIGNATURE = "rules", "-m", "auto"  # how a case's modality was decided (modalities.json)
OVERRIDE = "--skip-modality-check (Python: predictor.check_modalities = False)"


class ModalityCheckError(ModalityError):
    """Input cases whose images contradict the modality they were given, or that -m auto cannot recognise."""


@dataclass(frozen=True)
class CaseModality:
    """The modality one case is predicted as, how it was decided, and what its signature check said."""
    modality: str
    decided_by: str                    # BY_RULES, BY_FLAG or BY_SIGNATURE
    match: Optional[sig.Match] = None  # None: no signature compared
    hu: Optional[hf.HUEvidence] = None  # None: HU not measured

    @property
    def hu_measured(self) -> bool:
        return self.hu is not None and self.hu.reason != hf.NOT_MEASURED

    @property
    def checked(self) -> bool:
        return self.match is not None or self.hu_measured

    def record(self) -> dict:
        """JSON-ready (modalities.json)."""
        out = {"modality": self.modality, "decided_by": self.decided_by, "checked": self.checked}
        if self.match is not None:
            out.update(verdict=self.match.verdict, looks_like=self.match.candidate, runner_up=self.match.second,
                       margin=_finite(self.match.margin))
        if self.hu_measured:
            out["hounsfield"] = self.hu.verdict
        return out

    def describe(self) -> str:
        """One line for the run's table: what the check saw."""
        parts = [looks_like(self.match)] if self.match is not None else []
        if self.hu_measured:
            parts.append(hf.describe(self.hu))
        return "; ".join(parts) or "not checked"


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


# ------------------------------------------------------------------------------------------------------ evidence
@dataclass(frozen=True)
class CaseEvidence:
    """What one case's image says: its signature features, what physics says about HU (nnunet_cin.inference.
    hounsfield), and for an image not in HU that a common off-HU storage explains, the features of the image with
    that storage undone (whether it then looks like a training CT)."""
    features: Mapping[str, float]
    hu: hf.HUEvidence
    undone: Optional[Mapping[str, float]] = None


def array_evidence(image: np.ndarray, spacing: Sequence[float]) -> CaseEvidence:
    """CaseEvidence of an image ((c, z, y, x), channel 0; or (z, y, x)) with its spacing."""
    hu = hf.hu_evidence(image)
    undone = sig.case_features(hf.undone(image, hu.undo), spacing) if hu.undo else None
    return CaseEvidence(sig.case_features(image, spacing), hu, undone)


def _as_evidence(x) -> CaseEvidence:
    """Plain feature dicts (callers that measured no HU evidence) as CaseEvidence that decides nothing physically."""
    return x if isinstance(x, CaseEvidence) else CaseEvidence(x, hf.HUEvidence("unknown", hf.NOT_MEASURED))


def image_features(files: Sequence[str], reader_class: type) -> CaseEvidence:
    """array_evidence of a case's first channel (files[0]), read as nnU-Net reads it for prediction (the plans'
    reader class); the features are those fingerprinting computed on the training cases."""
    image, properties = reader_class().read_images([files[0]])
    return array_evidence(image, properties["spacing"])


def features_of_cases(cases: Mapping[str, Sequence[str]], reader_class: type, num_workers: int = 4
                      ) -> Dict[str, CaseEvidence]:
    """{case: CaseEvidence} of every case ({case: its image files}), read on `num_workers` threads. A file that cannot
    be read is a ModalityCheckError naming it."""
    def one(item):
        case, files = item
        try:
            return case, image_features(files, reader_class)
        except Exception as e:  # noqa: BLE001 (any reader's error): name the file
            return case, f"{files[0]} cannot be read for the modality check ({str(e).strip().splitlines()[-1]})"

    if not cases:
        return {}
    with ThreadPoolExecutor(max(1, min(num_workers, len(cases)))) as pool:
        results = dict(pool.map(one, cases.items()))
    bad = [r for r in results.values() if isinstance(r, str)]
    if bad:
        raise ModalityCheckError("\n".join(bad))
    return results


# ------------------------------------------------------------------------------------------------------ the check
HU_FIX = ("if it is a CT, convert it to Hounsfield units (apply the DICOM rescale slope and intercept: HU = stored "
          "value x RescaleSlope + RescaleIntercept, as dcm2niix and SimpleITK's DICOM reader do); if it is not a CT, "
          "give it its modality")


class ModalityCheck:
    """The modality signatures of a model's plans, what physics says about HU, and what they decide about input cases.

    Two parts (see the decision table in the documentation):
    - physics (nnunet_cin.inference.hounsfield) decides CT in HU versus not: a case given (or recognised as) a
      modality whose normalization needs HU (`hu_modalities`: CTNormalization, noNorm, "CT..." schemes) is refused
      when it is not in HU; a case given another modality is refused when it is in HU (air at -1000, soft tissue near
      0: a CT) and the model has a modality that needs HU;
    - the signatures decide which of the trained modalities an image resembles (they separate MR sequences): a case
      closer to another modality than the one it was given by a clear margin (min_margin) is refused, also when it is
      unlike every training image (a scan of another hospital); -m auto takes a modality only when it is the closest
      by a clear margin and plausible (like its training images).

    `signatures` None (plans made before the signatures) or of another feature version: `usable` is False and
    `why_unusable` says why; the physical part still runs. `modalities`: the model's (conditioning order); signatures
    of modalities the model was not trained on (an MR signature in the plans of a CT-only baseline) still take part,
    so that an MR image given to it is recognised as MR."""

    def __init__(self, signatures: Optional[dict], modalities: Sequence[str], hu_modalities: Sequence[str] = ()):
        self.modalities = list(modalities)
        self.signatures = signatures
        self.hu_modalities = [m for m in hu_modalities]
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

    def match(self, features) -> Optional[sig.Match]:
        return sig.match(self.signatures, _as_evidence(features).features) if self.usable else None

    def checks(self, modality: str) -> bool:
        """Whether cases given `modality` are checked at all (a signature, or HU physics)."""
        return modality in self.known or any(m in self.modalities for m in self.hu_modalities)

    # -------------------------------------------------------------------------------------------- the two parts
    def _physics_objection(self, given: str, e: CaseEvidence) -> Optional[str]:
        """Why physics rules out `given` for this image, or None."""
        if given in self.hu_modalities and e.hu.verdict == "not_hu":
            likely = f"; it looks like a CT {e.hu.undo}" if self._disguised_ct(e) else ""
            return (f"{given}'s normalization needs Hounsfield units, but the image is not in HU: {e.hu.reason}"
                    f"{likely}. Fix: {HU_FIX}")
        others = [m for m in self.hu_modalities if m in self.modalities]
        if given not in self.hu_modalities and others and e.hu.verdict == "hu":
            return (f"the image is in Hounsfield units ({e.hu.reason}): a CT, not {given}; give it {others[0]} (the "
                    f"model's modality in HU)")
        if given not in self.hu_modalities and others and self._disguised_ct(e):
            return (f"the image looks like a CT {e.hu.undo}: undone, it is in HU and matches {others[0]}'s training "
                    f"images. Fix: convert it to Hounsfield units (apply the DICOM rescale slope and intercept) and "
                    f"give it {others[0]}")
        return None

    def _disguised_ct(self, e: CaseEvidence) -> bool:
        """A CT stored off HU (hounsfield.OFF_HU) that, undone, clearly matches a modality in HU of the model."""
        if not (e.hu.undo and e.undone is not None and self.usable):
            return False
        m = sig.match(self.signatures, e.undone)
        return m.verdict == "match" and m.best in self.hu_modalities

    def _closer_to_another(self, given: str, m: Optional[sig.Match], e: CaseEvidence) -> bool:
        """The signatures place the case closer to another modality than `given` by a clear margin (plausible or
        not), and physics does not rule that modality out."""
        if m is None or given not in self.known or m.candidate == given or m.margin < self.min_margin:
            return False
        if min(m.scores, key=m.scores.get) != m.candidate:  # the trimmed fit disagrees: no clear evidence
            return False
        if m.candidate in self.hu_modalities and e.hu.verdict == "not_hu":
            return False  # it cannot be a CT in HU: resembling the CTs' histogram shape is no evidence
        if given in self.hu_modalities and e.hu.verdict == "hu" and m.candidate not in self.hu_modalities:
            return False  # physics says CT in HU
        return True

    def check_given(self, given: Mapping[str, CaseModality], evidence: Mapping[str, object], flag: str = "-m"
                    ) -> Dict[str, CaseModality]:
        """The given decisions with their match; ModalityCheckError listing every case that physics or the
        signatures rule out for the modality it was given. Cases given a modality that neither part checks pass."""
        out, wrong = {}, []
        for case, decision in given.items():
            if not self.checks(decision.modality):
                out[case] = decision
                continue
            e = _as_evidence(evidence[case])
            m = self.match(e) if decision.modality in self.known else None
            out[case] = CaseModality(decision.modality, decision.decided_by, m, e.hu)
            head = f"{case}: given {decision.modality} ({_how(decision, flag)})"
            why = self._physics_objection(decision.modality, e)
            clear_other = m is not None and m.verdict == "match" and m.best != decision.modality
            if why is not None and decision.modality in self.hu_modalities and not clear_other:
                wrong.append(f"{head}: {why}")  # not in HU, and like no other modality: the fix comes first
                continue
            if self._closer_to_another(decision.modality, m, e):
                unlike = "" if m.plausible.get(m.candidate) else (
                    f"; it is unlike all training images (distance {m.scores[m.candidate]:.1f} to {m.candidate}'s), "
                    f"but clearly closer to {m.candidate} than to {decision.modality}")
                physics = f"; and {why[0].lower()}{why[1:]}" if why else ""
                wrong.append(f"{head}, looks like {m.candidate} (margin {_margin(m)} over {m.second}){unlike}"
                             f"{physics}")
                continue
            if why is not None:
                wrong.append(f"{head}: {why}")
        if wrong:
            raise ModalityCheckError(
                f"{len(wrong)} of {len(given)} input case(s) do not look like the modality they were given, so "
                f"nothing was predicted or written. Each image was checked for Hounsfield units (air at -1000, soft "
                f"tissue near 0) and compared with what every modality's training images looked like (the modality "
                f"signatures in the model's plans; a clear match needs a margin of {self.min_margin:g}):\n  - "
                + "\n  - ".join(wrong) +
                f"\nGive each case its modality ({flag} NAME for a folder of one modality, or {flag} auto: each case "
                f"as the modality it looks like). If the images really are of the modality given (e.g. intensities that "
                f"differ from the training images'), override the check: {OVERRIDE}.")
        return out

    def recognise(self, cases: Sequence[str], evidence: Mapping[str, object], flag: str) -> Dict[str, CaseModality]:
        """-m auto: each case as the modality its signature matches clearly and plausibly, when physics agrees;
        ModalityCheckError listing every other case, and those that match a modality the model was not trained on."""
        out, unknown = {}, []
        for case in cases:
            e = _as_evidence(evidence[case])
            m = self.match(e)
            if m.verdict == "match" and m.best in self.modalities:
                why = self._physics_objection(m.best, e)
                if why is None:
                    out[case] = CaseModality(m.best, BY_SIGNATURE, m, e.hu)
                else:
                    unknown.append(f"{case}: looks like {m.best} to the signatures, but {why}")
            elif m.verdict == "match":
                unknown.append(f"{case}: looks like {m.best}, a modality this model was not trained on (it serves "
                               f"{self.modalities})")
            elif self._disguised_ct(e):
                unknown.append(f"{case}: {looks_like(m)}; but it looks like a CT {e.hu.undo}: undone, it is in HU "
                               f"and matches {m and sig.match(self.signatures, e.undone).best}'s training images. "
                               f"Fix: {HU_FIX}")
            else:
                physics = f"; physics: {e.hu.verdict} ({e.hu.reason})" if e.hu.reason != hf.NOT_MEASURED else ""
                unknown.append(f"{case}: {looks_like(m)}{physics}")
        if unknown:
            raise ModalityCheckError(
                f"{flag} auto: {len(unknown)} of {len(cases)} case(s) match no modality clearly (a clear match needs "
                f"a margin of {self.min_margin:g} and an image like the modality's training images, in Hounsfield "
                f"units for a modality that needs them), so nothing was predicted or written:\n  - "
                + "\n  - ".join(unknown)
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
    """Checked cases predicted as given although their image matches no modality clearly, or whose HU could not be
    confirmed for a modality that needs HU."""
    return {c: d for c, d in decisions.items()
            if (d.match is not None and d.match.verdict != "match")}


def array_features(image: np.ndarray, properties: Mapping) -> CaseEvidence:
    """array_evidence of an image array as nnU-Net's readers return it ((c, z, y, x), properties['spacing'])."""
    return array_evidence(image, properties["spacing"])


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


def record_decisions(folder: str, decisions: Mapping[str, CaseModality], kept: Sequence[str] = ()
                     ) -> List[tuple]:
    """Write (or update) `folder`/modalities.json: {case: CaseModality.record()}, sorted by case; the entries of cases
    of earlier runs into the same folder are kept, this run's replace theirs, except for `kept`: cases whose outputs
    an earlier run wrote and this run keeps (--continue_prediction), whose entry says what they were predicted with
    (a kept output without an entry is recorded with modality null). Written aside, then renamed, with the mode of
    the files nnU-Net writes beside it (umask). Returns (case, recorded modality, this run's modality) for each kept
    case this run would predict as another modality."""
    path = os.path.join(folder, RECORD)
    kept = set(kept)
    with _locked(folder):
        try:
            with open(path) as f:
                cases = json.load(f)
        except (OSError, ValueError):
            cases = {}
        if not isinstance(cases, dict):  # not ours: replaced
            cases = {}
        conflicts = []
        for c, d in decisions.items():
            if c not in kept:
                cases[c] = d.record()
            elif c not in cases or not isinstance(cases[c], dict):
                cases[c] = {"modality": None, "note": "output kept by --continue_prediction from a run that left no "
                                                      "record of its modality"}
            elif cases[c].get("modality") != d.modality:
                conflicts.append((c, cases[c].get("modality"), d.modality))
        fd, tmp = tempfile.mkstemp(prefix=f".{RECORD}.", dir=folder)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would differ from the outputs beside it
        with os.fdopen(fd, "w") as f:
            json.dump(dict(sorted(cases.items())), f, indent=2)
        os.replace(tmp, path)
    return conflicts
