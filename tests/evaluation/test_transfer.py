"""Transfer evaluation: the linear probe and chunked kNN on fixed features, and embeddings by Ray Data batch
inference on the real Fashion-MNIST slice against the in-process path the training loop uses."""
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from pipelines.data.store import read_info, read_rows
from pipelines.evaluate import main
from pipelines.evaluation import embeddings
from pipelines.evaluation.classifier import Classifier, build_classifier, classifier_meta, dino_tokens, param_groups
from pipelines.evaluation.embeddings import embed_split, read_embeddings, read_sources
from pipelines.evaluation.finetune import run_supervised
from pipelines.evaluation.finetune_settings import FinetuneSettings
from pipelines.evaluation.transfer import evaluate_embeddings
from pipelines.features.extract import Normalizer, evaluate_backbone, extract_features, load_eval_sets, load_labelled
from pipelines.features.knn import knn_predict
from pipelines.features.linear_probe import batches_of, linear_probe, train_probe
from pipelines.storage.export import save_backbone
from ssl_models import backbone_spec, create_backbone


def clusters(count: int, classes: int, width: int, spread: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, width, generator=generator) * 3
    labels = torch.arange(count) % classes
    return centres[labels] + spread * torch.randn(count, width, generator=generator), labels


def test_the_linear_probe_separates_separable_features_and_stays_at_chance_on_random_ones():
    features, labels = clusters(1200, 10, 32, 0.5, seed=0)
    queries, query_labels = clusters(400, 10, 32, 0.5, seed=0)
    separable = linear_probe(features, labels, queries[-400:], query_labels[-400:], 10, lrs=(0.1,), epochs=10)
    assert separable.top1 >= 0.98 and len(separable.curve) == 10
    noise = torch.randn(1200, 32)
    chance = linear_probe(noise, labels, torch.randn(400, 32), query_labels, 10, lrs=(0.01, 0.1), epochs=10)
    assert chance.top1 < 0.2 and set(chance.validation) == {0.01, 0.1}


def test_a_probe_whose_training_rows_leave_one_over_a_batch_trains_on_every_row():
    """257 rows in batches of 256: the one-row remainder joins the batch before it (a one-row batch made the
    probe's BatchNorm raise "Expected more than 1 value per channel")."""
    features, labels = clusters(257, 4, 8, 0.5, seed=2)
    batches = batches_of(torch.arange(257), 256)
    assert [len(batch) for batch in batches] == [257] and [len(b) for b in batches_of(torch.arange(258), 256)] == [256, 2]
    model, curve = train_probe(features, labels, 4, 0.1, 20, 256, 0.0, 0, (features, labels))
    assert len(curve) == 20 and curve[-1] > 0.9
    # as the evaluation reaches it: 286 rows, 10 % held out, 257 left to train on
    features, labels = clusters(286, 2, 8, 0.5, seed=3)
    assert linear_probe(features, labels, features, labels, 2, lrs=(0.1,), epochs=20).top1 > 0.9


def test_knn_with_the_bank_in_chunks_equals_knn_on_the_whole_bank():
    bank, bank_labels = clusters(3000, 10, 16, 3.0, seed=1)
    queries, _ = clusters(500, 10, 16, 3.0, seed=2)
    whole = knn_predict(bank, bank_labels, queries, 10, k=20)
    assert torch.equal(knn_predict(bank, bank_labels, queries, 10, k=20, bank_chunk=700), whole)
    assert torch.equal(knn_predict(bank, bank_labels, queries, 10, k=200, bank_chunk=128),
                       knn_predict(bank, bank_labels, queries, 10, k=200))


def test_the_linear_probe_with_augmentation_keeps_the_backbone_frozen_and_its_statistics():
    spec = backbone_spec("resnet18", in_chans=1, image_size=28, small_stem=True)
    backbone, width = create_backbone(spec)
    before = {key: value.clone() for key, value in backbone.state_dict().items()}
    model = Classifier(backbone, width, 10, frozen=True).train()
    optimizer = torch.optim.SGD(param_groups(model, FinetuneSettings(protocol="linear_aug"), vit=False), lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.arange(8))
    loss.backward()
    optimizer.step()
    assert not backbone.training and all(p.grad is None for p in backbone.parameters())
    assert all(torch.equal(before[key], value) for key, value in backbone.state_dict().items())
    assert model.head[1].weight.grad is not None and sum(len(g["params"]) for g in optimizer.param_groups) == 2


