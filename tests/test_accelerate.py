"""Many GPUs and machines: the configs/accelerate templates parse as accelerate configs, and both
stages run as two CPU processes (torchrun, gloo) with sharded data and one saved model each."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, tiny_overrides

TEMPLATES = ["multi_gpu", "multi_node", "deepspeed_zero2", "fsdp"]


@pytest.mark.parametrize("name", TEMPLATES)
def test_templates_are_accelerate_configs(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
    kind = {"deepspeed_zero2": "DEEPSPEED", "fsdp": "FSDP"}.get(name, "MULTI_GPU")
    assert cfg.distributed_type.value == kind and cfg.num_processes > 1 and not cfg.use_cpu
    if name == "deepspeed_zero2":
        assert cfg.deepspeed_config["zero_stage"] == 2
    if name == "fsdp":
        assert cfg.fsdp_config["fsdp_use_orig_params"]  # frozen base + trainable LoRA in one module
    if name == "multi_node":
        assert cfg.num_machines == 2 and cfg.main_process_ip


@pytest.mark.slow  # four process launches: about a minute on 2 cores
@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_two_processes_run_teacher_then_distill(tiny_data, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = [*tiny_overrides(tiny_data, tmp_path), "teacher.train_steps=2", "distill.train_steps=2",
              "train.checkpointing_steps=2", "distill.lambda_adv=0.1", "distill.adv_warmup_steps=1"]
    for port, script in ((29541, "teacher/train.py"), (29543, "distill/run.py")):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(REPO / script), "--config", str(REPO / "configs" / "demo.yaml"), *common]
        res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.count("model saved to") == 1, res.stdout[-2000:]  # the main process alone saves
    for stage in ("teacher", "student"):
        run = tmp_path / "demo" / stage
        for rank in (0, 1):  # both ranks reached the last step and wrote their state there
            assert (run / "checkpoint-2" / f"random_states_{rank}.pkl").is_file(), (stage, rank)
        manifests = list(run.rglob("manifest.json"))  # one model folder, written once
        assert manifests == [run / "model" / "manifest.json"], manifests
        assert (run / "model" / json.loads(manifests[0].read_text())["weights"]).is_file()
