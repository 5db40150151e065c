"""What a pretraining prints at its end: the kNN from where the backbone started to where it ended, beside raw pixels."""
from pipelines.pretraining.run import RunResult, summary


def test_the_summary_says_where_the_backbone_started_and_what_raw_pixels_score():
    evaluation = {"knn_top1_k20": 0.8, "init_knn_top1_k20": 0.5, "pixels_knn_top1_k20": 0.85, "linear_top1": 0.82}
    run = RunResult("byol-1", "abc", "sqlite:///m.db", {"images_per_second": 300.0}, evaluation, "file:///a/artifacts")
    lines = summary(run).splitlines()
    assert lines[0] == "kNN top-1 (k=20): random init 50.00% -> pretrained 80.00% (raw pixels 85.00%)"
    assert lines[1] == "linear probe top-1: 82.00%" and "resume or extend: python -m pipelines.pretrain --resume byol-1" in lines[-1]
    started = RunResult(*vars(run).values())
    started.init = "weights/resnet18.safetensors"
    assert summary(started).splitlines()[0].startswith("kNN top-1 (k=20): at its start 50.00% -> pretrained 80.00%")
    assert summary(RunResult("r", "i", "u", {}, {}, "a")).splitlines()[0].startswith("no final evaluation")
