"""SLURM (issue 16): Lightning's SLURM environment gives each srun task its rank under the shipped
`trainer=ddp` / `trainer=fsdp`, and `hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml: the
submitit plugin's `submitit_slurm` settings) shapes the job from the trainer settings. Nothing is
submitted: no cluster here. It composes without the plugin; building its launcher needs the plugin
(`pip install -e .[slurm]`)."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import CONF_DIR

# What srun sets for task 3 of a 2-node × 2-task job (node 1, its second task).
SRUN_TASK_3 = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
               "SLURM_NODEID": "1", "SLURM_NODELIST": "gpu-node[07-08]", "SLURM_JOB_ID": "4242",
               "SLURM_JOB_NAME": "train"}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_lightning_detects_slurm_and_takes_the_ranks_from_it(strategy, compose_train, monkeypatch, tmp_path):
    from hydra.utils import instantiate
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    for key, value in SRUN_TASK_3.items():
        monkeypatch.setenv(key, value)
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    # The trainer sets the process-wide rank_zero_only.rank to this fake task's 3; restored after the test,
    # or every later test's loggers would stay silent.
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    cfg = compose_train("+experiment=grpo", f"trainer={strategy}", "trainer.devices=2", "trainer.num_nodes=2")
    trainer = instantiate(cfg.trainer, logger=False, default_root_dir=str(tmp_path))
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment)
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (4, 3, 1, 1)
    assert env.main_address == "gpu-node07"  # the first node of the list
    assert 10000 <= env.main_port < 20000  # derived from the job id: the same on every task


def test_slurm_launcher_shapes_the_job_from_the_trainer(compose_train):
    """Composed without the plugin: nodes, tasks and GPUs per node come from the trainer settings,
    and every field is one of the plugin's SlurmQueueConf (hydra-submitit-launcher 1.2)."""
    cfg = compose_train("+experiment=grpo", "trainer=fsdp", "trainer.devices=8", "trainer.num_nodes=2",
                        "hydra/launcher=slurm", "hydra.launcher.partition=gpu", return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
    assert launcher.partition == "gpu" and launcher.max_num_timeout == 0
    plugin_fields = {"submitit_folder", "timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb",
                     "nodes", "name", "stderr_to_stdout", "partition", "qos", "comment", "constraint", "exclude",
                     "gres", "cpus_per_gpu", "gpus_per_task", "mem_per_gpu", "mem_per_cpu", "account",
                     "signal_delay_s", "max_num_timeout", "additional_parameters", "array_parallelism", "setup"}
    assert set(launcher) - {"_target_"} == plugin_fields


def test_slurm_launcher_is_the_plugins(compose_train):
    """With the plugin: the file has exactly its SlurmQueueConf fields, and its launcher builds."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e .[slurm]")
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    cfg = compose_train("+experiment=grpo", "trainer=ddp", "trainer.num_nodes=2", "hydra/launcher=slurm",
                        return_hydra_config=True)
    assert set(cfg.hydra.launcher) == set(OmegaConf.structured(SlurmQueueConf))
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher" and launcher.params["nodes"] == 2
