"""Studies: every study file of tune_spaces/studies is a valid grid of runs under each budget; the collapse studies
(SimSiam, DINO's guards, BYOL without batch statistics) and the distillation study run end to end (Ray Tune, one
MLflow child run per row, the table beside the paper's or beside a reference run, its checks); the other six run
one row each through `--rows`, and every row of every study takes a training step in process."""
import copy
import re

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines import study
from pipelines.config.load import build_config, read_yaml
from pipelines.config.project import PROJECT_ROOT
from pipelines.config.section import ConfigError
from pipelines.tuning.plots import study_plot
from pipelines.tuning.space import ROW_AXIS, apply_values, load_space, metrics_of
from pipelines.tuning.study import budget_overrides, check_study_file, only_rows, resumed_state
from pipelines.tuning.study_report import check_outcomes, inference_speed, reference_lines, shown
from pipelines.tuning.sweep import SWEEP_DEFAULTS
from tests.helpers import (
    interrupt_after_first_trial,
    mlflow_store,
    run_smoke,
    smoke_sets,
    study_results,
    write_run_files,
)

STUDIES = sorted((PROJECT_ROOT / "tune_spaces" / "studies").glob("*.yaml"))


def load_study(path, budget: str):
    space, base = load_space(path, None, SWEEP_DEFAULTS + budget_overrides(read_yaml(path), budget, str(path)))
    check_study_file(space)
    return space, base


@pytest.mark.parametrize("path", STUDIES, ids=[path.stem for path in STUDIES])
def test_every_study_is_a_valid_grid_of_rows_under_each_budget(path):
    raw = read_yaml(path)
    assert raw["title"] and raw["source"]
    for budget in ("smoke", "cpu"):
        space, base = load_study(path, budget)
        assert space.axes[0].field == ROW_AXIS and space.axes[0].values == [str(row) for row in raw["rows"]]
        configs = {row: build_config(apply_values(copy.deepcopy(base), {ROW_AXIS: row}, space.rows))
                   for row in space.rows}
        assert all(config.eval.final_protocols == ["knn", "linear"] for config in configs.values())
        assert len({config.model_dump_json() for config in configs.values()}) == len(configs)  # rows differ


