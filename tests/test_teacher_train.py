"""Stage one end to end on tiny settings: train, save, reload; exact resume; SIGKILL resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, tiny_overrides

TRAIN = [sys.executable, str(REPO / "teacher" / "train.py"), "--config", str(REPO / "configs" / "demo.yaml")]


def run_teacher(args, **kw):
    from teacher.train import main

    return main(["--config", str(REPO / "configs" / "demo.yaml"), *args], **kw)


def test_teacher_trains_saves_and_reloads(tiny_data, tmp_path):
    from core.models import load_model

    metrics = run_teacher(tiny_overrides(tiny_data, tmp_path))
    assert metrics["psnr"] > 0 and metrics["identity_psnr"] > 0
    model_dir = tmp_path / "demo" / "teacher" / "model"
    teacher = load_model(model_dir.parent)
    manifest = teacher.manifest
    assert manifest["codec"]["kind"] == "pixel" and manifest["step"] == 6 and manifest["train_seconds"] > 0
    assert manifest["class"] == "teacher.flow:FlowTeacher" and manifest["transfer"] == {"mode": "grid", "grid": 4}
    z = torch.randn(1, 192, 8, 8)
    again = load_model(model_dir)
    assert torch.equal(teacher.predict(z), again.predict(z))  # deterministic sampler, same weights
    assert not torch.equal(teacher.with_steps(1).predict(z), teacher.predict(z))  # K=1 is another walk
    assert (tmp_path / "demo" / "teacher" / "config.yaml").is_file()
    assert sorted(p.name for p in (tmp_path / "demo" / "teacher").glob("checkpoint-*")) == ["checkpoint-3",
                                                                                             "checkpoint-6"]


def _state(ckpt: Path) -> dict:
    rng = torch.load(ckpt / "random_states_0.pkl", weights_only=False)  # our own file
    opt = torch.load(ckpt / "optimizer.bin", weights_only=False)
    return {"model": load_file(ckpt / "model.safetensors"), "opt": opt, "rng": rng["torch_manual_seed"]}


def test_resume_matches_an_uninterrupted_run(tiny_data, tmp_path):
    """accelerate's own bar: N steps straight == save, reload, continue (weights, optimiser, RNG)."""
    straight = tmp_path / "straight"
    run_teacher([*tiny_overrides(tiny_data, tmp_path), "--output_dir", str(straight)])
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    import shutil

    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    run_teacher([*tiny_overrides(tiny_data, tmp_path), "--output_dir", str(resumed),
                 "--resume_from_checkpoint", "latest"])
    a, b = _state(straight / "checkpoint-6"), _state(resumed / "checkpoint-6")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for (ka, va), (_, vb) in zip(a["opt"]["state"].items(), b["opt"]["state"].items()):
        for name in va:
            assert torch.equal(torch.as_tensor(va[name]), torch.as_tensor(vb[name])), (ka, name)
    assert torch.equal(a["rng"], b["rng"])


def test_sigkill_mid_run_resumes_from_last_checkpoint(tiny_data, tmp_path):
    out = tmp_path / "killed"
    args = [*TRAIN, *tiny_overrides(tiny_data, tmp_path), "--output_dir", str(out),
            "teacher.train_steps=400", "train.checkpointing_steps=2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def saved() -> list[int]:
        return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))

    deadline = time.time() + 120
    while time.time() < deadline and not [s for s in saved() if s >= 4]:  # old ones are pruned (limit 2)
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = saved()
    assert done and done[-1] >= 4, "the run never reached its second checkpoint"
    assert not (out / "model").exists()
    res = subprocess.run([*args[:-2], "teacher.train_steps=" + str(done[-1] + 2), "train.checkpointing_steps=2",
                          "--resume_from_checkpoint", "latest"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming from {out / f'checkpoint-{done[-1]}'}" in res.stdout
    assert (out / "model" / "manifest.json").is_file()


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo is tested on Linux")
def test_two_processes_train_together(tiny_data, tmp_path):
    """torchrun with 2 CPU processes (gloo): sharded data, synchronised gradients, one model."""
    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           "29531", *TRAIN[1:], *tiny_overrides(tiny_data, tmp_path), "--output_dir", str(out),
           "teacher.train_steps=4", "train.checkpointing_steps=4"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "model" / "manifest.json").is_file()
    assert (out / "checkpoint-4" / "random_states_1.pkl").is_file()  # both ranks saved their state


def test_sharding_and_gradient_sync_match_one_big_batch(tmp_path):
    """2 processes x batch 2 == 1 process x batch 4: disjoint shards, averaged gradients."""
    import json

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    toy = str(REPO / "tests" / "ddp_toy.py")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29533", toy, str(tmp_path / "ddp"), "2"], env=env, capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    subprocess.run([sys.executable, toy, str(tmp_path / "one"), "4"], env=env, check=True, timeout=120)
    r0, r1 = (json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1))
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    assert r0["weight"] == r1["weight"] and r0["bias"] == r1["bias"]  # gradients in sync
    for step in range(8):
        a, b = r0["seen"][2 * step:2 * step + 2], r1["seen"][2 * step:2 * step + 2]
        assert not set(a) & set(b)  # each process its own shard
        assert sorted(a + b) == sorted(one["seen"][4 * step:4 * step + 4])  # together: the big batch
    assert torch.allclose(torch.tensor(r0["weight"]), torch.tensor(one["weight"]), atol=1e-5)


