"""The demo model: a delta on the installed ImageNet weights that rebuilds the trained
model exactly (to fp16), refuses files that do not fit, and gets the demo's cells right."""

import json
import shutil

import pytest
import torch

from mlworker import taxonomy
from mlworker.data import discover_samples
from mlworker.demo_model import (
    DEFAULT_DEMO_MODEL_DIR,
    DELTA_NAME,
    MAX_FILE_BYTES,
    META_NAME,
    DemoModelError,
    base_classifier,
    load_demo_checkpoint,
    read_demo_meta,
    write_demo_model,
)
from mlworker.model import make_checkpoint, model_from_checkpoint
from mlworker.train import evaluate_samples
from tests.paths import REPO_ROOT

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

ARCH = "efficientnet_lite0"


def trained_checkpoint():
    """Lite0 from the package weights with its last stage and head "trained" (perturbed)."""
    torch.manual_seed(0)
    model = base_classifier(ARCH, len(taxonomy.CODES))
    with torch.no_grad():
        for module in model.last_stage_modules():
            for p in module.parameters():
                p.add_(0.01 * torch.randn_like(p))
    return make_checkpoint(model.eval(), arch=ARCH, input_size=64, temperature=1.3)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-model")
    checkpoint = trained_checkpoint()
    write_demo_model(checkpoint, out, metrics={"balanced_accuracy": 0.9}, provenance={})
    return checkpoint, out


def test_delta_holds_only_what_training_changed_and_rebuilds_the_model(written):
    checkpoint, out = written
    meta = read_demo_meta(out)
    entries = set(meta["delta"]["entries"])
    assert {"fc.weight", "fc.bias"} <= entries
    assert not any(k.startswith("backbone._conv_stem") for k in entries)  # untouched: left out
    rebuilt = load_demo_checkpoint(out)
    assert rebuilt["temperature"] == 1.3 and rebuilt["input_size"] == 64
    assert rebuilt["metrics"] == {"balanced_accuracy": 0.9}
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected = model_from_checkpoint(checkpoint)(x)
        got = model_from_checkpoint(rebuilt)(x)
    assert torch.allclose(got, expected, atol=2e-2, rtol=1e-2)  # fp16 entries
    assert (out / DELTA_NAME).stat().st_size < MAX_FILE_BYTES


def copy_of(out, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(out, target)
    return target


def test_a_corrupted_delta_file_is_refused(written, tmp_path):
    target = copy_of(written[1], tmp_path)
    data = bytearray((target / DELTA_NAME).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (target / DELTA_NAME).write_bytes(bytes(data))
    with pytest.raises(DemoModelError, match=r"SHA-256 is not the one model\.json names"):
        load_demo_checkpoint(target)


def rewrite_delta(target, change):
    """Replace the delta with a changed one whose hash model.json names (a file that is
    intact but does not fit)."""
    import hashlib

    delta = torch.load(target / DELTA_NAME, weights_only=True)
    change(delta)
    torch.save(delta, target / DELTA_NAME)
    meta = json.loads((target / META_NAME).read_text())
    meta["delta"]["sha256"] = hashlib.sha256((target / DELTA_NAME).read_bytes()).hexdigest()
    (target / META_NAME).write_text(json.dumps(meta))


def test_a_delta_of_another_shape_or_model_is_refused(written, tmp_path):
    target = copy_of(written[1], tmp_path)
    rewrite_delta(target, lambda d: d.update({"fc.weight": torch.zeros(5, 1280)}))
    with pytest.raises(DemoModelError, match=r"wrong shape: fc.weight \(5, 1280\)"):
        load_demo_checkpoint(target)
    rewrite_delta(target, lambda d: d.update({"backbone.layer4.0.conv1.weight": torch.zeros(1)}))
    with pytest.raises(DemoModelError, match="entries the model does not have"):
        load_demo_checkpoint(target)


def test_base_weights_other_than_the_trained_ones_are_refused(written, tmp_path):
    target = copy_of(written[1], tmp_path)
    meta = json.loads((target / META_NAME).read_text())
    meta["base_weights"]["sha256"] = "0" * 64
    (target / META_NAME).write_text(json.dumps(meta))
    with pytest.raises(DemoModelError, match="are not the ones the demo delta was trained on"):
        load_demo_checkpoint(target)
    (target / META_NAME).write_text("{not json")
    with pytest.raises(DemoModelError, match="cannot read the demo model's description"):
        load_demo_checkpoint(target)


def test_shipped_demo_files_are_small_and_carry_held_out_figures():
    for path in DEFAULT_DEMO_MODEL_DIR.iterdir():
        assert path.stat().st_size < MAX_FILE_BYTES, path
    metrics = read_demo_meta()["metrics"]
    assert metrics["note"].startswith("PBC test split, n=")
    assert "never used for a decision" in metrics["note"]
    assert metrics["n"] == metrics["n_images"] >= 9 * 30
    assert metrics["balanced_accuracy_ci95"][0] <= metrics["balanced_accuracy"]
    assert all(row["tpr_ci95"] for row in metrics["per_class"].values() if row["n"])


def test_shipped_demo_model_gets_most_demo_cells_right():
    """The 54 labelled demo cells were never trained on (left out by content hash)."""
    cells = discover_samples(REPO_ROOT / "demo" / "pbc")
    assert len(cells) == 54
    report = evaluate_samples(load_demo_checkpoint(), cells)
    assert report["accuracy"] >= 0.8
