import json

import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data as photos

from pipelines.data.decode import decode_image
from pipelines.data.store import read_info, read_split
from pipelines.ingest import main
from pipelines.ingestion.datasets import FASHION_MNIST_DIR, ingest_fashion_mnist
from pipelines.ingestion.folder import ingest_folder


@pytest.fixture()
def photo_folder(tmp_path):
    root = tmp_path / "photos"
    (root / "animals").mkdir(parents=True)
    (root / "things").mkdir()
    Image.fromarray(photos.chelsea()).save(root / "animals" / "chelsea.jpg", quality=90)
    Image.fromarray(photos.astronaut()).save(root / "animals" / "astronaut.png")
    Image.fromarray(photos.coffee()).save(root / "things" / "coffee.jpg", quality=90)
    Image.fromarray(photos.camera()).save(root / "things" / "camera.png")  # grayscale among colour
    good = (root / "things" / "coffee.jpg").read_bytes()
    (root / "things" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "animals" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    (root / "things" / "notes.txt").write_text("not an image")
    (root / "broken").mkdir()  # a class whose only image is unreadable, one that holds no image file
    (root / "broken" / "half.jpg").write_bytes(good[: len(good) // 3])
    (root / "docs").mkdir()
    (root / "docs" / "readme.txt").write_text("not an image either")
    return root


@pytest.mark.slow
def test_folder_ingest_skips_and_reports_bad_files(ray_session, photo_folder, tmp_path, capsys):
    out = tmp_path / "shards"
    info, skipped = ingest_folder(photo_folder, str(out))
    assert info.splits == {"train": 4}
    assert info.classes == ["animals", "broken", "things"]  # "broken" keeps its label with 0 images
    assert info.channels == 3 and len(info.mean) == 3
    assert info.skipped == 5
    reasons = {item["file"].rsplit("/", 1)[-1]: item["reason"] for item in skipped}
    assert set(reasons) == {"truncated.jpg", "corrupt.png", "notes.txt", "half.jpg", "readme.txt"}
    report = json.loads((out / "ingest_report.json").read_text())
    assert len(report["skipped"]) == 5
    assert [(item["class"], item["entries"]) for item in report["classes_without_images"]] == [("broken", 1), ("docs", 1)]
    assert "kept in the classes with 0 images (label 1" in report["classes_without_images"][0]["outcome"]
    assert report["classes_without_images"][1]["outcome"] == "not a class: it holds no image file"
    assert "warning: class folder 'docs' (1 entries) has no image: not a class" in capsys.readouterr().out
    assert read_info(str(out)).classes == ["animals", "broken", "things"]
    table = read_split(str(out), "train", ("image", "label"))
    labels = sorted(table.column("label").to_pylist())
    assert labels == [0, 0, 2, 2]
    for encoded in table.column("image").to_pylist():
        image = decode_image(encoded, 3)
        assert image.ndim == 3 and image.shape[2] == 3 and image.shape[0] >= 300


@pytest.mark.slow
def test_folder_with_train_and_test_splits_and_no_labels(ray_session, tmp_path):
    root = tmp_path / "split"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    Image.fromarray(photos.camera()).save(root / "train" / "a.png")
    Image.fromarray(photos.moon()).save(root / "train" / "b.png")
    Image.fromarray(photos.camera()).save(root / "val" / "c.png")
    info, skipped = ingest_folder(root, str(tmp_path / "out"))
    assert info.splits == {"train": 2, "test": 1} and info.classes is None and info.channels == 1
    assert read_split(str(tmp_path / "out"), "train", ("label",)).column("label").null_count == 2


def test_fashion_mnist_idx_ingest(tmp_path, capsys):
    info = ingest_fashion_mnist(FASHION_MNIST_DIR, str(tmp_path / "f"), limit=50, rows_per_shard=20)
    assert info.splits == {"train": 50, "test": 50} and len(info.classes) == 10 and info.channels == 1
    assert len(list((tmp_path / "f" / "train").glob("*.parquet"))) == 3
    first = pq.read_table(sorted((tmp_path / "f" / "train").glob("*.parquet"))[0])
    assert decode_image(first.column("image")[0].as_py(), 1).shape == (28, 28, 1)
    assert 0 <= first.column("label")[0].as_py() < 10
    # a finished dataset is not ingested over (a message, no traceback); an interrupted one's shards are removed
    assert main(["fashion-mnist", "--out", str(tmp_path / "f"), "--limit", "50"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    (tmp_path / "f" / "dataset.json").unlink()
    ingest_fashion_mnist(FASHION_MNIST_DIR, str(tmp_path / "f"), limit=50, rows_per_shard=50)
    assert len(list((tmp_path / "f" / "train").glob("*.parquet"))) == 1


def test_cli_missing_folder_is_a_message(tmp_path, capsys):
    assert main(["folder", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "image folder not found" in capsys.readouterr().err


def test_a_job_servers_url_in_ray_address_is_refused_by_name_by_the_commands_that_start_ray(
        tmp_path, monkeypatch, capsys, fmnist_slice):
    """What the README's cluster section once exported (RAY_ADDRESS=http://...:8265, the job server): Ray's own
    answer was a traceback; the folder ingest and a pretraining now say which variable takes which address."""
    from pipelines import pretrain
    from tests.helpers import mlflow_store

    (tmp_path / "pictures").mkdir()
    Image.fromarray(photos.coffee()).save(tmp_path / "pictures" / "coffee.png")
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    advice = ("RAY_ADDRESS=http://127.0.0.1:8265 is a job server's URL, not a cluster to join: export the head's "
              "address there (RAY_ADDRESS=<head>:6379) and give `ray job submit` the URL as "
              "RAY_API_SERVER_ADDRESS=http://127.0.0.1:8265")
    assert main(["folder", "--source", str(tmp_path / "pictures"), "--out", str(tmp_path / "out")]) == 2
    assert advice in capsys.readouterr().err
    assert pretrain.main(["--set", f"data.path={fmnist_slice}", "--set", f"train.storage_path={tmp_path / 'runs'}",
                          "--set", f"tracking.tracking_uri={mlflow_store(tmp_path)}"]) == 2
    assert advice in capsys.readouterr().err


@pytest.mark.slow
def test_images_below_the_minimum_size_are_skipped_with_their_size(ray_session, tmp_path, capsys):
    root = tmp_path / "tiny"
    root.mkdir()
    Image.fromarray(photos.camera()[:6, :5]).save(root / "speck.png")
    Image.fromarray(photos.camera()[:20, :12]).save(root / "small.png")
    Image.fromarray(photos.camera()).save(root / "big.png")
    assert main(["folder", "--source", str(root), "--out", str(tmp_path / "out"), "--min-size", "10"]) == 0
    info = read_info(str(tmp_path / "out"))
    assert info.splits == {"train": 2} and info.skipped == 1 and info.min_side == 12
    assert "speck.png: too small (5x6 px, below --min-size 10)" in capsys.readouterr().out


@pytest.mark.slow
def test_an_empty_folder_or_one_without_a_readable_image_is_a_message(ray_session, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["folder", "--source", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no readable image in" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "junk" / "b.txt").write_text("text")
    assert main(["folder", "--source", str(tmp_path / "junk"), "--out", str(tmp_path / "o")]) == 2
    assert f"no readable image in {tmp_path / 'junk'} (2 files skipped)" in capsys.readouterr().err


@pytest.mark.slow
def test_a_folder_of_odd_files_never_stops_the_ingest_and_each_skip_is_named(ray_session, tmp_path):
    import os


    root = tmp_path / "odd"
    (root / "things").mkdir(parents=True)
    (root / "more").mkdir()
    picture = photos.coffee()[:64, :64]
    Image.fromarray(picture).save(root / "things" / "good.png")
    Image.fromarray(picture).save(root / "more" / "good.jpg")
    bad_name = os.path.join(os.fsencode(root / "things"), b"caf\xe9-latin1.png")  # not valid UTF-8
    Image.fromarray(picture).save(open(bad_name, "wb"), format="PNG")
    (root / "things" / "empty.png").write_bytes(b"")
    (root / "things" / "text.jpg").write_text("this is text, not a JPEG")
    Image.fromarray(picture).save(root / "things" / ".hidden.png")
    (root / ".cache").mkdir()
    Image.fromarray(picture).save(root / ".cache" / "thumb.png")
    os.symlink("loop.png", root / "things" / "loop.png")
    os.symlink("missing.png", root / "things" / "dangling.png")
    os.symlink(root / "more", root / "things" / "linked-folder")
    os.symlink(root / "more" / "good.jpg", root / "things" / "linked.jpg")  # a link to a file is read
    Image.fromarray(picture).save(root / "more" / "photo.avif")  # a format Pillow reads, not OpenCV
    (root / "more" / "notes.xyz").write_text("no format")
    info, skipped = ingest_folder(root, str(tmp_path / "out"))
    reasons = {item["file"].rsplit("/", 1)[-1]: item["reason"] for item in skipped}
    assert reasons["loop.png"] == "symbolic link loop" and reasons["dangling.png"] == "dangling symbolic link"
    assert reasons[".hidden.png"] == "hidden file" and reasons[".cache"] == "hidden folder (not read)"
    assert reasons["linked-folder"] == "link to a folder (not followed)"
    assert reasons["empty.png"] == "empty file (0 bytes)" and reasons["text.jpg"].startswith("not a readable")
    assert reasons["notes.xyz"] == "not an image format the installed decoders read (suffix .xyz)"
    assert not any("0x" in reason for reason in reasons.values())  # no memory addresses: the same every run
    assert info.splits == {"train": 5} and info.skipped == len(skipped) == 8 and "photo.avif" not in reasons
    sources = read_split(str(tmp_path / "out"), "train", ("source",)).column("source").to_pylist()
    assert "things/caf\\xe9-latin1.png" in sources  # ingested, and named readably


@pytest.mark.slow
def test_sixteen_bit_images_get_statistics_as_training_decodes_them(ray_session, tmp_path):
    import numpy as np

    root = tmp_path / "deep"
    root.mkdir()
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(root / "ramp.png")  # 16-bit greyscale PNG
    info, _ = ingest_folder(root, str(tmp_path / "out"))
    assert info.channels == 1 and info.mean[0] == pytest.approx(0.5, abs=0.01)  # not clipped to 255 (0.99)
    stored = read_split(str(tmp_path / "out"), "train", ("image",)).column("image")[0].as_py()
    assert decode_image(stored, 1).mean() / 255 == pytest.approx(info.mean[0], abs=0.01)


@pytest.mark.slow
def test_a_folder_in_object_storage_is_ingested_by_a_ray_data_job(s3_server, sorted_folder, tmp_path):
    """As a user on a cluster would: pictures under an s3:// prefix, the shards written to another."""
    import subprocess
    import sys

    from pyarrow.fs import LocalFileSystem, copy_files

    from pipelines.config.project import PROJECT_ROOT

    copy_files(str(sorted_folder), "test/pictures", source_filesystem=LocalFileSystem(),
               destination_filesystem=s3_server["fs"])
    with s3_server["fs"].open_output_stream("test/pictures/moon/broken.png") as stream:
        stream.write(b"\x89PNG\r\n\x1a\n" + bytes(100))
    result = subprocess.run([sys.executable, "-m", "pipelines.ingest", "folder", "--source", "s3://test/pictures",
                             "--out", "s3://test/shards"], env=s3_server["env"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "ingested 480 images (1 skipped) into s3://test/shards" in result.stdout
    with s3_server["fs"].open_input_stream("test/shards/dataset.json") as stream:
        info = json.loads(stream.read())
    assert info["splits"] == {"train": 480} and len(info["classes"]) == 10 and info["min_side"] == 32
    with s3_server["fs"].open_input_stream("test/shards/ingest_report.json") as stream:
        report = json.loads(stream.read())["skipped"]
    assert [item["file"] for item in report] == ["s3://test/pictures/moon/broken.png"]
    table = pq.read_table("test/shards/train", filesystem=s3_server["fs"], columns=["label"])
    assert sorted(set(table.column("label").to_pylist())) == list(range(10))


def test_shards_are_written_one_row_group_at_a_time(tmp_path):
    from pipelines.data.store import ShardWriter, split_files

    writer = ShardWriter(str(tmp_path), "train", rows_per_shard=600)
    for index in range(1000):
        writer.add(bytes([index % 256]), index % 10, f"row {index}")
        assert len(writer.rows) < 256  # never more than a row group in memory
    writer.flush()
    files = split_files(str(tmp_path), "train")
    groups = [[pq.ParquetFile(path).metadata.row_group(g).num_rows for g in range(pq.ParquetFile(path).num_row_groups)]
              for path in files]
    assert groups == [[256, 256, 88], [256, 144]] and writer.count == 1000 and writer.shards == 2
    assert pq.read_table(files[1]).column("source")[0].as_py() == "row 600"


def test_an_image_above_pillows_pixel_limit_is_refused_by_its_size_and_large_ones_checked_without_their_pixels(
        monkeypatch):
    import io

    import numpy as np

    from pipelines.data.decode import ChannelStats, channel_stats, decode_reduced, verified_size

    jpeg = io.BytesIO()
    Image.fromarray(photos.coffee()).save(jpeg, format="JPEG")  # 600 x 400
    assert verified_size(jpeg.getvalue()) == (600, 400)  # checked at 1/8 scale, the size the header states
    assert decode_reduced(jpeg.getvalue(), 3, 100).shape == (100, 150, 3)  # 1/4: the shorter side stays >= 100
    assert decode_reduced(jpeg.getvalue(), 1, 300).shape == (400, 600, 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    with pytest.raises(ValueError, match=r"too large \(600x400 px, above the 100,000 pixels of Pillow's"):
        verified_size(jpeg.getvalue())  # above 2x the limit Pillow itself refuses to open it: the same reason
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)
    with pytest.raises(ValueError, match=r"too large \(600x400 px, above the 200,000 pixels"):
        verified_size(jpeg.getvalue())
    images = [np.random.default_rng(seed).integers(0, 256, (9, 7, 3), dtype=np.uint8) for seed in range(3)]
    pixels = np.concatenate([image.reshape(-1, 3) for image in images]) / 255
    mean, std = channel_stats(images)  # one image at a time, as all pixels together
    assert np.allclose(mean, pixels.mean(0), atol=1e-4) and np.allclose(std, pixels.std(0), atol=1e-4)
    stats = ChannelStats()
    stats.add(np.repeat(images[0][:, :, :1], 3, axis=2))
    assert stats.result(1) == channel_stats([images[0][:, :, :1]])  # grey decoded as colour: its first channel


@pytest.mark.slow
def test_one_very_large_jpeg_keeps_the_ingest_drivers_own_memory_flat(tmp_path):
    """An 8000 x 8000 JPEG among small images: the driver's memory (the statistics decode a reduced scale, one
    image at a time) stays flat; it took 3.8 GB when they decoded every sampled image at full size together."""
    import os
    import subprocess
    import sys

    import cv2
    import numpy as np

    from pipelines.config.project import PROJECT_ROOT

    root = tmp_path / "big"
    root.mkdir()
    ramp = np.linspace(0, 255, 8000, dtype=np.float32)
    noise = np.random.default_rng(0).integers(0, 24, (8000, 8000), dtype=np.uint8)
    big = (ramp[None, :] * 0.5 + ramp[:, None] * 0.4).astype(np.uint8) + noise
    cv2.imwrite(str(root / "huge.jpg"), np.stack([big, big[::-1], big.T], axis=2), [cv2.IMWRITE_JPEG_QUALITY, 85])
    del big, noise
    for index in range(3):
        Image.fromarray(photos.coffee()).save(root / f"small{index}.jpg")
    out = tmp_path / "out"
    script = ("import resource, sys, tracemalloc\nfrom pipelines.ingest import main\ntracemalloc.start()\n"
              f"code = main(['folder', '--source', {str(root)!r}, '--out', {str(out)!r}])\n"
              "print('arrays_mb', tracemalloc.get_traced_memory()[1] >> 20)\n"
              "print('peak_rss_mb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10)\nsys.exit(code)")
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    arrays, peak = (int(result.stdout.split(f"{name} ")[1].split()[0]) for name in ("arrays_mb", "peak_rss_mb"))
    print(f"the ingest driver: {arrays} MB of Python and NumPy memory at most, {peak} MB resident at its peak")
    # what the driver allocates itself, imports included (Ray's shared memory aside): the sample one image at a time
    # 3238 MB before (3564 MB resident); 138 here. The resident figure (339-651 MB here, with Ray's shared
    # memory mapped in) varies too much from run to run to bound
    assert arrays < 250, (arrays, peak)
    info = read_info(str(out))
    assert info.splits == {"train": 4} and info.skipped == 0 and info.min_side == 400


def test_an_avif_photo_decodes_as_training_decodes_it_and_trains_a_step():
    """AVIF: accepted because the installed Pillow reads it; training decodes with OpenCV first, then Pillow."""
    import io

    import numpy as np
    import torch

    from pipelines.config.load import load_config
    from pipelines.data.augment_batch import AugmentBatch, view_column
    from pipelines.data.decode import IMAGE_SUFFIXES
    from pipelines.data.store import DatasetInfo
    from pipelines.data.stream import augment_arguments
    from pipelines.training.step import TrainStep, prepare

    assert ".avif" in IMAGE_SUFFIXES
    buffer = io.BytesIO()
    Image.fromarray(photos.coffee()[:64, :96]).save(buffer, format="AVIF")
    assert decode_image(buffer.getvalue(), 3).shape == (64, 96, 3)
    config = load_config(None, ["data.image_size=32", "data.batch_size=4", "model.projector_hidden_dim=32",
                                "model.predictor_hidden_dim=32", "model.projection_dim=16"])
    info = DatasetInfo("avif", 3, {"train": 4}, mean=[0.5] * 3, std=[0.25] * 3)
    batch = AugmentBatch(**augment_arguments(config, info))({"image": np.array([buffer.getvalue()] * 4, dtype=object)})
    views = [torch.from_numpy(batch[view_column(v)]).float().div(255) for v in range(2)]
    assert views[0].shape == (4, 3, 32, 32)
    prepared = prepare(config, 3, 1, torch.device("cpu"))
    values = TrainStep(config, prepared.method, prepared.optimizer, 1, torch.device("cpu"))(views, 0)
    assert torch.isfinite(values["loss"])


@pytest.mark.slow
def test_images_of_every_common_format_and_mode_are_ingested(ray_session, tmp_path):
    """Palette, alpha, CMYK, 1-bit, 16-bit, grey with alpha; PNG, JPEG, GIF, BMP, TIFF, WebP, PPM; stored as they
    are, and as copies shrunk to a shorter side."""
    import cv2
    import numpy as np

    root = tmp_path / "modes"
    root.mkdir()
    picture = Image.fromarray(photos.astronaut()[:48, :48])
    picture.convert("P").save(root / "palette.png")
    picture.convert("RGBA").save(root / "alpha.png")
    picture.convert("CMYK").save(root / "cmyk.jpg")
    picture.convert("1").save(root / "bilevel.bmp")
    picture.convert("LA").save(root / "grey_alpha.png")
    Image.fromarray((np.asarray(picture.convert("L")).astype(np.uint16) * 257)).save(root / "sixteen.tif")
    picture.save(root / "animated.gif", save_all=True, append_images=[picture.rotate(90)])
    picture.save(root / "photo.webp")
    picture.save(root / "photo.ppm")
    info, skipped = ingest_folder(root, str(tmp_path / "out"))
    assert skipped == [] and info.splits == {"train": 9} and info.channels == 3 and info.min_side == 48
    originals = {}
    for row in read_split(str(tmp_path / "out"), "train", ("image", "source")).to_pylist():
        assert decode_image(row["image"], 3).shape == (48, 48, 3)
        originals[row["source"]] = decode_image(row["image"], 3)
    # the option for photos: copies shrunk to a shorter side of 32 px, JPEGs kept JPEGs, the rest lossless PNG
    info, skipped = ingest_folder(root, str(tmp_path / "small"), shorter_side=32)
    assert skipped == [] and info.min_side == 32 and read_info(str(tmp_path / "small")).shorter_side == 32
    for row in read_split(str(tmp_path / "small"), "train", ("image", "source")).to_pylist():
        small = decode_image(row["image"], 3)
        assert small.shape == (32, 32, 3)
        assert row["image"][:2] == (b"\xff\xd8" if row["source"].endswith(".jpg") else b"\x89P")
        expected = cv2.resize(originals[row["source"]], (32, 32), interpolation=cv2.INTER_AREA)
        assert np.abs(small.astype(int) - expected.astype(int)).mean() < 3, row["source"]


@pytest.mark.slow
def test_a_class_sorted_folder_is_stored_in_a_seeded_order_that_mixes_the_classes_in_every_shard(
        sorted_shards, sorted_folder, tmp_path):
    """Ray tasks list the folder (no list of names in the driver); the order is a hash of the seed and each name, so
    it is the same however the listing was split into tasks, and every shard mixes the classes."""
    import hashlib

    def order(seed):
        return sorted((path.relative_to(sorted_folder).as_posix() for path in sorted_folder.rglob("*.png")),
                      key=lambda name: int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8,
                                                                      key=str(seed).encode()).digest(), "little",
                                                      signed=True))

    assert read_split(sorted_shards, "train", ("source",)).column("source").to_pylist() == order(0)

    def driver_writes(*args, **kwargs):
        raise AssertionError("the driver writes a shard")
    # Ray tasks write the shards: a ParquetWriter opened in this process (the driver) fails the ingest
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pipelines.data.store.pq.ParquetWriter", driver_writes)
        info, skipped = ingest_folder(sorted_folder, str(tmp_path / "seed1"), rows_per_shard=100, seed=1)
    assert info.splits == {"train": 480} and not skipped
    assert read_split(str(tmp_path / "seed1"), "train", ("source",)).column("source").to_pylist() == order(1)
    shards = sorted((tmp_path / "seed1" / "train").glob("*.parquet"))
    assert len(shards) == 5
    for shard in shards:
        assert len(set(pq.read_table(shard, columns=["label"]).column("label").to_pylist())) >= 8
    assert [pq.ParquetFile(shard).metadata.num_rows for shard in shards] == [96] * 5  # 480 in 5 equal shards
    # a finished dataset is not ingested over; an unfinished ingest's shards are removed before a new one writes
    with pytest.raises(ValueError, match="already holds a dataset"):
        ingest_folder(sorted_folder, str(tmp_path / "seed1"))
    (tmp_path / "seed1" / "dataset.json").unlink()
    info, _ = ingest_folder(sorted_folder, str(tmp_path / "seed1"), rows_per_shard=240)
    assert info.splits == {"train": 480} and len(list((tmp_path / "seed1" / "train").glob("*.parquet"))) == 2


def test_shards_are_cut_so_that_every_cpu_has_one_but_never_above_rows_per_shard():
    from pipelines.ingestion.folder import shard_rows

    assert shard_rows(10_000, 1_000_000, 16) == 10_000
    assert shard_rows(10_000, 20_000, 16) == 1_250  # 16 tasks
    assert shard_rows(10_000, 480, 3) == 256  # not below a row group
    assert shard_rows(100, 480, 3) == 100
