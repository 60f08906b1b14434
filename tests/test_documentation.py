"""The README is the front door and documentation/ holds the rest: every relative link of these pages (files,
images, headings) must lead somewhere, and the README must stay short."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "documentation").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """GitHub's id of a Markdown heading: lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors_of(page: Path) -> set:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)   # '# comments' in code are no headings
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def test_github_anchor_matches_githubs_rule():
    assert github_anchor("The powered run (synthetic hearts, 5 folds × 2 seeds)") == \
        "the-powered-run-synthetic-hearts-5-folds--2-seeds"
    assert github_anchor("The modality check and `-m auto`") == "the-modality-check-and--m-auto"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file_and_heading(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors_of(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024
    assert "python -m pytest -q tests" in readme          # the command .ci/run runs
    for page in (ROOT / "documentation").glob("*.md"):
        assert f"documentation/{page.name}" in readme, f"README does not link {page.name}"


def test_every_trainer_named_in_the_docs_is_a_literal_class():
    """grep (and an IDE's go-to-definition) finds each trainer the pages name: a `class NAME(` line in our code, in
    nnU-Net's, or in a page's own example. Folder names (TRAINER__PLANS__CONFIGURATION) and placeholders
    (`nnUNetTrainerSingleModality_<M>`) are not classes."""
    import nnunetv2

    docs = "\n".join(p.read_text() for p in PAGES)
    named = {n for n in re.findall(r"nnUNetTrainer\w*", docs) if "__" not in n and not n.endswith("_")}
    sources = [docs] + [f.read_text() for folder in ("nnunet_cin", "trainers", "benchmarks")
                        for f in (ROOT / folder).rglob("*.py")]
    sources += [f.read_text() for f in Path(nnunetv2.__path__[0], "training", "nnUNetTrainer").rglob("*.py")]
    defined = {m for s in sources for m in re.findall(r"^\s*class (nnUNetTrainer\w*)\(", s, flags=re.M)}
    assert {"nnUNetTrainerCIN", "nnUNetTrainerSingleModality_MR_100epochs"} <= named
    assert not named - defined, f"named in the docs, no literal class: {sorted(named - defined)}"


def test_no_generated_or_looked_up_trainer_classes():
    """Trainer classes are written out, not made at import or on attribute lookup (nnU-Net, grep and IDEs would not
    see them): no globals() writes, no module __getattr__, no type(name, ...) in the trainer modules."""
    found = []
    for folder in ("trainers", "nnunet_cin/training", "benchmarks"):
        for f in (ROOT / folder).rglob("*.py"):
            for pattern in (r"globals\(\)\s*(\[|\.update)", r"^(def )?__getattr__\b", r"\btype\(\w+,\s*\("):
                if re.search(pattern, f.read_text(), flags=re.M):
                    found.append(f"{f.relative_to(ROOT)}: {pattern}")
    assert not found, found
