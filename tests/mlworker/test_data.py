import shutil
from typing import Any

import pytest
import torch
from PIL import Image

from mlworker import taxonomy
from mlworker.data import CellImages, collate_cells, decode_file, discover_samples, list_images
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


def _framed(centre: tuple[int, int, int], border: tuple[int, int, int]) -> torch.Tensor:
    """A 363x360 uint8 image: one colour in the central 40 % square, another around it."""
    image = torch.empty((3, 360, 363), dtype=torch.uint8)
    image[:] = torch.tensor(border, dtype=torch.uint8).view(3, 1, 1)
    image[:, 108:252, 110:254] = torch.tensor(centre, dtype=torch.uint8).view(3, 1, 1)
    return image


def test_centre_crop_keeps_only_the_middle_of_the_image_before_resizing():
    image = _framed((200, 40, 40), (20, 20, 200))
    whole = EvalPreset(32).resize(image)
    cropped = EvalPreset(32, crop=0.3).resize(image)
    assert cropped.shape == whole.shape == (3, 32, 32)
    assert (cropped == torch.tensor([200, 40, 40]).view(3, 1, 1)).all()  # the border is gone
    assert (whole[:, 0, 0] == torch.tensor([20, 20, 200])).all()  # the border is kept
    batch = EvalPreset(32, crop=0.3).resize(torch.stack([image, image]))
    assert torch.equal(batch[1], cropped)  # batched (scoring) and single (training) agree


def test_train_preset_on_a_cached_resize_equals_the_full_transform():
    image = _framed((200, 40, 40), (20, 20, 200))
    preset = TrainPreset(32, crop=0.6)
    torch.manual_seed(3)
    direct = preset(image)
    torch.manual_seed(3)
    from_cache = preset.augment_resized(preset.resize(image))
    assert torch.equal(direct, from_cache)  # the cache path never crops twice


def _dihedral_images(image: torch.Tensor) -> list[torch.Tensor]:
    views = [image, image.flip(-1), image.flip(-2), image.flip((-2, -1))]
    return views + [v.transpose(-2, -1) for v in views]


def test_batch_augmentation_draws_each_image_apart_and_keeps_the_cells_pixels():
    preset = TrainPreset(32, color_jitter=0.0)
    plain = EvalPreset(32)
    image = decode_file(sorted((PBC / "EO").glob("*.jpg"))[0])
    small = preset.resize(image)
    batch = small.expand(64, -1, -1, -1)
    out = preset.augment_batch(batch, torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(batch, small.expand(64, -1, -1, -1))  # the cache is not modified
    # geometry only: every output is one of the 8 symmetries of the square, exactly
    allowed = [plain.normalize(v) for v in _dihedral_images(small)]
    seen = set()
    for view in out:
        matches = [k for k, ref in enumerate(allowed) if torch.equal(view, ref)]
        assert matches, "not a flip or quarter turn of the image"
        seen.add(matches[0])
    assert len(seen) >= 6  # drawn per image, not once per batch
    again = preset.augment_batch(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the generator decides everything


def test_batch_colour_and_stain_jitter_vary_per_image_within_their_strength():
    image = decode_file(sorted((PBC / "NE").glob("*.jpg"))[0])
    geometry_off: dict[str, Any] = {"hflip_prob": 0.0, "vflip_prob": 0.0, "rotate90": False}
    small = TrainPreset(32).resize(image)
    batch = small.expand(256, -1, -1, -1)
    reference = EvalPreset(32).normalize(small)
    none = TrainPreset(32, color_jitter=0.0, **geometry_off).augment_batch(batch)
    assert torch.allclose(none, reference.expand_as(none), atol=1e-5)
    jitters: list[dict[str, Any]] = [
        {"color_jitter": 0.2},
        {"color_jitter": 0.0, "stain_jitter": 0.1},
    ]
    for kwargs in jitters:
        preset = TrainPreset(32, **geometry_off, **kwargs)
        out = preset.augment_batch(batch, torch.Generator().manual_seed(1))
        change = (out - reference).abs().mean((1, 2, 3))
        assert (change > 0.01).float().mean() > 0.9, kwargs  # almost every image changed
        assert change.std() > 0.005, kwargs  # by different amounts
        # as strongly as the per-image torchvision path does, on average
        torch.manual_seed(1)
        loop = torch.stack([preset.augment_resized(small) for _ in range(len(batch))])
        loop_change = (loop - reference).abs().mean((1, 2, 3))
        assert 0.8 < change.mean() / loop_change.mean() < 1.25, kwargs
    with pytest.raises(ValueError, match="uint8"):
        TrainPreset(32).augment_batch(batch.float())


@pytest.mark.parametrize("crop", [0.0, -0.5, 1.5])
def test_a_crop_outside_its_range_is_refused_with_the_allowed_range(crop):
    with pytest.raises(ValueError, match=r"between 0\.1 and 1"):
        EvalPreset(32, crop=crop)


def test_stain_jitter_changes_stain_amounts_reproducibly_and_zero_is_identity():
    from mlworker.presets import stain_jitter

    image = decode_file(sorted((PBC / "EO").glob("*.jpg"))[0])
    assert torch.equal(stain_jitter(image, 0.0), image)
    first = stain_jitter(image, 0.2, torch.Generator().manual_seed(1))
    again = stain_jitter(image, 0.2, torch.Generator().manual_seed(1))
    other = stain_jitter(image, 0.2, torch.Generator().manual_seed(2))
    assert first.shape == image.shape and first.dtype == torch.uint8
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert (first.float() - image.float()).abs().mean() > 2  # visibly restained
    assert TrainPreset(32, stain_jitter=0.1)(image).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="stain_jitter"):
        TrainPreset(32, stain_jitter=1.5)
