"""scripts/gpu_check.sh --dry: the GPU check's every step on the CPU at tiny size."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow  # every stage and two benchmarks: about a minute on 2 cores
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_runs_every_step_and_writes_json_and_markdown(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry", "--out", str(tmp_path)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["training"]["parts"]
    assert {"hypir teacher", "flow teacher (SDXL VAE)", "distill (hypir teacher)", "distill (flow teacher)",
            "eval (one photo)"} <= set(parts)
    assert parts["hypir teacher"]["steps"] == 1 and parts["hypir teacher"]["s_per_step"] > 0
    assert "student" in report["bench_hypir"]["rows"] and "teacher K=4" in report["bench_flow"]["rows"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.startswith("### GPU check (dry run") and "| hypir teacher |" in md and "eval.bench" in md
