"""Which modality each case of a prediction is predicted as: decided once, before anything is written.

Why a module of its own: deciding is the part of inference that users meet in errors and warnings (a case no rule
resolves, -m contradicting the rules, the modality check refusing a case, -m auto recognising cases), and it needs
none of nnU-Net's prediction machinery, only what a model brings: its modalities, its dataset.json rules and the
modality check of its plans. `ModalityDecisions` holds these (built once, when the predictor loads a model: the one
`ModalityRules` of a prediction command) and decides

- `of_files`: every case of a run of image files (predict_from_files(_sequential), nnUNetv2_predict_cin): the
  override for every case (-m NAME; Python: `predictor.modality_override`), else the model's rules; each case then
  checked (nnunet_cin.inference.modality_check). -m auto: each case as the modality it looks like;
- `of_arrays`: arrays given with their properties (predict_single_npy_array, predict_from_list_of_npy_arrays): each
  array's properties["modality"], else the override; checked the same way.

What they decide travels on in one carrier, each case's properties["modality"]: the run's preprocessing writes it
(nnunet_cin.inference.preprocessing) and the predictor conditions the network on it (nnunet_cin.inference.predictor).
"""
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet_cin.inference.hounsfield import hu_modalities
from nnunet_cin.inference.modality_check import (AUTO, BY_FLAG, BY_RULES, CaseModality, ModalityCheck, array_features,
                                                 features_of_cases, table, unclear)
from nnunet_cin.modalities import MODALITY_KEYS, ModalityError, ModalityRules, case_id_from_image_file
from nnunet_cin.plans import CINPlans

OVERRIDE_ATTRIBUTE = "predictor.modality_override"  # how messages name the override given from Python


def tell(message: str, warning: bool = False):
    """A decision, or a warning about one, for the user: warnings on stderr."""
    print(("WARNING: " if warning else "") + message, file=sys.stderr if warning else sys.stdout, flush=True)


