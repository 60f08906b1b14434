"""Which modality is each case? The dataset.json rules, validated, in one place.

dataset.json is nnU-Net v2's, plus three keys (documentation/dataset_and_planning.md):

    "modalities":        ["CT", "MR"]                      ordered names; order = conditioning index
    "modality_patterns": {"CT": "^ct_", "MR": "^mr_"}      modality -> regular expression (re.search on the case id)
    "case_modalities":   {"odd_case_017": "MR"}            optional per-case overrides (win over the patterns)

A case's modality is `case_modalities[case]` if present, else the one modality whose pattern matches its identifier.
No match, several matches, or a name that is not in `modalities` is a ModalityError that names the case (or key) and
says what to change. A dataset with a single modality may leave out `modality_patterns`: every case is that modality.

Used by fingerprinting, planning, preprocessing, training, prediction and evaluation alike. The case identifier of a
file (input image CASE_0000.nii.gz, label or prediction CASE.nii.gz, preprocessed case) comes from the
`case_id_from_*` functions at the end of this module: the one place that knows nnU-Net's file naming.
"""
import json
import os
import re
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Union

MODALITY_KEYS = ("modalities", "modality_patterns", "case_modalities")

EXAMPLE = ('  "modalities": ["CT", "MR"],\n'
           '  "modality_patterns": {"CT": "^ct_", "MR": "^mr_"},\n'
           '  "case_modalities": {"odd_case_017": "MR"}    (optional: per-case overrides)')


class ModalityError(ValueError):
    """A dataset.json modality key, or a case, that the rules cannot handle. The message says what to change."""


def _where(source: Optional[str]) -> str:
    return f"dataset.json ({source})" if source else "dataset.json"


def has_modality_keys(dataset_json: Mapping) -> bool:
    return "modalities" in dataset_json


