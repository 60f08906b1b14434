"""What the modality check decides on real scans and on realistic variants of generated cases.

    python benchmarks/bench_modality_check_real.py [--seeds 300 301 302 303 304]

Signatures are learned from generated "basic" hearts (5 CT + 5 MR, CT's absolute scale checked as
nnUNetv2_plan_and_preprocess_cin plans it: CTNormalization), as for the models of the test suite. Every case of the
real set (tests/data/real_scans: a real head CT, two real brain MRs, and variants of them) and of the realistic set
(tests/scan_variants.realistic_cases) is given -m CT, -m MR and -m auto. Printed: every decision, then the counts:
- false refusal: a case in HU (or an MR) given its own modality and refused, or -m auto refusing it;
- false acceptance: a case given the other modality and predicted; -m auto taking it for the other modality; a CT
  not in HU predicted as CT, or by -m auto.
("-m auto refused" is counted apart: it is an error naming the case, never a wrong segmentation.)
"""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from scan_variants import real_cases, realistic_cases  # noqa: E402

from nnunet_cin.dataset_conversion.synthetic import generate_case  # noqa: E402
from nnunet_cin.inference.modality_check import (BY_FLAG, CaseModality, ModalityCheck,  # noqa: E402
                                                 ModalityCheckError, array_evidence)
from nnunet_cin.planning import signature as sig  # noqa: E402


def training_signatures(n: int = 5) -> dict:
    feats = {}
    for m in ("CT", "MR"):
        feats[m] = []
        for s in range(n):
            image = generate_case(m, s, (24, 24, 24))[0]
            feats[m].append(sig.case_features(sitk.GetArrayFromImage(image)[None].astype(np.float32),
                                              image.GetSpacing()[::-1]))
    return json.loads(json.dumps(sig.build_signatures(feats, ["CT"])))


def decide(check: ModalityCheck, case) -> dict:
    e = array_evidence(case.image, case.spacing)
    out = {"hu": e.hu.verdict, "looks": check.match(e).candidate, "plausible": check.match(e).verdict == "match"}
    for given in ("CT", "MR"):
        try:
            check.check_given({case.name: CaseModality(given, BY_FLAG)}, {case.name: e})
            out[given] = "predicted"
        except ModalityCheckError:
            out[given] = "refused"
    try:
        out["auto"] = check.recognise([case.name], {case.name: e}, "-m")[case.name].modality
    except ModalityCheckError:
        out["auto"] = "refused"
    return out


def score(case, d: dict) -> Counter:
    c = Counter()
    other = "MR" if case.modality == "CT" else "CT"
    if case.in_hu:
        c["false refusal (own -m)"] += d[case.modality] == "refused"
        c["auto refused"] += d["auto"] == "refused"
    else:  # a CT not in HU: refused whatever it is given, or at least not predicted as CT
        c["false acceptance (non-HU CT as CT)"] += d["CT"] == "predicted"
        c["auto refused"] += d["auto"] == "refused"
    c["false acceptance (other -m)"] += d[other] == "predicted"
    c["false acceptance (auto: other)"] += d["auto"] == other
    c["false acceptance (auto: non-HU CT)"] += (not case.in_hu) and d["auto"] == "CT"
    c["cases"] += 1
    return c


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[300, 301, 302, 303, 304])
    args = parser.parse_args()
    check = ModalityCheck(training_signatures(), ["CT", "MR"], ["CT"])
    totals = {}
    print(f"{'case':36s} {'is':3s} {'HU?':7s} {'physics':8s} {'looks':5s} {'plaus.':6s} {'-m CT':9s} {'-m MR':9s} "
          f"-m auto")
    for name, cases in (("real", real_cases()), ("realistic", realistic_cases(tuple(args.seeds)))):
        total = Counter()
        for case in cases:
            d = decide(check, case)
            total += score(case, d)
            print(f"{case.name:36s} {case.modality:3s} {str(case.in_hu):7s} {d['hu']:8s} {d['looks']:5s} "
                  f"{str(d['plausible']):6s} {d['CT']:9s} {d['MR']:9s} {d['auto']}")
        totals[name] = total
    keys = ["cases", "false refusal (own -m)", "false acceptance (other -m)", "false acceptance (non-HU CT as CT)",
            "false acceptance (auto: other)", "false acceptance (auto: non-HU CT)", "auto refused"]
    print("\n| set | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, total in totals.items():
        print(f"| {name} | " + " | ".join(str(total[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
