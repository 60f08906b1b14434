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


def test_every_marked_copy_is_registered():
    """A body copied from nnU-Net is marked where it lives ("..., copied" / "nnU-Net's ... body"); each marked copy
    names an original registered in nnunet_copies (by its qualified name), so none escapes the check above."""
    registered = {t.split(":")[1] for t in nnunet_copies.COPIES}
    marker = re.compile(r"#.*(?:nnU-Net 2\.8\.1|nnU-Net's)[^\n]*(?:copied|body)", re.IGNORECASE)
    unregistered = []
    for path in sorted((REPO / "nnunet_cin").rglob("*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if marker.search(line):
                context = " ".join(lines[max(0, i - 2):i + 4])
                if not any(name.split(".")[-1] in context for name in registered):
                    unregistered.append(f"{path.relative_to(REPO)}:{i + 1}: {line.strip()}")
    assert not unregistered, "copies of nnU-Net code without an entry in nnunet_cin/nnunet_copies.py:\n" + \
        "\n".join(unregistered)
