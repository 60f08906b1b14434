"""add-modality's request checks that need no trained model (the end-to-end runs are in test_add_modality.py)."""
import pytest

from nnunet_cin.add_modality.inputs import AddModalityError, check_request


def test_an_output_inside_the_model_folder_is_refused(tmp_path):
    """The issue: `add-modality -o MODEL_FOLDER/fold_0/new` wrote inside the model folder, which it only reads."""
    model = tmp_path / "model"
    (model / "fold_0").mkdir(parents=True)
    for f in ("plans.json", "dataset.json"):
        (model / f).write_text("{}")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for output in (model / "fold_0" / "new", model / "new", model):
        with pytest.raises(AddModalityError, match="inside the model folder|exists"):
            check_request(str(model), "999", "T2", str(output))
    with pytest.raises(AddModalityError, match=r"-o .*fold_0/new is inside the model folder .*only reads"):
        check_request(str(model), "999", "T2", str(model / "fold_0" / "new"))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
