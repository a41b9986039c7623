import json
import shutil

import numpy as np
import pytest
import torch

from mlworker import taxonomy
from mlworker.evaluate import evaluation_report, get_args_parser, main
from mlworker.model import build_classifier, make_checkpoint, save_checkpoint
from tests.paths import SHARED_DATA

# torchvision 0.29 deprecates its image IO (see mlworker/data.py); pytest resets filters
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


PBC = SHARED_DATA / "pbc"
REPORT_KEYS = {
    "n_images", "accuracy", "balanced_accuracy", "macro_f1", "normal_tpr", "abnormal_tpr",
    "ece", "per_class", "confusion",
    "balanced_accuracy_ci95", "normal_tpr_ci95", "abnormal_tpr_ci95",
}  # fmt: skip


def test_report_from_probabilities_has_the_documented_keys_and_values():
    idx = {c: k for k, c in enumerate(taxonomy.CODES)}
    labels = np.array([idx["NE"], idx["NE"], idx["LY"], idx["BL"]])
    probabilities = np.full((4, 14), 0.01)
    probabilities[0, idx["NE"]] = probabilities[1, idx["LY"]] = 0.87
    probabilities[2, idx["LY"]] = probabilities[3, idx["BL"]] = 0.87
    report = evaluation_report(labels, probabilities)
    assert set(report) == REPORT_KEYS
    assert report["accuracy"] == pytest.approx(0.75)
    assert report["normal_tpr"] == pytest.approx((0.5 + 1.0) / 2)
    assert report["abnormal_tpr"] == pytest.approx(1.0)
    assert report["per_class"]["PC"]["tpr"] is None
    # all four at confidence 0.87 with accuracy 0.75
    assert report["ece"] == pytest.approx(0.12)


@pytest.fixture
def checkpoint_path(tmp_path):
    torch.manual_seed(0)
    model = build_classifier("resnet18")
    ckpt = make_checkpoint(model, arch="resnet18", input_size=32, temperature=1.5)
    return save_checkpoint(ckpt, tmp_path / "ckpt.pt")


def run(args):
    return main(get_args_parser().parse_args([*args, "--device", "cpu"]))


def test_cli_on_a_class_folder_tree_writes_json_and_plots(tmp_path, checkpoint_path):
    data = tmp_path / "data"
    for code in ("NE", "EO", "NR"):
        (data / code).mkdir(parents=True)
        for src in sorted((PBC / code).glob("*.jpg"))[:3]:
            shutil.copy(src, data / code / src.name)
    out, plots = tmp_path / "report.json", tmp_path / "plots"
    run(["--checkpoint", str(checkpoint_path), "--data", str(data), "--json", str(out),
         "--plots", str(plots)])  # fmt: skip
    report = json.loads(out.read_text())
    assert set(report) >= REPORT_KEYS
    assert report["n_images"] == 9 and report["n_unreadable"] == 0
    assert report["temperature"] == 1.5
    assert report["per_class"]["LA"]["n"] == 0
    assert report["per_class"]["LA"]["tpr"] is None
    assert report["per_class"]["EO"]["n"] == 3
    assert np.array(report["confusion"]).shape == (14, 14)
    assert 0 <= report["ece"] <= 1
    for name in ("confusion.png", "reliability.png"):
        assert (plots / name).read_bytes()[:4] == b"\x89PNG"


def test_cli_on_a_manifest_folder_leaves_out_unreadable_images(tmp_path, checkpoint_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = ["path,diff14,source_label,patient"]
    for code in ("MY", "LY"):
        for src in sorted((PBC / code).glob("*.jpg"))[:2]:
            shutil.copy(src, data / src.name)
            rows.append(f"{src.name},{code},{code},P1")
    (data / "broken.jpg").write_bytes(b"\xff\xd8broken")
    rows.append("broken.jpg,BL,Blast,P2")
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    report = run(["--checkpoint", str(checkpoint_path), "--data", str(data)])
    assert report["n_images"] == 4
    assert report["n_unreadable"] == 1
    assert report["per_class"]["BL"]["n"] == 0