def test_fine_tuning_decays_the_lr_layer_by_layer_on_vits_and_scratch_is_a_seeded_random_init():
    spec = backbone_spec("vit_tiny_patch16_224", in_chans=1, image_size=28, patch_size=4)
    meta = {**spec.to_dict(), "feature_dim": 192}
    settings = FinetuneSettings(protocol="scratch", layer_decay=0.5)
    model = build_classifier(meta, None, 10, settings)
    groups = param_groups(model, settings, vit=True)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    blocks = model.backbone.blocks
    assert scale[id(model.head.weight)] == 1.0
    assert scale[id(blocks[-1].mlp.fc1.weight)] == 0.5 and scale[id(blocks[0].mlp.fc1.weight)] == 0.5 ** 12
    assert scale[id(model.backbone.patch_embed.proj.weight)] == 0.5 ** 13 and scale[id(model.backbone.norm.weight)] == 1
    assert scale[id(model.backbone.cls_token)] == 0.5 ** 13
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay[id(blocks[0].mlp.fc1.weight)] == 0.05 and decay[id(blocks[0].mlp.fc1.bias)] == 0.0
    assert decay[id(model.backbone.pos_embed)] == 0.0 and decay[id(model.head.weight)] == 0.05
    again = build_classifier(meta, None, 10, settings)
    assert torch.equal(again.backbone.blocks[0].mlp.fc1.weight, blocks[0].mlp.fc1.weight)
    assert FinetuneSettings(protocol="linear_aug").label_smoothing == 0.0 and settings.label_smoothing == 0.1
    with pytest.raises(ValueError, match="unknown supervised protocol 'knn'"):
        FinetuneSettings(protocol="knn")


def test_a_vit_fine_tunes_as_mae_does_with_drop_path_and_after_mae_its_patch_tokens_averaged_under_a_fresh_norm():
    import safetensors.torch

    spec = backbone_spec("vit_tiny_patch16_224", in_chans=1, image_size=28, patch_size=4)
    pretrained_vit, width = create_backbone(spec)
    weights = safetensors.torch.save({key: value.contiguous() for key, value in pretrained_vit.state_dict().items()})
    pretrained = {**spec.to_dict(), "feature_dim": width, "method": "mae"}
    settings = FinetuneSettings()
    vit = build_classifier(classifier_meta(pretrained, settings), weights, 10, settings).backbone.eval()
    assert vit.global_pool == "avg" and isinstance(vit.norm, nn.Identity) and torch.equal(vit.fc_norm.weight, torch.ones(width))
    assert [getattr(block.drop_path1, "drop_prob", 0.0) for block in (vit.blocks[0], vit.blocks[-1])] == pytest.approx([0, 0.1])
    state = vit.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in pretrained_vit.state_dict().items() if not key.startswith("norm."))
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        tokens = vit.forward_features(images)[:, vit.num_prefix_tokens:]
        assert torch.allclose(vit(images), vit.fc_norm(tokens.mean(1)), atol=1e-6)
    dino = classifier_meta({**pretrained, "method": "dino"}, settings)["timm_kwargs"]  # DINO trains its class token
    assert "global_pool" not in dino and dino["drop_path_rate"] == 0.1
    assert "global_pool" not in classifier_meta(pretrained, FinetuneSettings(global_pool="token"))["timm_kwargs"]
    assert classifier_meta(pretrained, FinetuneSettings(protocol="linear_aug")) == pretrained
    with pytest.raises(ValueError, match="linear_aug keeps the backbone as pretrained"):
        FinetuneSettings(protocol="linear_aug", drop_path=0.1)
    partial = safetensors.torch.save({key: value.contiguous() for key, value in pretrained_vit.state_dict().items()
                                      if key != "pos_embed"})
    with pytest.raises(ValueError, match=r"the weights do not fit vit_tiny_patch16_224: missing \['pos_embed'\]"):
        build_classifier(classifier_meta(pretrained, settings), partial, 10, settings)


