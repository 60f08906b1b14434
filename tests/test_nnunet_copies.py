"""The copies of nnU-Net function bodies stay honest: each original, as installed, is the one the copy was made
from (nnunet_cin.nnunet_copies records a hash of its source)."""
import re
from pathlib import Path

import pytest

from nnunet_cin import nnunet_copies

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("target", sorted(nnunet_copies.COPIES))
def test_installed_original_is_the_one_copied(target):
    current = nnunet_copies.source_hash(target)
    assert current == nnunet_copies.COPIES[target], (
        f"nnU-Net's {target} changed since nnunet-cin copied it (from nnU-Net {nnunet_copies.NNUNET_VERSION}): carry "
        f"the change into our copy (see the comment above its entry in nnunet_cin/nnunet_copies.py), then record "
        f"the new hash {current}")


def test_a_changed_original_is_noticed(monkeypatch):
    """The check compares sources: an original that differs by one character no longer matches, the others do."""
    target = "nnunetv2.training.lr_scheduler.polylr:PolyLRScheduler.step"
    changed, getsource = nnunet_copies.original(target), nnunet_copies.inspect.getsource
    monkeypatch.setattr(nnunet_copies.inspect, "getsource",
                        lambda obj: getsource(obj).replace("self.ctr", "self.counter") if obj is changed
                        else getsource(obj))
    assert list(nnunet_copies.changed_originals()) == [target]


# a copy is marked where it lives, in a comment or a docstring: "nnU-Net 2.8.1's X, copied", "nnU-Net's X body"
MARKER = re.compile(r"(?:nnU-Net 2\.8\.1|nnU-Net's)[^\n]*?(?:copied|body)", re.IGNORECASE)


def marked_copies(root: Path = REPO / "nnunet_cin"):
    """[(file:line, the marker's line, the text around it)] of every copy marker in the package."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "nnunet_copies.py":  # the registry, whose docstring shows how to mark a copy
            continue
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if MARKER.search(line):
                found.append((f"{path.relative_to(root)}:{i + 1}", line.strip(), " ".join(lines[max(0, i - 2):i + 4])))
    return found


def names(target: str, context: str) -> bool:
    """`context` names the original of `target` by its full qualified name ("Class.method", not "method" alone)."""
    return re.search(r"(?<![\w.])" + re.escape(target.split(":")[1]) + r"(?!\w)", context) is not None


def test_every_marked_copy_is_registered():
    """Each marked copy names an original registered in nnunet_copies by its qualified name, so none escapes the
    check above; and each registered original is named by a marked copy (the registry holds no stale entry)."""
    markers = marked_copies()
    unregistered = [f"{where}: {line}" for where, line, context in markers
                    if not any(names(t, context) for t in nnunet_copies.COPIES)]
    assert not unregistered, "copies of nnU-Net code without an entry in nnunet_cin/nnunet_copies.py:\n" + \
        "\n".join(unregistered)
    unmarked = [t for t in nnunet_copies.COPIES if not any(names(t, context) for _, _, context in markers)]
    assert not unmarked, f"registered originals that no marked copy names: {unmarked}"


def test_the_marker_check_reads_docstrings_and_whole_names(tmp_path):
    """A marker in a docstring counts, and a copy is registered only under the full qualified name of its original:
    a copy of "Planner.run" is not covered by a registered "DatasetFingerprintExtractor.run"."""
    (tmp_path / "copies.py").write_text(
        'def means():\n    """nnU-Net 2.8.1\'s means of compute_metrics_on_folder, copied: no hook."""\n\n\n'
        "# nnU-Net's Planner.run body, with another loop\n"
        "def run():\n    pass\n")
    found = {line: context for _, line, context in marked_copies(tmp_path)}
    assert len(found) == 2
    docstring, comment = (found[k] for k in sorted(found, key=lambda k: k.startswith("#")))
    assert names("nnunetv2.evaluation.evaluate_predictions:compute_metrics_on_folder", docstring)
    assert not names("m:DatasetFingerprintExtractor.run", comment) and names("m:Planner.run", comment)
    assert not names("m:DefaultPreprocessor.run_case", "nnU-Net's DefaultPreprocessor.run_case_save body")
