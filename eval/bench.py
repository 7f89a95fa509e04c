"""Speed benchmark: teacher vs student (and the student's fast paths), measured in one run.

    python -m eval.bench --config configs/demo.yaml                    # CPU here, CUDA where present
    python -m eval.bench --config configs/demo.yaml --sizes 1024 6000x4000 --repeats 5

For each row and size it prints p50 latency, images/s at batch 1 and peak memory. At a square
size (e.g. 1024) the model runs at that size (codec + network, no transfer). At a photo size
(e.g. 6000x4000, 24 MP) it is the whole submission path: the working copy at the model's working
resolution, the network, and the full-resolution transfer to every pixel. It ends with the
ratios: student over the K-step teacher, and the fastest student path over eager.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.codecs import build_codec  # noqa: E402
from core.config import CodecConfig, load_config  # noqa: E402
from core.pipeline import EditPipeline  # noqa: E402
from eval.throughput import device_name, peak_memory_mib, reset_peak_memory, time_calls  # noqa: E402


def bench_rows(cfg, device, fast_paths: bool = True) -> list[dict]:
    """[{"name", "predict"}]: the teacher at its K, the student, and its fast paths."""
    from student import Student
    from teacher import load_teacher

    teacher, codec_cfg, _ = load_teacher(cfg.run_dir("teacher"))
    teacher = teacher.to(device)
    k = teacher.num_steps
    rows = [{"name": f"teacher K={k}", "predict": lambda z: teacher.sample(z), "codec": codec_cfg}]
    student, s_codec, _ = Student.from_pretrained(cfg.run_dir("student"))
    student = student.to(device)
    rows.append({"name": "student (eager)", "predict": torch.no_grad()(student), "codec": s_codec})
    if fast_paths:
        from student.fast import fast_variants

        for name, fn in fast_variants(student, device):
            rows.append({"name": f"student ({name})", "predict": fn, "codec": s_codec})
    return rows


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h or w)


def test_image(w: int, h: int) -> np.ndarray:
    """A smooth gradient with fine texture, deterministic (content does not change the cost)."""
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w, yy / h, 0.5 + 0 * xx], -1) * 0.8
    return np.clip(base + 0.05 * g.standard_normal((h, w, 3), dtype=np.float32), 0, 1)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--sizes", nargs="+", default=["1024", "6000x4000"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--no-fast-paths", action="store_true")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = bench_rows(cfg, device, fast_paths=not args.no_fast_paths)
    codec = build_codec(CodecConfig(**rows[0]["codec"])).to(device)
    results: dict = {"device": device_name(device), "torch": torch.__version__, "rows": {}}
    print(f"device: {results['device']}")
    print(f"{'row':<28} {'size':>10} {'p50 ms':>10} {'img/s':>8} {'peak MiB':>9}")
    for size in args.sizes:
        w, h = parse_size(size)
        square = "x" not in size
        img = test_image(w, h)
        for row in rows:
            long_side = max(w, h) if square else cfg.data.val_long_side
            pipe = EditPipeline(row["predict"], codec, long_side, "none" if square else cfg.eval.transfer,
                                cfg.eval.transfer_grid, device, cfg.data.size_multiple)
            if square:  # the model path alone at this size
                x = torch.from_numpy(pipe.working_copy(img)).permute(2, 0, 1)[None].float()
                fn = lambda x=x, pipe=pipe: pipe.edit_working(x)  # noqa: E731
            else:
                fn = lambda pipe=pipe: pipe(img)  # noqa: E731
            reset_peak_memory(device)
            stats = time_calls(fn, warmup=1, repeats=args.repeats, max_seconds=args.max_seconds)
            entry = {**stats, "images_per_s": 1000.0 / stats["p50_ms"], "peak_mem_mib": peak_memory_mib(device)}
            results["rows"].setdefault(row["name"], {})[size] = entry
            print(f"{row['name']:<28} {size:>10} {entry['p50_ms']:>10.1f} {entry['images_per_s']:>8.2f} "
                  f"{entry['peak_mem_mib']:>9.0f}", flush=True)
    ratios = {}
    names = list(results["rows"])
    teacher, eager = names[0], "student (eager)"
    for size in args.sizes:
        t_ms = results["rows"][teacher][size]["p50_ms"]
        e_ms = results["rows"][eager][size]["p50_ms"]
        fastest = min((n for n in names if n.startswith("student")), key=lambda n: results["rows"][n][size]["p50_ms"])
        f_ms = results["rows"][fastest][size]["p50_ms"]
        ratios[size] = {"student_over_teacher": t_ms / e_ms, "fastest_student": fastest,
                        "fastest_over_teacher": t_ms / f_ms, "fastest_over_eager": e_ms / f_ms}
        print(f"{size}: student (eager) is {t_ms / e_ms:.1f}x faster than {teacher}; fastest student path "
              f"'{fastest}' is {e_ms / f_ms:.2f}x faster than eager and {t_ms / f_ms:.1f}x faster than the teacher")
    results["ratios"] = ratios
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