class ModalityDecisions:
    """What decides the modality of a model's input cases: the model's `modalities` (conditioning order), its
    dataset.json `rules` (for new cases), the rules its plans were made with (to say when they differ) and the
    modality check of its plans (signatures, and which modalities need Hounsfield units)."""

    def __init__(self, modalities: Sequence[str], rules: ModalityRules, plans: dict, reader_class: type,
                 file_ending: str):
        self.modalities = list(modalities)
        self.rules = rules
        cin = CINPlans(plans)
        self.planned_rules: Optional[dict] = cin.rules
        self.check = ModalityCheck(cin.signatures, self.modalities, hu_modalities(plans))
        self.reader_class = reader_class  # reads a case's first channel for the check, as nnU-Net reads it
        self.file_ending = file_ending

    def name(self, modality: str) -> str:
        """`modality`, if the model serves it; a ModalityError naming the valid names otherwise."""
        if modality not in self.modalities:
            if modality == AUTO:
                raise ModalityError(f'"auto" is for all cases of a run ({OVERRIDE_ATTRIBUTE}, -m): give the modality '
                                    f'of one image by its name')
            raise ModalityError(f'unknown modality "{modality}": this model was trained on {self.modalities}; use '
                                f'one of these names (or "{AUTO}" for all cases of a run: each recognised)')
        return modality

    # ------------------------------------------------------------------------------------------------------ files
    def of_files(self, list_of_lists: List[List[str]], override: Optional[str] = None, check_modalities: bool = True,
                 flag: str = "-m") -> Dict[str, CaseModality]:
        """{case id: CaseModality} of every input case (its image files: one list per case): `override` for every
        case, else the model's dataset.json rules; `override` "auto": each case as the modality its image looks
        like. Then (unless `check_modalities` is False) every case's image is compared with the modality signatures
        of the model's plans and checked for Hounsfield units (nnunet_cin.inference.modality_check). One
        ModalityError lists every case that cannot be resolved, whose modality the model was not trained on, or that
        clearly looks like another modality than it was given. Prints the decision of every case; `flag` is how the
        messages name the override (-m, --modality)."""
        auto = override == AUTO
        if override is not None and not auto:
            self.name(override)
        cases = {case_id_from_image_file(files[0], self.file_ending): files for files in list_of_lists}
        check = self.check
        if auto and not check.usable:
            raise ModalityError(f"{flag} auto cannot recognise the cases: {check.why_unusable}. Pass {flag} NAME, or "
                                f"name the files after the model's rules")
        given = {} if auto else self._given(list(cases), override, flag)
        if not (auto or check_modalities):
            decisions = given
            tell("The modality check is off (--skip-modality-check / predictor.check_modalities = False): no case is "
                 "compared with the modality signatures of the model's plans.", warning=True)
        elif not check.usable and not any(check.checks(d.modality) for d in given.values()):
            decisions = given
            tell(f"The modality check is skipped: {check.why_unusable}.", warning=True)
        else:
            if not check.usable:
                tell(f"The signature part of the modality check is skipped: {check.why_unusable}. Only the "
                     f"Hounsfield-unit check runs (for {check.hu_modalities}).", warning=True)
            elif check.unsigned:
                tell(f"The model's plans hold no signature for {check.unsigned}: cases of "
                     f"{'these modalities' if len(check.unsigned) > 1 else 'this modality'} are not checked"
                     f"{' and cannot be recognised' if auto else ''}.", warning=True)
            to_check = cases if auto else {c: f for c, f in cases.items() if check.checks(given[c].modality)}
            features = features_of_cases(to_check, self.reader_class)
            decisions = (check.recognise(list(cases), features, flag) if auto
                         else check.check_given(given, features, flag))
        tell("Modality of each case (case, modality, decided by, modality check):\n" + "\n".join(table(decisions)))
        doubtful = unclear(decisions)
        if doubtful:
            tell(f"{len(doubtful)} case(s) match no modality clearly and are predicted as given; check that they are "
                 f"of the modality given:\n" +
                 "\n".join(f"  - {c}: given {d.modality}, {d.describe()}" for c, d in doubtful.items()), warning=True)
        return decisions

    def _given(self, case_ids: List[str], override: Optional[str], flag: str) -> Dict[str, CaseModality]:
        """Each case's modality by `override` or the model's rules; errors for unresolvable cases and modalities the
        model was not trained on; warnings when the override contradicts the rules, or the rules are not the
        plans'."""
        hint = (f"\nThis model's modalities: {self.modalities}. Pass {flag} NAME (Python: {OVERRIDE_ATTRIBUTE} = "
                f"NAME) to set the modality of every input case, or {flag} auto to have each recognised.")
        try:
            resolved = self.rules.resolve(case_ids, override)
        except ModalityError as e:
            raise ModalityError(f"{e}{hint}") from None
        untrained = {c: m for c, m in resolved.items() if m not in self.modalities}
        if untrained:
            raise ModalityError(f"{len(untrained)} case(s) are of a modality this model was not trained on: "
                                + ", ".join(f'"{c}" ({m})' for c, m in untrained.items()) + hint)
        if override is None:
            self._tell_rules_drift()
            return {c: CaseModality(m, BY_RULES) for c, m in resolved.items()}
        overridden = {}
        for c in case_ids:
            try:
                by_rules = self.rules.modality_of(c)
            except ModalityError:
                continue  # the rules say nothing about this case
            if by_rules != override:
                overridden[c] = by_rules
        if overridden:
            tell(f"{flag} {override} contradicts the model's dataset.json rules for {len(overridden)} case(s), "
                 f"predicted as {override} nonetheless: "
                 + ", ".join(f"{c} (rules: {m})" for c, m in overridden.items()), warning=True)
        return {c: CaseModality(m, BY_FLAG) for c, m in resolved.items()}

    def _tell_rules_drift(self):
        """The rules of the model's dataset.json decide the modality of new cases; say so when they are not the rules
        its plans (and so its training data) were made with."""
        planned, current = self.planned_rules, self.rules.to_dict()
        if planned is None or planned == current:
            return
        changed = [k for k in MODALITY_KEYS if planned.get(k) != current.get(k)]
        tell(f"The modality rules of the model's dataset.json ({self.rules.source}) differ from the ones its plans "
             f"were made with: " + "; ".join(f'"{k}" {current.get(k)} (plans: {planned.get(k)})' for k in changed) +
             ". New cases get their modality from the dataset.json rules (the model's current rules, the ones "
             "nnU-Net copied into the model folder and users edit for new file names); the training data was "
             "preprocessed with the plans' rules. If the change is a mistake, restore the plans' rules in that "
             "dataset.json, or give the modality with -m.", warning=True)

    # ----------------------------------------------------------------------------------------------------- arrays
    def of_arrays(self, images: List[np.ndarray], properties: List[dict], override: Optional[str] = None,
                  check_modalities: bool = True) -> List[dict]:
        """Copies of input arrays' properties naming their modality: properties["modality"], else `override`
        ("auto": recognised), each array checked against the modality signatures as files are (see `of_files`)."""
        given, unnamed = {}, []
        for i, p in enumerate(properties):
            modality = p.get("modality")
            if modality is not None and override not in (None, AUTO) and modality != override:
                raise ModalityError(f'image {i}: properties["modality"] is "{modality}" but {OVERRIDE_ATTRIBUTE} is '
                                    f'"{override}"; set one of them')
            if modality is None and override is None:
                raise ModalityError(f'image {i} has no modality: set {OVERRIDE_ATTRIBUTE} = NAME (or "auto") or its '
                                    f'properties["modality"] (one of {self.modalities})')
            if modality is None and override == AUTO:
                unnamed.append(f"image {i}")
            else:
                given[f"image {i}"] = CaseModality(self.name(modality or override), BY_FLAG)
        check = self.check
        if unnamed and not check.usable:
            raise ModalityError(f'{OVERRIDE_ATTRIBUTE} = "auto" cannot recognise the images: {check.why_unusable}')
        if (check.usable or check.hu_modalities) and (check_modalities or unnamed):
            features = {f"image {i}": array_features(image, p) for i, (image, p) in enumerate(zip(images, properties))}
            checked = {c: d for c, d in given.items() if check.checks(d.modality)}
            if check_modalities and checked:
                check.check_given(checked, features, OVERRIDE_ATTRIBUTE)
            given.update(check.recognise(unnamed, features, OVERRIDE_ATTRIBUTE) if unnamed else {})
        return [dict(p, modality=given[f"image {i}"].modality) for i, p in enumerate(properties)]
