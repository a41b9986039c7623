import shutil

import pytest
import torch
from PIL import Image

from mlworker import taxonomy
from mlworker.data import CellImages, collate_cells, discover_samples, list_images
from mlworker.presets import EvalPreset, TrainPreset
from tests.paths import SHARED_DATA

# torchvision 0.29 deprecates its image IO (see mlworker/data.py); pytest resets filters
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


PBC = SHARED_DATA / "pbc"


def test_reads_the_shared_manifest_with_codes_and_source_labels():
    samples = discover_samples(PBC)
    assert len(samples) == 3600
    assert {s.code for s in samples} == {"BA", "EO", "LY", "MO", "NE", "ME", "MY", "PR", "NR"}
    first = samples[0]
    assert first.path.is_file()
    assert first.label == taxonomy.index_of(first.code)


def test_reads_a_class_per_folder_tree_and_refuses_unknown_folder_names(tmp_path):
    for code in ("NE", "BL"):
        (tmp_path / code).mkdir()
        for src in sorted((PBC / "NE").glob("*.jpg"))[:2]:
            shutil.copy(src, tmp_path / code / src.name)
    (tmp_path / "NE" / "readme.txt").write_text("not an image")
    samples = discover_samples(tmp_path)
    assert [s.code for s in samples] == ["BL", "BL", "NE", "NE"]
    assert len(list_images(tmp_path)) == 4
    (tmp_path / "Blast, no lineage spec").mkdir()
    with pytest.raises(ValueError, match="not 14-Diff codes"):
        discover_samples(tmp_path)


def test_manifest_with_an_unknown_code_names_the_line(tmp_path):
    (tmp_path / "manifest.csv").write_text("path,diff14\na.jpg,NE\nb.jpg,XX\n")
    with pytest.raises(ValueError, match=r"manifest.csv:3: .*'XX'"):
        discover_samples(tmp_path)


def test_dataset_reports_unreadable_images_and_collate_keeps_them_out(tmp_path):
    good = shutil.copy(sorted((PBC / "LY").glob("*.jpg"))[0], tmp_path / "ly.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    dataset = CellImages([good, bad], transform=EvalPreset(32))
    batch = collate_cells([dataset[0], dataset[1]])
    assert batch.indices == [0]
    assert batch.images.shape == (1, 3, 32, 32)
    assert set(batch.errors) == {1}


def test_train_and_eval_presets_share_size_and_normalisation():
    image = Image.new("RGB", (363, 360), (200, 100, 150))
    torch.manual_seed(0)
    eval_out = EvalPreset(64)(image)
    train_out = TrainPreset(64, color_jitter=0.0)(image)
    # a uniform image is unchanged by flips and rotations: both presets must agree exactly
    assert eval_out.shape == train_out.shape == (3, 64, 64)
    assert torch.allclose(eval_out, train_out)
    assert TrainPreset(64)(image).shape == (3, 64, 64)
