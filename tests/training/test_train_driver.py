"""What both Ray Train drivers share: the CPU check before a run and each process's torch threads."""
import os

import pytest

from pipelines.config.load import load_config
from pipelines.config.section import ConfigError
from pipelines.evaluation.finetune_settings import FinetuneSettings
from pipelines.evaluation.finetune_settings import required_cpus as finetune_cpus
from pipelines.training.checks import required_cpus
from pipelines.training.driver import check_cpus, torch_threads


def test_torch_threads_share_the_machines_cores_and_a_setting_wins():
    cores = os.cpu_count() or 1
    assert torch_threads(1) == cores and torch_threads(cores * 4) == 1 and torch_threads(0) == cores
    assert torch_threads(2, configured=3) == 3


def test_a_run_reserving_more_cpus_than_the_cluster_has_is_refused_with_what_to_lower():
    config = load_config(None, ["train.num_workers=2", "train.cpus_per_worker=1"])
    assert required_cpus(config) == 2 * 1 + 0.5 + 1  # workers, the augmentation actor, file listing
    check_cpus(required_cpus(config), 3.5, "the run", "lower train.cpus_per_worker")  # fits exactly
    with pytest.raises(ConfigError, match=r"^the run reserves 3.5 CPUs but the Ray cluster has 2: lower train"):
        check_cpus(required_cpus(config), 2, "the run", "lower train.cpus_per_worker")
    two_workers = finetune_cpus(FinetuneSettings(protocol="finetune", num_workers=2))
    with pytest.raises(ConfigError, match="finetune reserves .* CPUs but the Ray cluster has 1: use fewer --workers"):
        check_cpus(two_workers, 1, "finetune", "use fewer --workers")