def png(seed: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (28, 28), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow  # about 80 s for all rows
@pytest.mark.parametrize("path", STUDIES, ids=[path.stem for path in STUDIES])
def test_every_row_of_every_study_takes_a_training_step(path, tmp_path):
    """What CI cannot afford as runs (a Ray Train run per row): each row's method, built as the run builds it, on
    views its augmentation makes, steps once with a finite loss and gradients (a distillation's teacher: a
    ResNet-18 BYOL run's files under the name the study gives)."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from pipelines.data.augment_batch import AugmentBatch, view_column
    from pipelines.data.stream import augment_arguments
    from pipelines.training.methods import build_method
    from pipelines.training.teacher import build_with_teacher

    space, base = load_study(path, "smoke")
    images = {"image": np.array([png(seed) for seed in range(8)], dtype=object)}
    for row in space.rows:
        config = build_config(apply_values(copy.deepcopy(base), {ROW_AXIS: row}, space.rows))
        if config.method.name == "distill":
            teacher = build_config({"model": {"projector_hidden_dim": 64, "projection_dim": 16, "predictor_hidden_dim": 64}})
            if not (tmp_path / config.method.teacher_run).exists():
                write_run_files(tmp_path, config.method.teacher_run, teacher, build_method(teacher, 1, 10))
            config.train.storage_path = str(tmp_path)
        batch = AugmentBatch(**augment_arguments(config, SimpleNamespace(channels=1)))(images)
        torch.manual_seed(0)
        method = build_with_teacher(config, 1, 10)
        views = [torch.from_numpy(batch[view_column(v)]).float() / 255 for v in range(method.num_views)]
        loss = method.training_step(views, 0)["loss"]
        loss.backward()
        assert torch.isfinite(loss), row
        assert any(p.grad is not None for p in method.trained.parameters()), row


def test_study_rows_set_what_they_say():
    space, base = load_study(PROJECT_ROOT / "tune_spaces" / "studies" / "dino_components.yaml", "smoke")
    byol = build_config(apply_values(copy.deepcopy(base), {ROW_AXIS: "byol"}, space.rows))
    assert byol.method.name == "byol" and byol.optim.clip_grad is None
    frozen = build_config(apply_values(copy.deepcopy(base), {ROW_AXIS: "no_momentum"}, space.rows))
    assert frozen.method.momentum_start == frozen.method.momentum_end == 0.0  # the teacher is the student
    space, base = load_study(PROJECT_ROOT / "tune_spaces" / "studies" / "mae_mask_ratio.yaml", "cpu")
    ratios = [build_config(apply_values(copy.deepcopy(base), {ROW_AXIS: row}, space.rows)).method.mask_ratio
              for row in space.rows]
    assert ratios == sorted(ratios) and 0.75 in ratios


BAD_STUDIES = {
    "row with an unknown field": ({"rows": {"a": {"set": {"method.stop_grad": False}}}}, "rows.a is not valid"),
    "row with an unknown key": ({"rows": {"a": {"sets": {}}}}, "rows.a takes 'set'"),
    "check on a missing row": ({"checks": [{"row": "nope", "metric": "knn", "below": 1, "of": "baseline"}]},
                               "checks[0].row 'nope' is not a row"),
    "check on an unknown metric": ({"checks": [{"row": "baseline", "metric": "std", "below": 1, "of": "baseline"}]},
                                   "checks[0].metric 'std'"),
    "unknown budget": ({"budgets": {"cpu": {}}}, "no budget 'smoke'"),
    "plot line through a missing row": ({"plot": {"x": "method.predictor", "lines": {"a": ["nope"]}}},
                                        "plot.lines names 'nope', which is not a row"),
    "plot line through a row without x": (
        {"plot": {"x": "method.predictor", "lines": {"a": ["baseline", "other"]}}},
        "plot.x 'method.predictor' must be set by every row on a line ('baseline' does not)"),
}


@pytest.mark.parametrize("case", BAD_STUDIES, ids=list(BAD_STUDIES))
def test_a_bad_study_file_is_refused_with_a_message_naming_the_problem(case, tmp_path, capsys):
    changes, message = BAD_STUDIES[case]
    tree = {"title": "t", "source": "s", "method": "simsiam", "objective": "knn_top1_k20",
            "rows": {"baseline": {}, "other": {"set": {"method.predictor": False}}},
            "budgets": {"smoke": {"train.epochs": 1}}, **changes}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert study.main([str(path), "--budget", "smoke", "--set", f"train.storage_path={tmp_path}"]) == 2
    assert message in capsys.readouterr().err


def test_rows_cut_a_study_to_the_rows_named_with_its_checks_and_plot_lines(tmp_path, capsys):
    path = PROJECT_ROOT / "tune_spaces" / "studies" / "byol_vs_simclr_robustness.yaml"
    cut = only_rows(read_yaml(path), ["simclr_batch_64", "byol_batch_256", "byol_batch_128"], "robustness")
    assert list(cut["rows"]) == ["byol_batch_256", "byol_batch_128", "simclr_batch_64"]  # the file's order
    assert cut["plot"]["lines"] == {"BYOL": ["byol_batch_256", "byol_batch_128"], "SimCLR": ["simclr_batch_64"]}
    assert "plot" not in only_rows(read_yaml(path), ["byol_no_colour"], "robustness")
    collapse = read_yaml(PROJECT_ROOT / "tune_spaces" / "studies" / "simsiam_collapse.yaml")
    kept = only_rows(collapse, ["baseline", "no_predictor"], "collapse")["checks"]
    assert [(check["row"], check["of"]) for check in kept] == [("no_predictor", "baseline")]
    assert study.main([str(path), "--rows", "byol_batch_256,byol_batch_1", "--budget", "smoke",
                       "--set", f"train.storage_path={tmp_path}"]) == 2
    assert "--rows: byol_batch_1 is not a row of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.parse_args(["--resume", "x", "--rows", "a"])
    assert "a resumed study runs the rows it began with" in capsys.readouterr().err


def test_checks_compare_a_row_with_another():
    space, _ = load_study(PROJECT_ROOT / "tune_spaces" / "studies" / "simsiam_collapse.yaml", "smoke")
    table = [{"row": "baseline", "ours std": 0.03}, {"row": "no_stop_gradient", "ours std": 0.01},
             {"row": "no_predictor", "ours std": 0.029}]
    outcomes = check_outcomes(space, table)
    assert [outcome["passed"] for outcome in outcomes] == [True, False]
    assert check_outcomes(space, [{**line, "ours std": None} for line in table])[0]["passed"] is False


def test_a_study_plot_draws_the_papers_curves_as_lines_and_every_row_as_a_bar():
    space, _ = load_study(PROJECT_ROOT / "tune_spaces" / "studies" / "byol_vs_simclr_robustness.yaml", "cpu")
    table = [{"row": row, "ours knn": 60.0 + index, "ours linear": 70.0 + index}
             for index, row in enumerate(space.rows)]
    lines_panel, _, bars_panel, _ = study_plot(space, table).axes
    curves = {line.get_label(): list(line.get_xdata()) for line in lines_panel.get_lines()}
    assert curves == {"BYOL ours": [256, 128, 64], "SimCLR ours": [256, 128, 64]}
    assert [tick.get_text() for tick in bars_panel.get_xticklabels()] == list(space.rows)
    space, _ = load_study(PROJECT_ROOT / "tune_spaces" / "studies" / "mae_mask_ratio.yaml", "cpu")
    table = [{"row": row, "ours knn": 50.0, "ours linear": 60.0} for row in space.rows]
    figure = study_plot(space, table)  # every row on the curve: no bars
    assert len(figure.axes) == 2 and len(figure.axes[0].get_lines()[0].get_xdata()) == len(space.rows)


@pytest.mark.slow
def test_the_simsiam_collapse_study_interrupted_resumes_each_row_once_and_puts_its_table_beside_the_papers(
        ray_session, fmnist_slice, tmp_path, capsys):
    """Rows one at a time in a process of its own, Ctrl+C once the first row's run is finished, `--resume`: the
    finished row is neither trained nor evaluated again (its trial reports what its run logged), the others run, and the table, plot and checks are as an uninterrupted study's."""
    path = str(PROJECT_ROOT / "tune_spaces" / "studies" / "simsiam_collapse.yaml")
    code, output = interrupt_after_first_trial(
        "pipelines.study", [path, "--budget", "smoke", "--name", "collapse", "--max-concurrent", "1",
                            *smoke_sets(fmnist_slice, tmp_path)], tmp_path, "collapse", "study-simsiam_collapse",
        ray_session)
    assert code == 130 and "python -m pipelines.study --resume collapse" in output, output[-3000:]
    client = MlflowClient(mlflow_store(tmp_path))
    parent = client.search_runs([client.get_experiment_by_name("study-simsiam_collapse").experiment_id],
                                filter_string="attributes.run_name = 'collapse'")[0]
    assert parent.info.status == "KILLED"
    assert "python -m pipelines.study --resume collapse" in parent.data.tags["failure_reason"]
    finished = client.search_runs([parent.info.experiment_id], filter_string=(
        f"tags.mlflow.parentRunId = '{parent.info.run_id}' and attributes.status = 'FINISHED'"))
    assert len(finished) == 1
    first = finished[0]
    first_curve = [(m.step, m.timestamp) for m in client.get_metric_history(first.info.run_id, "train/loss")]

    code = study.main(["--resume", "collapse", "--set", f"train.storage_path={tmp_path / 'runs'}"])
    out = capsys.readouterr().out
    assert code == 0, out
    client, parent, rows, table = study_results("simsiam_collapse", "collapse", tmp_path)
    assert rows[first.data.tags[ROW_AXIS]].info.run_id == first.info.run_id  # the finished row was not rerun
    assert [(m.step, m.timestamp) for m in client.get_metric_history(first.info.run_id, "train/loss")] == first_curve
    # nor evaluated again: one final kNN, the run's end time as it was, its two protocol runs only
    assert len(client.get_metric_history(first.info.run_id, "eval/knn_top1_k20")) == 1
    assert client.get_run(first.info.run_id).info.end_time == first.info.end_time
    nested = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{first.info.run_id}'")
    assert sorted(run.info.run_name.rsplit("-", 1)[1] for run in nested) == ["knn", "linear"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["study"] == "simsiam_collapse" and parent.data.tags["study.checks"] == "passed"
    assert parent.data.tags["study.budget"] == "smoke" and "Chen & He" in parent.data.tags["study.source"]
    assert set(rows) == {"baseline", "no_stop_gradient", "no_predictor"}
    assert rows["no_stop_gradient"].data.params["method.stop_gradient"] == "False"
    assert rows["no_predictor"].data.params["method.predictor"] == "False"
    for run in rows.values():
        assert run.info.status == "FINISHED"
        assert 0 < run.data.metrics["eval/knn_top1_k20"] <= 1 and 0 < run.data.metrics["eval/linear_top1"] <= 1
    # above chance (10 classes) for the spread baseline; the collapsed rows' std is below it (the checks)
    assert rows["baseline"].data.metrics["eval/knn_top1_k20"] > 0.2
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/study_table.json", "study/study_table.md", "study/study.png"} <= artifacts
    assert [line["row"] for line in table["table"]] == ["baseline", "no_stop_gradient", "no_predictor"]
    assert [line["paper linear"] for line in table["table"]] == [67.7, 0.1, 0.1]
    baseline = table["table"][0]
    assert baseline["ours knn"] == round(100 * rows["baseline"].data.metrics["eval/knn_top1_k20"], 2)
    assert all(check["passed"] for check in table["checks"]) and len(table["checks"]) == 2
    assert re.search(r"\| baseline +\| 67\.7 +\|", out) and "check passed: no_stop_gradient" in out
    with pytest.raises(ConfigError, match="is a sweep, not a study"):  # a sweep is not resumed as a study
        (tmp_path / "runs" / "plain").mkdir()
        (tmp_path / "runs" / "plain" / "sweep.json").write_text('{"name": "plain"}')
        resumed_state("plain", [f"train.storage_path={tmp_path / 'runs'}"])


def test_a_reference_run_is_shown_beside_the_rows_with_its_inference_speed(tmp_path):
    """The distillation study's teacher: a finished run named by method.teacher_run, its logged metrics as the rows'."""
    from pipelines.training.methods import build_method

    uri = mlflow_store(tmp_path)
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("teacher"))
    client.log_metric(run.info.run_id, "eval/knn_top1_k20", 0.8123)
    teacher = build_config({"model": {"projector_hidden_dim": 64, "projection_dim": 16, "predictor_hidden_dim": 64}})
    write_run_files(tmp_path / "runs", "byol-24ep", teacher, build_method(teacher, 1, 10), uri, run.info.run_id)
    space, base = load_study(PROJECT_ROOT / "tune_spaces" / "studies" / "distillation.yaml", "smoke")
    base["train"] = {**base.get("train", {}), "storage_path": str(tmp_path / "runs")}
    lines = reference_lines(space, build_config(base))
    assert lines == [{"row": "teacher", "ours knn": 81.23, "ours linear": None, "status": "reference", "run": "byol-24ep"}]
    assert inference_speed(str(tmp_path / "runs"), "byol-24ep", 28, 1, batch=16, repeats=1) > 0
    space.study["references"] = {"teacher": "method.nothing"}
    with pytest.raises(ConfigError, match="references.teacher: 'method.nothing' names no run"):
        reference_lines(space, build_config(base))


COLLAPSE_STUDIES = {"dino_collapse_guards": ("no_centering", "no_sharpening"),
                    "byol_batch_statistics": ("no_normalisation",)}


def train_rows_in_process(stem: str, data: str) -> list[dict]:
    """Each row of a study at its smoke budget, trained as one Ray Train worker trains it but in process: the
    row's configuration, its augmentation of the real slice's images in a seeded order, its schedules and steps
    (pipelines.training.step); each row's line holds the means of the last `train.log_every` steps, the value the run logs
    last (what the study's table reads from MLflow)."""
    import numpy as np
    import torch

    from pipelines.data.augment_batch import AugmentBatch, view_column
    from pipelines.data.store import read_info, read_split
    from pipelines.data.stream import augment_arguments
    from pipelines.features.extract import Normalizer
    from pipelines.training.loop import MetricWindow, seed_everything
    from pipelines.training.step import TrainStep, prepare

    path = PROJECT_ROOT / "tune_spaces" / "studies" / f"{stem}.yaml"
    space, base = load_study(path, "smoke")
    info = read_info(data)
    encoded = read_split(data, "train", ("image",)).column("image").to_numpy(zero_copy_only=False)
    table = []
    for row in space.rows:
        config = build_config(apply_values(copy.deepcopy(base), {ROW_AXIS: row}, space.rows))
        images = encoded[:config.data.limit or len(encoded)]
        steps_per_epoch = len(images) // config.data.batch_size
        seed_everything(config.train.seed)
        prepared = prepare(config, info.channels, steps_per_epoch, torch.device("cpu"))
        train_step = TrainStep(config, prepared.method, prepared.optimizer, steps_per_epoch, torch.device("cpu"))
        augment, normalize = AugmentBatch(**augment_arguments(config, info)), Normalizer(info.mean, info.std, "cpu")
        order, window = np.random.default_rng(config.train.seed), MetricWindow()
        for step in range(config.train.epochs * steps_per_epoch):
            if step % steps_per_epoch == 0:
                batches = order.permutation(len(images)).reshape(steps_per_epoch, -1)
            batch = augment({"image": images[batches[step % steps_per_epoch]]})
            views = [normalize(torch.from_numpy(batch[view_column(v)])) for v in range(prepared.method.num_views)]
            window.add(step, train_step(views, step))
            if (step + 1) % config.train.log_every == 0 and step + 1 < config.train.epochs * steps_per_epoch:
                window.reduce(1)
        logged = {f"train/{key}": value for key, value in window.reduce(config.train.epochs).items()}
        table.append({"row": row, **{f"ours {label}": shown(metric, logged.get(metric))
                                     for label, metric in metrics_of(space.study).items()}})
    return space, table


COLLAPSE_STUDIES = {"dino_collapse_guards": ("no_centering", "no_sharpening"),
                    "byol_batch_statistics": ("no_normalisation",)}


@pytest.mark.slow
@pytest.mark.parametrize("stem", COLLAPSE_STUDIES)
def test_a_collapse_study_at_its_smoke_budget_sees_its_ablations_collapse(stem, fmnist_slice):
    """DINO without centring or without sharpening, BYOL without normalisation: each row trained in process at
    the study's smoke budget on real views; the study's own checks on the collapse signal pass (the SimSiam
    study below runs end to end through Ray Tune, as every study does)."""
    space, table = train_rows_in_process(stem, fmnist_slice)
    outcomes = check_outcomes(space, table)
    assert [outcome["row"] for outcome in outcomes] == list(COLLAPSE_STUDIES[stem])
    assert all(outcome["passed"] for outcome in outcomes), outcomes


@pytest.mark.slow
def test_another_study_runs_one_row_end_to_end(ray_session, fmnist_slice, tmp_path):
    """The studies CI cannot afford whole (a Ray Train run a row, about a minute each): one row of one of them
    (`study()` with `rows`; MAE, the only end-to-end MAE run), every row of every study steps in process above.
    The row trains in bf16 (the GPU's path through CPU autocast) on 2 steps of 64 (this CPU emulates half
    precision: the budget's 2 steps of 256 took 175 s against 76 s in fp32) and, asked to (sweeps default to no
    pictures), logs its reconstructions as MLflow images (the step slider in the UI)."""
    sets = ["train.precision=bf16", "eval.picture_every=1", "data.limit=128", "data.batch_size=64",
            "eval.online_bank_size=128", "eval.online_query_size=64"]  # the online kNN embeds in bf16 too: 29 img/s
    result, client, parent, rows, table = run_smoke("mae_mask_ratio", "mask", fmnist_slice, tmp_path, sets, ["0.9"])
    assert result.passed and [line["row"] for line in result.table] == ["0.9"], result.markdown
    assert parent.info.status == "FINISHED" and parent.data.tags["study.rows"] == "0.9"
    assert {name: run.info.status for name, run in rows.items()} == {"0.9": "FINISHED"}
    assert rows["0.9"].data.params["method.mask_ratio"] == "0.9" and rows["0.9"].data.params["method.name"] == "mae"
    assert rows["0.9"].data.params["train.precision"] == "bf16"
    line, = table["table"]
    assert line["row"] == "0.9" and line["ours knn"] == round(100 * rows["0.9"].data.metrics["eval/knn_top1_k20"], 2)
    assert 10 < line["ours knn"] <= 100 and 10 < line["ours linear"] <= 100  # above chance: raw pixels are ~70
    pictures = {a.path.split("/")[1].split("+timestamp")[0]
                for a in client.list_artifacts(rows["0.9"].info.run_id, "images") if a.path.endswith(".png")}
    assert pictures == {f"mae_reconstruction+step+{int(rows['0.9'].data.metrics['step'])}"}


def test_a_table_prints_as_markdown_padded_to_read_as_text():
    from pipelines.tuning.report import markdown_table

    text = markdown_table([{"row": "baseline", "ours knn": 81.234567, "paper": None},
                           {"row": "no_predictor", "ours knn": 12345.6, "extra": 3}])
    assert text.splitlines() == ["| row          | ours knn | paper | extra |",
                                 "| ------------ | -------- | ----- | ----- |",
                                 "| baseline     | 81.23    | -     | -     |",
                                 "| no_predictor | 12346    | -     | 3     |"]
    assert markdown_table([]) == "(no rows)"