class ModalityRules:
    """The validated modality rules of one dataset.json. Build with `ModalityRules.from_dataset_json`."""

    def __init__(self, modalities: Sequence[str], patterns: Optional[Mapping[str, str]] = None,
                 case_modalities: Optional[Mapping[str, str]] = None, source: Optional[str] = None):
        where = _where(source)
        self.source = source
        if isinstance(modalities, str) or not isinstance(modalities, (list, tuple)) or not modalities:
            raise ModalityError(f'{where}: "modalities" must be a non-empty list of names, e.g. ["CT", "MR"]; got '
                                f'{modalities!r}')
        bad = [m for m in modalities if not isinstance(m, str) or not m.strip()]
        if bad:
            raise ModalityError(f'{where}: "modalities" holds invalid name(s) {bad!r}; use non-empty strings such as '
                                f'"CT" or "MR"')
        dupes = sorted({m for m in modalities if list(modalities).count(m) > 1})
        if dupes:
            raise ModalityError(f'{where}: "modalities" lists {dupes} more than once; list each name once')
        self.modalities: List[str] = list(modalities)

        if patterns is None:
            if len(self.modalities) > 1:
                raise ModalityError(
                    f'{where} has "modalities" {self.modalities} but no "modality_patterns": add one regular '
                    f'expression per modality that matches its case identifiers, e.g.\n{EXAMPLE}')
            patterns = {self.modalities[0]: ""}  # one modality: every case
        if not isinstance(patterns, Mapping):
            raise ModalityError(f'{where}: "modality_patterns" must be an object {{modality: regex}}, e.g. '
                                f'{{"CT": "^ct_", "MR": "^mr_"}}; got {patterns!r}')
        self.patterns: Dict[str, str] = {}
        self._compiled = {}
        for name, pattern in patterns.items():
            if name not in self.modalities:
                raise ModalityError(f'{where}: "modality_patterns" has key "{name}", which is not in "modalities" '
                                    f'{self.modalities}; rename the key or add "{name}" to "modalities"')
            if not isinstance(pattern, str):
                raise ModalityError(f'{where}: "modality_patterns"["{name}"] must be a regular expression string, '
                                    f'got {pattern!r}')
            try:
                self._compiled[name] = re.compile(pattern)
            except re.error as e:
                raise ModalityError(f'{where}: "modality_patterns"["{name}"] = {pattern!r} is not a valid regular '
                                    f'expression ({e}); fix the pattern (Python re syntax, matched with re.search)'
                                    ) from None
            self.patterns[name] = pattern

        if case_modalities is None:
            case_modalities = {}
        if not isinstance(case_modalities, Mapping):
            raise ModalityError(f'{where}: "case_modalities" must be an object {{case identifier: modality}}, e.g. '
                                f'{{"odd_case_017": "MR"}}; got {case_modalities!r}')
        bad = {c: m for c, m in case_modalities.items() if m not in self.modalities}
        if bad:
            raise ModalityError(f'{where}: "case_modalities" assigns unknown modality name(s): '
                                + ", ".join(f'case "{c}" -> "{m}"' for c, m in bad.items())
                                + f'; use one of {self.modalities} or add the name to "modalities"')
        self.case_modalities: Dict[str, str] = {str(c): m for c, m in case_modalities.items()}
        self._name_index = {m: i for i, m in enumerate(self.modalities)}

    # ------------------------------------------------------------------------------------------------------- build
    @classmethod
    def from_dataset_json(cls, dataset_json: Union[Mapping, str, os.PathLike],
                          source: Optional[str] = None) -> "ModalityRules":
        """Rules from a dataset.json dict (or its path). `source` names the file in error messages."""
        if isinstance(dataset_json, (str, os.PathLike)):
            source = source or str(dataset_json)
            with open(dataset_json) as f:
                dataset_json = json.load(f)
        if not has_modality_keys(dataset_json):
            raise ModalityError(
                f'{_where(source)} has no "modalities" key, so the modality of each case is unknown. Add the '
                f'modality keys next to "channel_names", e.g.\n{EXAMPLE}')
        return cls(dataset_json["modalities"], dataset_json.get("modality_patterns"),
                   dataset_json.get("case_modalities"), source)

    def to_dict(self) -> dict:
        """The dataset.json keys these rules were made from (JSON-ready)."""
        d = {"modalities": list(self.modalities), "modality_patterns": dict(self.patterns)}
        if self.case_modalities:
            d["case_modalities"] = dict(self.case_modalities)
        return d

    # ------------------------------------------------------------------------------------------------------ lookup
    def _match(self, case_id: str) -> Union[str, ModalityError]:
        case_id = str(case_id)
        if case_id in self.case_modalities:
            return self.case_modalities[case_id]
        hits = [m for m in self.modalities if m in self._compiled and self._compiled[m].search(case_id)]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            return ModalityError(
                f'case "{case_id}" matches none of the "modality_patterns" {self.patterns}: change a pattern so that '
                f'it matches, or add "{case_id}" to "case_modalities" (e.g. "case_modalities": {{"{case_id}": '
                f'"{self.modalities[0]}"}}) in {_where(self.source)}')
        return ModalityError(
            f'case "{case_id}" matches several "modality_patterns" ({", ".join(f"{m}: {self.patterns[m]!r}" for m in hits)}): '
            f'make the patterns exclusive (e.g. anchor them with ^), or add "{case_id}" to "case_modalities" in '
            f'{_where(self.source)}')

    def modality_of(self, case_id: str) -> str:
        """Modality name of a case identifier (raises ModalityError naming the case)."""
        r = self._match(case_id)
        if isinstance(r, ModalityError):
            raise r
        return r

    def index_of(self, case_id: str) -> int:
        """Conditioning index of a case identifier."""
        return self._name_index[self.modality_of(case_id)]

    def index_of_name(self, name: str) -> int:
        """Conditioning index of a modality name (raises ModalityError listing the valid names)."""
        if name not in self._name_index:
            raise ModalityError(f'unknown modality "{name}"; this dataset\'s modalities are {self.modalities}')
        return self._name_index[name]

    def resolve(self, case_ids: Iterable[str], modality: Optional[str] = None) -> Dict[str, str]:
        """{case id: modality name} for all cases; one ModalityError listing EVERY case that cannot be resolved.
        `modality`: this name for every case instead of the rules (a user's -m NAME), checked against `modalities`."""
        if modality is not None:
            self.index_of_name(modality)
            return {str(c): modality for c in case_ids}
        out, errors = {}, []
        for c in case_ids:
            r = self._match(c)
            if isinstance(r, ModalityError):
                errors.append(str(r))
            else:
                out[str(c)] = r
        if errors:
            head = f"{len(errors)} case(s) have no modality:\n" if len(errors) > 1 else ""
            raise ModalityError(head + "\n".join(f"- {e}" if len(errors) > 1 else e for e in errors))
        return out

    def check_case_modalities_exist(self, case_ids: Iterable[str]) -> None:
        """Every `case_modalities` entry must name an existing case (a typo would otherwise be silently ignored)."""
        existing = set(map(str, case_ids))
        missing = [c for c in self.case_modalities if c not in existing]
        if missing:
            raise ModalityError(
                f'{_where(self.source)}: "case_modalities" names case(s) that do not exist in the dataset: '
                f'{", ".join(missing)}; fix the identifier(s) (the file name without _0000 and the file ending) or '
                f'remove the entries')

    def resolve_training_cases(self, case_ids: Iterable[str]) -> Dict[str, str]:
        """{case id: modality name} of a dataset's training cases, the one check of the rules against them (used by
        the planning command, the fingerprint extractor and the planners): every "case_modalities" entry names a
        case, every case resolves, every modality has a case. One ModalityError otherwise."""
        case_ids = [str(c) for c in case_ids]
        self.check_case_modalities_exist(case_ids)
        case_modality = self.resolve(case_ids)
        empty = [m for m, cases in self.cases_of(case_modality).items() if not cases]
        if empty:
            raise ModalityError(f'{_where(self.source)}: modality/modalities {empty} listed in "modalities" have no '
                                f'training case: every modality needs training cases; fix "modality_patterns"/'
                                f'"case_modalities" or remove the name(s)')
        return case_modality

    def cases_of(self, mapping: Mapping[str, str]) -> Dict[str, List[str]]:
        """{modality: [case ids]} from a resolved {case: modality} map, in conditioning order (empty lists kept)."""
        out = {m: [] for m in self.modalities}
        for c, m in mapping.items():
            out[m].append(c)
        return out

    def __repr__(self):
        return (f"ModalityRules(modalities={self.modalities}, patterns={self.patterns}, "
                f"case_modalities={self.case_modalities})")


