"""JPEGs decoded at the scale their views' crops need: the recipe unchanged, the work smaller."""
import io

import cv2
import numpy as np
import pytest

from benchmarks.photo_files import jpeg, sources, textured_photo
from pipelines.data.augment import A, method_views
from pipelines.data.augment_batch import AugmentBatch
from pipelines.data.crop_first import CropFirst, coarsest_factor, cut, upright_size
from pipelines.data.decode import decode_image


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return textured_photo(1536, 2048, np.random.default_rng(0), sources())


def sharpness(views: list[np.ndarray]) -> float:
    """Mean absolute Laplacian: how much fine detail the views hold."""
    return float(np.mean([np.abs(cv2.Laplacian(view, cv2.CV_32F)).mean() for view in views]))


def test_views_of_a_reduced_decode_have_the_full_decodes_statistics(photo):
    """The crops alone (colour transforms removed: their randomness would hide a difference): the same regions'
    pixels, the same contrast, about the same fine detail, most images decoded at 1/8 or 1/4 of their size."""
    data = jpeg(cv2.resize(photo, (1024, 768), interpolation=cv2.INTER_AREA))
    views = method_views({"name": "byol"}, 48, 3, 0.08, ("flip", "colour", "grayscale", "blur", "solarize"))
    first = CropFirst(views, 3)
    reduced = np.stack([view for _ in range(300) for view in first(data)])
    full_image = decode_image(data, 3)
    full = np.stack([view(image=full_image)["image"] for _ in range(300) for view in views])
    assert sum(count for factor, count in first.factors.items() if factor > 1) >= 0.9 * 300
    assert reduced.shape == full.shape
    assert np.abs(reduced.mean((0, 1, 2)) - full.mean((0, 1, 2))).max() < 3  # of 255
    assert reduced.std((0, 1, 2)) == pytest.approx(full.std((0, 1, 2)), rel=0.03)  # measured: 1 % less
    assert sharpness(reduced) == pytest.approx(sharpness(full), rel=0.1)  # measured: 5 % less


def test_a_region_cut_from_a_reduced_decode_is_the_same_picture_as_from_the_full_one(photo):
    data, shape = jpeg(photo), photo.shape[:2]
    full = decode_image(data, 3)
    for region, size in (((100, 200, 1700, 1400), (224, 224)), ((1000, 300, 1400, 700), (96, 96))):
        factor = coarsest_factor([region], [size])
        assert factor > 1
        crop = A.RandomResizedCrop(size=size, area_for_downscale="image")
        reduced = cut(decode_image(data, 3, factor), shape, region, size, crop)
        whole = cut(full, shape, region, size, crop)
        assert np.abs(reduced.astype(int) - whole.astype(int)).mean() < 4


def test_a_small_crop_is_decoded_at_full_scale_so_it_keeps_its_resolution():
    assert coarsest_factor([(0, 0, 300, 300)], [(224, 224)]) == 1
    assert coarsest_factor([(0, 0, 1800, 1800), (0, 0, 800, 800)], [(224, 224), (96, 96)]) == 4  # the finest wins
    assert coarsest_factor([(0, 0, 4000, 3600)], [(224, 224)]) == 8


def test_exif_orientation_is_the_one_opencv_decodes(photo):
    small = cv2.resize(photo, (800, 600))
    turned = jpeg(small, orientation=6)  # a phone held upright: stored landscape, shown portrait
    assert upright_size(turned) == (800, 600)
    upright = decode_image(turned, 3)
    assert upright.shape == (800, 600, 3)
    whole = CropFirst([A.Compose([A.Resize(64, 48, area_for_downscale="image")])], 3)(turned)[0]
    expected = cv2.resize(upright, (48, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(whole.astype(int) - expected.astype(int)).mean() < 6
    stored = cv2.imdecode(np.frombuffer(turned, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    wrong_way = cv2.resize(stored[:, :, ::-1], (48, 64), interpolation=cv2.INTER_AREA)  # a decoder ignoring EXIF
    assert np.abs(whole.astype(int) - wrong_way.astype(int)).mean() > 20


def test_other_formats_and_views_that_need_the_whole_image_take_the_full_decode(photo):
    png = cv2.imencode(".png", photo[:100, :100])[1].tobytes()
    assert CropFirst(method_views({"name": "byol"}, 32, 3, 0.08), 3)(png) is None
    needs_whole = method_views({"name": "mae", "augmentation": "fixed_crop"}, 32, 3, 0.2)
    assert not CropFirst(needs_whole, 3).applies
    batch = AugmentBatch({"name": "byol"}, 32, 3, 0.08)
    out = batch({"image": np.array([png, jpeg(photo[:200, :300]), b"\xff\xd8 not a jpeg", io.BytesIO(b"").read()],
                                   dtype=object)})
    assert out["view_0"].shape == (2, 3, 32, 32)  # the two images; the broken ones left out


def test_stored_images_are_read_as_views_of_the_column_and_give_the_same_sizes(photo):
    """The stream hands the augmentation memoryviews of Arrow's buffer (no copy of each photo's bytes): the same
    bytes as the column's values, nulls as None, offsets of a sliced column and of large_binary respected, and a
    header past HEADER_BYTES (a large colour profile) read from the whole file."""
    import pyarrow as pa
    from PIL import Image

    from pipelines.data.augment_batch import binary_values
    from pipelines.data.crop_first import HEADER_BYTES

    small = cv2.resize(photo, (400, 300))
    profiled = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(small).save(profiled, "JPEG", exif=exif.tobytes(), icc_profile=bytes(range(256)) * 1000)
    values = [jpeg(small), None, profiled.getvalue(), jpeg(small, orientation=6)]
    assert values[2].find(b"\xff\xc0") > HEADER_BYTES  # its frame header past the first read
    for kind in (pa.binary(), pa.large_binary()):
        column = pa.chunked_array([pa.array(values[:2], kind), pa.array(values[2:], kind)])
        for chunks, expected in ((column, values), (column.slice(1, 3), values[1:]),
                                 (pa.chunked_array([column.combine_chunks().slice(2, 2)]), values[2:])):
            views = binary_values(chunks)
            assert [None if view is None else bytes(view) for view in views] == expected
            assert [upright_size(view) for view in views if view is not None] == \
                [upright_size(value) for value in expected if value is not None]
    views = binary_values(pa.chunked_array([pa.array(values, pa.binary())]))
    assert upright_size(views[2]) == upright_size(views[3]) == (400, 300)  # turned upright by their EXIF
    batch = AugmentBatch({"name": "byol"}, 32, 3, 0.08)
    assert len(batch({"image": views[[0, 2, 3]]})["view_0"]) == 3