def test_lpips_loss_without_weights_stops_with_the_fix(tiny_data, tmp_path, monkeypatch):
    """Asking for the LPIPS term with no backbone weights is an error naming the fix, not a random net."""
    from core.perceptual import LPIPSUnavailable

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    with pytest.raises(LPIPSUnavailable, match="teacher.lpips_weight=0"):
        run_teacher([*tiny_overrides(tiny_data, tmp_path), "teacher.lpips_weight=1.0"])


def test_histogram_and_ssim_losses_measure_what_they_claim():
    from eval.metrics import ssim
    from teacher.losses import histogram_loss, ssim_loss

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 32, generator=g) * 0.8
    shuffled = x.flatten(2)[..., torch.randperm(24 * 32, generator=g)].view_as(x)
    assert histogram_loss(shuffled, x) < 1e-7  # the same colours anywhere: the same histograms
    assert abs(float(histogram_loss(x + 0.1, x)) - 0.1) < 1e-6  # W1 of a shift is the shift
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    assert float(ssim_loss(x, x)) < 1e-6
    assert abs(float(ssim_loss(blurred, x)) - (1 - ssim(blurred, x))) < 0.02  # the eval's SSIM


def test_teacher_loss_adds_the_histogram_and_ssim_terms():
    from types import SimpleNamespace

    from core.codecs import PixelCodec
    from core.config import load_config
    from teacher.losses import TeacherLoss

    cfg = load_config(str(REPO / "configs" / "demo.yaml"), ["teacher.hist_weight=1.0", "teacher.ssim_weight=0.5"])
    codec = PixelCodec(4)
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    z_hat = codec.encode(x).requires_grad_(True)
    loss = TeacherLoss(cfg, lambda z_in, z_target: (torch.zeros(()), z_hat), "flow", codec,
                       SimpleNamespace(device=torch.device("cpu")), total_steps=1)
    total, parts = loss.loss_fn({"z_in": codec.encode(x), "z_target": codec.encode(y)}, step=0)
    assert parts["loss_hist"] > 0 and 0 < parts["loss_ssim"] < 2
    assert torch.isclose(total, parts["loss_hist"] + 0.5 * parts["loss_ssim"])
    total.backward()
    assert z_hat.grad.abs().sum() > 0


def test_an_ensemble_teacher_trains_its_members_and_follows_their_mean_velocity(tiny_data, tmp_path):
    from core.models import load_model

    args = [*tiny_overrides(tiny_data, tmp_path), "teacher.ensemble=2"]
    metrics = run_teacher(args)
    run = tmp_path / "demo" / "teacher"
    ensemble = load_model(run)
    members = [load_model(run / f"member-{m}") for m in range(2)]
    assert ensemble.net.members == 2 and all(m.net.members == 1 for m in members)
    assert ensemble.manifest["train_pairs"] == members[0].manifest["train_pairs"] and metrics["psnr"] > 0
    assert [m["folder"] for m in ensemble.manifest["members"]] == [str(run / "member-0"), str(run / "member-1")]
    z_t, z_in, t = torch.randn(2, 192, 8, 8), torch.randn(2, 192, 8, 8), torch.tensor([0.2, 0.7])
    v = [m.net.velocity(z_t, t, z_in) for m in members]
    assert not torch.allclose(v[0], v[1])  # two seeds: two different networks
    torch.testing.assert_close(ensemble.net.velocity(z_t, t, z_in), (v[0] + v[1]) / 2)
    assert ensemble.function_evals() == 2 * members[0].function_evals()
    # a rerun keeps the trained members and rebuilds the same ensemble
    stamp = [(run / f"member-{m}" / "model").stat().st_mtime_ns for m in range(2)]
    run_teacher(args)
    assert [(run / f"member-{m}" / "model").stat().st_mtime_ns for m in range(2)] == stamp
    torch.testing.assert_close(load_model(run).net.velocity(z_t, t, z_in), ensemble.net.velocity(z_t, t, z_in))
    # the one-step student starts from member 0's network and distils the ensemble
    from distill.run import main as distill

    distill(["--config", str(REPO / "configs" / "demo.yaml"), *args, "student.init=teacher", "distill.train_steps=2"])
    student = load_model(tmp_path / "demo" / "student")
    assert student.function_evals() == 1 and student.manifest["teacher"] == str(run / "model")