class CheckedRules(NamedTuple):
    """A dataset's rules checked against its training cases (`ModalityRules.resolve_training_cases`): what the
    planning command builds once per dataset and hands to the fingerprint extractor and the planner."""
    rules: ModalityRules
    case_modality: Dict[str, str]  # {training case: modality}

    @classmethod
    def of(cls, dataset_json: Mapping, case_ids: Iterable[str], source: Optional[str] = None) -> "CheckedRules":
        rules = ModalityRules.from_dataset_json(dataset_json, source)
        return cls(rules, rules.resolve_training_cases(case_ids))


# ------------------------------------------------------------------------------------------------------------ files
# Which case a file belongs to. nnU-Net names every file after its case identifier (CASE):
#   training case        the key of nnU-Net's dataset (imagesTr/labelsTr, or dataset.json "dataset"): CASE itself
#   input image file     CASE_XXXX<file_ending>  (imagesTr, imagesTs, prediction inputs; XXXX: the channel)
#   label / output file  CASE<file_ending>       (labelsTr, reference labels, predictions)
#   preprocessed case    <folder>/CASE (the name nnU-Net's preprocessors write to), CASE.b2nd, CASE_seg.b2nd, CASE.pkl
# <file_ending> is the dataset's (dataset.json "file_ending"). A case's modality: `ModalityRules.modality_of(CASE)`.
_CHANNEL_SUFFIX = re.compile(r"_(\d{4})$")
# nnU-Net's preprocessed files: data CASE.b2nd / CASE.npy / CASE.npz, segmentation CASE_seg.b2nd / CASE_seg.npy,
# properties CASE.pkl (nnUNetDatasetBlosc2 / nnUNetDatasetNumpy)
_PREPROCESSED_SUFFIX = re.compile(r"(_seg)?\.(b2nd|npy)$|\.(npz|pkl)$")


def _without_ending(file: str, file_ending: str) -> str:
    name = os.path.basename(str(file))
    return name[:-len(file_ending)] if file_ending and name.endswith(file_ending) else name


def case_id_from_image_file(file: str, file_ending: str) -> str:
    """nnU-Net input image file (CASE_0000.nii.gz) -> case identifier (CASE): the file ending and nnU-Net's channel
    suffix (_XXXX, four digits) are removed. Only for image files: a label or prediction file (CASE.nii.gz) whose case
    id ends in four digits (ct_0003.nii.gz) would lose them; use `case_id_from_label_file` there."""
    return _CHANNEL_SUFFIX.sub("", _without_ending(file, file_ending))


def channel_of_image_file(file: str, file_ending: str) -> Optional[int]:
    """The channel of an nnU-Net input image file (CASE_0001.nii.gz -> 1); None without a channel suffix."""
    m = _CHANNEL_SUFFIX.search(_without_ending(file, file_ending))
    return int(m.group(1)) if m else None


def case_id_from_label_file(file: str, file_ending: str) -> str:
    """Label, reference or prediction file (CASE.nii.gz: labelsTr, nnUNetv2_predict(_cin)'s outputs) -> CASE."""
    return _without_ending(file, file_ending)


def case_id_from_preprocessed_file(file: str) -> str:
    """A preprocessed case (nnU-Net's truncated name <folder>/CASE, or one of its files CASE.b2nd, CASE_seg.b2nd,
    CASE.pkl, CASE.npz, CASE.npy, CASE_seg.npy) -> CASE."""
    return _PREPROCESSED_SUFFIX.sub("", os.path.basename(str(file).replace("\\", "/")))


def case_ids_from_image_files(files: Iterable[str], file_ending: str) -> List[str]:
    """Unique case identifiers of nnU-Net input image files, in first-seen order."""
    seen = {}
    for f in files:
        seen.setdefault(case_id_from_image_file(f, file_ending), None)
    return list(seen)