def test_dinos_linear_protocol_reads_the_last_blocks_class_tokens_under_the_final_norm_into_a_plain_linear_layer():
    import safetensors.torch

    spec = backbone_spec("vit_tiny_patch16_224", in_chans=1, image_size=28, patch_size=4)
    vit, width = create_backbone(spec)
    vit.eval()
    captured = []
    hooks = [block.register_forward_hook(lambda module, inputs, output: captured.append(output)) for block in vit.blocks]
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        vit(images)
        expected = torch.cat([vit.norm(output)[:, 0] for output in captured[-4:]], dim=1)
        with_patches = torch.cat([expected, vit.norm(captured[-1])[:, 1:].mean(1)], dim=1)
        for hook in hooks:
            hook.remove()
        assert torch.allclose(dino_tokens(vit, images, 4, False), expected, atol=1e-5)
        assert torch.allclose(dino_tokens(vit, images, 4, True), with_patches, atol=1e-5)
    weights = safetensors.torch.save({key: value.contiguous() for key, value in vit.state_dict().items()})
    meta = {**spec.to_dict(), "feature_dim": width, "method": "dino"}
    settings = FinetuneSettings(protocol="linear_dino")
    assert (settings.lr, settings.weight_decay, settings.label_smoothing, settings.drop_path) == (0.001, 0.0, 0.0, 0.0)
    model = build_classifier(classifier_meta(meta, settings), weights, 10, settings).train()
    assert type(model.head) is nn.Linear and model.head.in_features == 4 * width and 0.005 < model.head.weight.std() < 0.015
    assert set(model.state_dict()) == {f"backbone.{key}" for key in vit.state_dict()} | {"head.weight", "head.bias"}
    optimizer = torch.optim.SGD(param_groups(model, settings, vit=True), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(model(images), torch.arange(3)).backward()
    optimizer.step()
    assert not model.backbone.training and all(p.grad is None for p in model.backbone.parameters())
    assert all(torch.equal(value, model.backbone.state_dict()[key]) for key, value in vit.state_dict().items())
    assert build_classifier(meta, weights, 10, FinetuneSettings(protocol="linear_dino", last_blocks=1,
                                                                 avg_patch_tokens=True)).head.in_features == 2 * width
    resnet = {**backbone_spec("resnet18", in_chans=1, image_size=28, small_stem=True).to_dict(), "feature_dim": 512}
    with pytest.raises(ValueError, match="linear_dino reads a ViT's class tokens, which resnet18 has not"):
        build_classifier(resnet, None, 10, settings)
    with pytest.raises(ValueError, match="last_blocks 13: vit_tiny_patch16_224 has 12 blocks"):
        build_classifier(meta, weights, 10, FinetuneSettings(protocol="linear_dino", last_blocks=13))


@pytest.fixture(scope="module")
def weights(fmnist_slice, tmp_path_factory):
    """A random-init ResNet-18 (small stem) exported as pretraining exports it."""
    info = read_info(fmnist_slice)
    spec = backbone_spec("resnet18", in_chans=1, image_size=28, small_stem=True)
    torch.manual_seed(0)
    backbone, width = create_backbone(spec)
    folder = tmp_path_factory.mktemp("weights")
    save_backbone(folder, backbone, spec, {"feature_dim": width, "image_size": 28, "mean": info.mean,
                                           "std": info.std, "method": "none"})
    return str(folder), backbone.eval()


@pytest.mark.slow
def test_embeddings_from_two_actors_equal_the_in_process_ones_and_knn_matches_the_training_loop(
        ray_session, fmnist_slice, weights, tmp_path, monkeypatch):
    folder, backbone = weights
    info = read_info(fmnist_slice)
    out = str(tmp_path / "embeddings")
    # the size rules, the pixels' off: two actors asked for go to Ray Data; one, on this one-node CPU-only Ray, with
    # the split's files under IN_PROCESS_BYTES, to the calling process (one file of its own)
    monkeypatch.setattr(embeddings, "IN_PROCESS_PIXELS", 0)
    assert embeddings.one_cpu_machine()
    shards = sorted(path.name for path in (Path(fmnist_slice) / "train").glob("*.parquet"))
    assert embeddings.stored_bytes(fmnist_slice, "train") == sum(
        (Path(fmnist_slice) / "train" / name).stat().st_size for name in shards) > 0
    folders = {split: embed_split(folder, fmnist_slice, split, out, actors=2) for split in ("train", "test")}
    assert all("embeddings.parquet" not in [p.name for p in Path(f).glob("*.parquet")] for f in folders.values())
    rows, labels, embedded = read_embeddings(folders["train"])
    assert list(rows) == list(range(info.splits["train"])) and embedded.shape == (info.splits["train"], 512)
    direct = load_labelled(fmnist_slice, "train", 1, 28, rows)
    normalize = Normalizer(info.mean, info.std, torch.device("cpu"))
    expected = extract_features(backbone, direct.images, normalize, 128)
    assert torch.allclose(embedded, expected, atol=1e-4) and list(labels) == direct.labels.tolist()
    # below IN_PROCESS_BYTES the calling process embeds (no Ray Data job): the same rows, labels, embeddings
    subset = embed_split(folder, fmnist_slice, "train", str(tmp_path / "subset"), rows=np.array([3, 50, 399]))
    some_rows, some_labels, some = read_embeddings(subset)  # only the rows asked for are read and embedded
    assert list(some_rows) == [3, 50, 399] and torch.allclose(some, embedded[[3, 50, 399]], atol=1e-5)
    assert list(some_labels) == list(labels[[3, 50, 399]])
    here_folder = embed_split(folder, fmnist_slice, "test", str(tmp_path / "here"))
    assert [path.name for path in Path(here_folder).glob("*.parquet")] == ["embeddings.parquet"]
    here_rows, here_labels, here = read_embeddings(here_folder)
    by_ray_rows, by_ray_labels, by_ray = read_embeddings(folders["test"])
    assert list(here_rows) == list(by_ray_rows) and list(here_labels) == list(by_ray_labels)
    assert torch.allclose(here, by_ray, atol=1e-5)
    # each vector beside the file its image came from (Fashion-MNIST: the IDX file and the image's index in it),
    # the same by either path, and the stored rows' own
    sources = read_sources(folders["test"])
    assert sources == read_sources(str(tmp_path / "here" / "test"))
    stored = read_rows(fmnist_slice, "test", sorted(sources), ("source",))["source"].to_pylist()
    assert [sources[row] for row in sorted(sources)] == stored and stored[0].startswith("t10k-images-idx3-ubyte")

    # a folder of images embedded without an ingest of its own: each vector beside its file, the dataset removed
    from PIL import Image

    from pipelines.evaluation.embeddings import EmbedSettings, embed

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for index, image in enumerate(direct.images[:5, 0].numpy()):
        Image.fromarray(image).save(pictures / f"shirt{index}.png")
    (tmp_path / "by_file" / ".ingested").mkdir(parents=True)  # left by an embed killed before its end
    (tmp_path / "by_file" / ".ingested" / "dataset.json").write_text("{}")
    embedded_folder = embed(EmbedSettings(weights=folder, source=str(pictures), out=str(tmp_path / "by_file")))
    assert (embedded_folder.images, embedded_folder.features) == (5, 512)
    assert not (tmp_path / "by_file" / ".ingested").exists()  # the intermediate dataset, beside the output, removed
    by_file = read_sources(embedded_folder.folder)
    assert sorted(by_file.values()) == [f"shirt{index}.png" for index in range(5)]
    _, _, vectors = read_embeddings(embedded_folder.folder)
    by_name = dict(zip((by_file[row] for row in sorted(by_file)), vectors))
    assert torch.allclose(by_name["shirt3.png"], embedded[3], atol=1e-4)  # the same image as row 3 of the split

    ours, _ = evaluate_embeddings(info, fmnist_slice, folders, ["knn"])
    bank, queries = load_eval_sets(info, fmnist_slice, 28, None, None)
    in_loop = evaluate_backbone(backbone, bank, queries, 10, normalize, [20, 200], 0.07, 128)
    for k in (20, 200):
        assert ours[f"knn_top1_k{k}"] == pytest.approx(in_loop[f"knn_top1_k{k}"], abs=0.001)


@pytest.mark.slow
def test_the_evaluate_command_prints_each_protocol_and_names_bad_input(ray_session, fmnist_slice, sorted_shards,
                                                                       weights, tmp_path, capsys):
    folder, _ = weights
    assert main(["--weights", folder, "--data", fmnist_slice, "--protocol", "knn,linear", "--linear-epochs", "3",
                 "--linear-lrs", "0.1", "--train-limit", "320", "--test-limit", "160"]) == 0
    printed = capsys.readouterr().out
    assert "knn_top1_k20: " in printed and "linear_top1: " in printed and "linear probe lr 0.1" in printed

    assert main(["--weights", "pixels", "--data", fmnist_slice, "--protocol", "knn"]) == 0
    assert float(capsys.readouterr().out.split("knn_top1_k20: ")[1].split("%")[0]) > 50  # raw pixels: ~70 %

    # transfer: weights for 28 px Fashion-MNIST on scikit-learn's 8 px digits (upsampled as evaluation resizes)
    from pipelines.ingest import main as ingest_main

    assert ingest_main(["digits", "--out", str(tmp_path / "digits")]) == 0
    digits = read_info(str(tmp_path / "digits"))
    assert digits.splits == {"train": 1438, "test": 359} and digits.min_side == 8 and len(digits.classes) == 10
    assert main(["--weights", folder, "--data", str(tmp_path / "digits"), "--protocol", "knn", "--train-limit", "500",
                 "--test-limit", "200"]) == 0
    assert float(capsys.readouterr().out.split("knn_top1_k20: ")[1].split("%")[0]) > 50  # chance: 10 %

    assert main(["--weights", folder, "--protocol", "knn"]) == 2
    assert "--data is required with --weights" in capsys.readouterr().err
    colour = tmp_path / "colour"
    colour.mkdir()
    spec = backbone_spec("resnet18", in_chans=3, image_size=28)
    backbone, width = create_backbone(spec)
    save_backbone(colour, backbone, spec, {"feature_dim": width, "image_size": 28, "mean": [0.5] * 3,
                                           "std": [0.25] * 3, "method": "none"})
    # linear_aug (the only supervised protocol with a frozen backbone; fine-tuning: tests/end_to_end/test_pretrain.py) on a random
    # init's features, the class-sorted folder (no test split: a stratified 10 % held out), 2 workers of 16 images
    # for 2 epochs: the held-out top-1 is above chance (0.35 and 0.44 in two runs here, against 0.1; the loss on
    # random features moved either way between the 2 epochs) and the classifier's backbone is the frozen one,
    # statistics included
    settings = FinetuneSettings(protocol="linear_aug", epochs=2, batch_size=16, lr=1.0, warmup_epochs=0, num_workers=2)
    result = run_supervised(str(colour), sorted_shards, settings, str(tmp_path / "runs"), progress=False)
    assert len(result.losses) == len(result.curve) == 2 and all(map(np.isfinite, result.losses)), result
    assert 0.2 < result.top1 <= 1 and result.top1 == result.curve[-1], result
    state = safetensors.torch.load_file(Path(result.checkpoint) / "classifier.safetensors")
    frozen = {f"backbone.{key}": value for key, value in backbone.state_dict().items()}
    assert all(torch.equal(state[key], value) for key, value in frozen.items()) and "head.1.weight" in state

    assert main(["--weights", folder, "--data", fmnist_slice, "--protocol", "dance"]) == 2
    assert "unknown protocol dance" in capsys.readouterr().err
    assert main(["--weights", "pixels", "--data", fmnist_slice, "--protocol", "finetune"]) == 2
    assert "--weights pixels has no network to fine-tune" in capsys.readouterr().err
    assert main(["--run", "nothing-here", "--storage", str(tmp_path), "--protocol", "knn"]) == 2
    assert "no run named 'nothing-here'" in capsys.readouterr().err
    assert main(["--weights", str(colour), "--data", fmnist_slice, "--protocol", "knn"]) == 2
    assert "the weights take 3-channel images but" in capsys.readouterr().err


def test_maes_fine_tuning_regularisers_randaugment_random_erasing_mixup_and_cutmix_are_settings():
    from pipelines.data.augment_batch import AugmentBatch
    from pipelines.data.finetune_augment import MAE_AUGMENT, RandAugmentImage, batch_regulariser
    from pipelines.evaluate import parse_args
    from pipelines.evaluation.transfer import EvaluationSettings, protocol_settings

    # RandAugment after the crop and flip, on grey and colour images; magnitude 10's posterize keeps 0 bits
    # (Pillow 11 and later refuse them)
    for channels in (1, 3):
        augment = RandAugmentImage("rand-m10-n3-mstd0-inc1", 28, [100] * channels)
        rng = np.random.default_rng(channels)
        outputs = [augment(rng.integers(0, 256, (28, 28, channels), dtype=np.uint8)) for _ in range(200)]
        assert {out.shape for out in outputs} == {(28, 28, channels)} and {out.dtype for out in outputs} == {np.dtype(np.uint8)}
        assert any(not out.any() for out in outputs)  # some posterized to black
    image = np.full((40, 40, 1), 200, np.uint8)
    image[10:30, 10:30] = 20
    encoded = [__import__("cv2").imencode(".png", image)[1].tobytes()] * 64
    plain = AugmentBatch({"name": "finetune"}, 28, 1, 1.0)({"image": np.array(encoded, dtype=object)})["view_0"]
    randaug = AugmentBatch({"name": "finetune", "rand_augment": "rand-m9-mstd0.5-inc1", "fill": [0]}, 28, 1, 1.0)(
        {"image": np.array(encoded, dtype=object)})["view_0"]
    assert plain.shape == randaug.shape == (64, 1, 28, 28)
    assert len({row.tobytes() for row in plain}) <= 2 < len({row.tobytes() for row in randaug})  # flip only / more

    # random erasing, then mixup: soft targets with the smoothing folded in, and the loss for them
    images, labels = torch.zeros(8, 1, 28, 28), torch.arange(8) % 4
    erase_only, criterion = batch_regulariser(0, 0, 1.0, 0.1, 4, torch.device("cpu"))
    erased, same = erase_only(images.clone(), labels)
    assert torch.equal(same, labels) and (erased != 0).flatten(1).any(1).all() and isinstance(criterion, nn.CrossEntropyLoss)
    images = torch.arange(8.0)[:, None, None, None].expand(8, 1, 28, 28).clone()
    mix, criterion = batch_regulariser(0.8, 0, 0, 0.1, 4, torch.device("cpu"))
    mixed, targets = mix(images.clone(), labels)
    assert targets.shape == (8, 4) and torch.allclose(targets.sum(1), torch.ones(8)) and targets.min() > 0
    lam = (mixed[0, 0, 0, 0] - 7) / (0 - 7)  # image i mixed with image 7 - i
    # atol: lam read back from a float32 pixel carries ~1e-7, which a small lam times 7 makes too much for rtol alone
    assert torch.allclose(mixed[:, 0, 0, 0], lam * torch.arange(8.0) + (1 - lam) * torch.arange(7.0, -1, -1), atol=1e-5)
    assert criterion(torch.zeros(8, 4), targets).item() == pytest.approx(np.log(4), rel=1e-5)  # soft-target CE
    assert batch_regulariser(0, 0, 0, 0.1, 4, torch.device("cpu"))[0] is None

    # as settings: MAE's values with --mae-augment, each flag on its own winning, refused where they do not belong
    args = parse_args(["--weights", "w", "--protocol", "finetune,linear_aug", "--mae-augment", "--cutmix", "0"])
    assert args == EvaluationSettings(weights="w", protocols=["finetune", "linear_aug"], mae_augment=True, cutmix=0)
    settings = protocol_settings(args)
    assert {key: settings["finetune"][key] for key in MAE_AUGMENT} == {**MAE_AUGMENT, "cutmix": 0.0}
    assert not any(settings["linear_aug"][key] for key in MAE_AUGMENT)
    with pytest.raises(ValueError, match="linear_aug trains a linear head on the crop and flip alone: no mixup"):
        FinetuneSettings(protocol="linear_aug", mixup=0.8)
    with pytest.raises(ValueError, match="batch_size 15: mixup and cutmix pair each image"):
        FinetuneSettings(batch_size=15, cutmix=1.0)
    with pytest.raises(ValueError, match="rand_augment 'rand-q9' is no timm RandAugment setting"):
        FinetuneSettings(rand_augment="rand-q9")
    with pytest.raises(ValueError, match="rand_augment 'm9' is no timm RandAugment setting"):
        FinetuneSettings(rand_augment="m9")
    with pytest.raises(ValueError, match="random_erasing 1.5: a chance between 0 and 1"):
        FinetuneSettings(random_erasing=1.5)
