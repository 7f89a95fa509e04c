"""The eval report: plot.png, report.html, writeup.md and submission.zip from the report dict.

    write_report(report, out_dir, val_source, cfg)   # report: the dict eval/run.py builds

Everything is read from `report` (the same dict that goes to report.json), so a report can be
rebuilt from a saved report.json. The HTML opens with no network: inline CSS and JS, images by
relative paths (`images/...`, `plot.png`) inside out_dir. Only numbers in `report` are shown;
a missing one is printed as "n/a", LPIPS without its weights as "unavailable" with the reason.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from pathlib import Path
from urllib.parse import quote

from core.checkpoint import atomic_write_bytes, atomic_write_zip

KIND_STYLE = {  # kind -> (marker, colour, legend label)
    "baseline": ("s", "#7f7f7f", "baseline"),
    "teacher": ("o", "#1f77b4", "teacher (K steps)"),
    "student": ("D", "#d62728", "student (1 step)"),
    "lut": ("^", "#2ca02c", "LUT baseline"),
}
PARTS = ("resize_ms", "encode_ms", "model_ms", "decode_ms", "transfer_ms")
NA = "n/a"
# a table: its header, then rows of (plain-text cells, is this the chosen row?)
Table = tuple[list[str], list[tuple[list[str], bool]]]


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the points (name, latency_ms, psnr_db) that no other point dominates.

    A point is dominated when another has latency <= and PSNR >=, strictly better in one.
    Points with a non-finite value are left out. Returned in order of increasing latency.
    """
    ok = [p for p in points if math.isfinite(p[1]) and math.isfinite(p[2])]
    front = [(n, lat, q) for n, lat, q in ok
             if not any(l2 <= lat and q2 >= q and (l2 < lat or q2 > q) for _, l2, q2 in ok)]
    return [n for n, _, _ in sorted(front, key=lambda p: (p[1], -p[2]))]


# ----------------------------------------------------------------------------- reading the dict

def _num(x, fmt: str = "{:.2f}") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return NA
    return fmt.format(x)


def _secs(x) -> str:
    if x is None:
        return NA
    return f"{x:.1f} s" if x < 120 else f"{x:.0f} s ({x / 60:.1f} min)"


def _conf(report: dict, cfg, dotted: str, default=None):
    """A config value from report["config"] (cfg.to_dict()), else from the cfg object."""
    node = report.get("config") or (cfg.to_dict() if hasattr(cfg, "to_dict") else {})
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def _score_res(report: dict, cfg) -> str:
    sel = report["selection"]
    return str(sel.get("score_resolution") or _conf(report, cfg, "eval.score_resolution", "1024"))


def _chosen(report: dict) -> dict:
    name = report["selection"]["chosen"]
    for row in report["rows"]:
        if row["name"] == name:
            return row
    raise ValueError(f"eval/report.py: the chosen model {name!r} is not among the report's rows "
                     f"{[r['name'] for r in report['rows']]}; re-run eval/run.py")


def _strip_rows(report: dict) -> tuple[dict | None, dict | None]:
    """The highest-K teacher row and the student row (the chosen one if it is a student)."""
    rows, chosen = report["rows"], report["selection"]["chosen"]
    teachers = [r for r in rows if r["kind"] == "teacher"]
    students = sorted((r for r in rows if r["kind"] == "student"),
                      key=lambda r: r["name"] != chosen)
    teacher = max(teachers, key=lambda r: r.get("num_steps") or 0) if teachers else None
    return teacher, (students[0] if students else None)


def _stages(report: dict) -> list[tuple[str, dict]]:
    """(stage, manifest) once per trained model: the teacher rows share one manifest."""
    seen, out = set(), []
    for row in report["rows"]:
        m = row.get("manifest") or {}
        stage = m.get("stage") or row["kind"]
        key = (stage, m.get("created"), m.get("step"), m.get("train_seconds"))
        if m and key not in seen:
            seen.add(key)
            out.append((stage if row["kind"] == "teacher" else f"{stage} ({row['name']})", m))
    return out


def _lpips(report: dict, value) -> str:
    if not report["lpips"].get("available") or value is None:
        return "unavailable"
    return _num(value, "{:.4f}")


def _lpips_note(report: dict) -> str:
    lp = report["lpips"]
    if lp.get("available"):
        return ""
    reason = lp.get("reason") or "no reason given"
    return reason if reason.startswith("LPIPS unavailable") else f"LPIPS unavailable: {reason}"


# ----------------------------------------------------------------------------- tables (HTML and MD)

def quality_table(report: dict) -> Table:
    head = ["model", "kind", "network evals", "PSNR dB (higher better)", "SSIM (higher better)",
            "ΔE00 (lower better)", "LPIPS (lower better)"]
    chosen, rows = report["selection"]["chosen"], []
    for r in report["rows"]:
        m = r["quality"]["mean"]
        rows.append(([r["name"], r["kind"], _num(r.get("function_evals"), "{}"),
                      _num(m.get("psnr")),
                      _num(m.get("ssim"), "{:.4f}"), _num(m.get("ciede2000")),
                      _lpips(report, m.get("lpips"))], r["name"] == chosen))
    return head, rows


def score_table(report: dict, cfg) -> Table:
    head = ["model", "kind", "PSNR dB", f"p50 ms @{_score_res(report, cfg)}", "quality",
            "efficiency", "score"]
    chosen, rows = report["selection"]["chosen"], []
    for r in report["rows"]:
        s = r.get("score") or {}
        rows.append(([r["name"], r["kind"], _num(s.get("psnr_db")),
                      _num(s.get("latency_ms"), "{:.1f}")]
                     + [_num(s.get(k), "{:.3f}") for k in ("quality", "efficiency", "score")],
                     r["name"] == chosen))
    return head, rows


def throughput_table(report: dict, rows: list[dict] | None = None) -> Table:
    head = ["model", "resolution", "size", "working size", "p50 ms", "p95 ms", "images/s",
            "best batch", "images/s @best", "peak MiB", "resize ms", "encode ms", "model ms",
            "decode ms", "transfer ms"]
    chosen, out = report["selection"]["chosen"], []
    for r in report["rows"] if rows is None else rows:
        for res, t in (r.get("throughput") or {}).items():
            bb = t.get("best_batch") or {}
            cells = [r["name"], res, t.get("size") or NA, t.get("working_size") or NA,
                     _num(t.get("p50_ms"), "{:.1f}"), _num(t.get("p95_ms"), "{:.1f}"),
                     _num(t.get("images_per_s")), _num(bb.get("batch"), "{}"),
                     _num(bb.get("images_per_s")), _num(t.get("peak_mem_mib"), "{:.0f}")]
            out.append((cells + [_num(t.get(k), "{:.1f}") for k in PARTS], r["name"] == chosen))
    return head, out


def training_table(report: dict) -> Table:
    rows = [([stage, _num(m.get("step"), "{}"), _secs(m.get("train_seconds")),
              _secs(m.get("wall_seconds"))], False) for stage, m in _stages(report)]
    return ["stage", "steps", "train time", "wall time"], rows


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def html_table(table: Table) -> str:
    head, rows = table
    out = ["<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"]
    for cells, chosen in rows:
        tds = "".join(f'<td class="na">{_esc(c)}</td>' if c in (NA, "unavailable")
                      else f"<td>{_esc(c)}</td>" for c in cells)
        out.append(f"<tr{' class=chosen' if chosen else ''}>{tds}</tr>")
    return "\n".join(out) + "</table>"


def md_table(table: Table) -> str:
    head, rows = table

    def cell(c) -> str:
        return str(c).replace("|", "\\|")  # a '|' in a model name would split the cell

    lines = ["| " + " | ".join(map(cell, head)) + " |", "|" + " --- |" * len(head)]
    for cells, chosen in rows:
        text = [cell(c) for c in cells]
        if chosen:
            text[0] = f"**{text[0]}**"
        lines.append("| " + " | ".join(text) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plot

def write_plot(report: dict, path: Path, resolution: str) -> None:
    """Quality (mean PSNR, dB) vs p50 latency (ms, log) at `resolution`, with the Pareto front."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds = {r["name"]: r["kind"] for r in report["rows"]}
    pts = [(r["name"], (r.get("throughput") or {}).get(resolution, {}).get("p50_ms"),
            r["quality"]["mean"].get("psnr")) for r in report["rows"]]
    # log axis: a zero latency (a cached identity) is drawn at 1 microsecond
    pts = [(n, max(lat, 1e-3), q) for n, lat, q in pts if lat is not None and q is not None]
    front, at = pareto_front(pts), {n: (lat, q) for n, lat, q in pts}
    chosen = report["selection"]["chosen"]
    fig = Figure(figsize=(8, 5.5), dpi=110)
    FigureCanvasAgg(fig)  # the Agg canvas without pyplot: no global backend switch
    ax = fig.add_subplot(1, 1, 1)
    if front:
        xs, ys = [at[n][0] for n in front], [at[n][1] for n in front]
        ax.plot(xs, ys, drawstyle="steps-post", color="#ff7f0e", lw=1.5, zorder=1,
                label="Pareto front")
        ax.scatter(xs, ys, s=220, facecolors="none", edgecolors="#ff7f0e", lw=1.5, zorder=2)
    shown = set()
    for name, lat, q in pts:
        marker, colour, label = KIND_STYLE.get(kinds[name], ("x", "black", kinds[name]))
        ax.scatter([lat], [q], marker=marker, color=colour, s=60, zorder=3,
                   label=None if label in shown else label)
        shown.add(label)
        ax.annotate(name, (lat, q), textcoords="offset points", xytext=(7, 5), fontsize=8)
        if name == chosen:
            ax.scatter([lat], [q], marker="*", s=420, color="gold", edgecolors="black", lw=0.8,
                       zorder=4, label=f"chosen: {name}")
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at {resolution}, batch 1, whole path (ms, log scale)")
    ax.set_ylabel("mean PSNR vs the professional edit (dB)")
    ax.set_title(f"Quality vs latency ({report.get('device', '')})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if pts:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(buf, format="png")
    os.replace(buf, path)


# ----------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;
 max-width:1320px;padding:0 16px;color:#222;background:#fff}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta{color:#555} table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left;white-space:nowrap}
tr.chosen td{background:#fff6d5;font-weight:600}
p.warn{background:#fde2e1;border-left:4px solid #c0392b;padding:6px 10px}
.na{color:#999;font-style:italic} .note{color:#555;font-size:13px;max-width:1000px}
.strip{display:grid;grid-template-columns:repeat(var(--n),1fr);gap:6px;margin:6px 0 18px}
.strip figure{margin:0} .strip img{width:100%;display:block;border:1px solid #ddd}
.strip figcaption{font-size:12px;color:#444;text-align:center}
.cmp{position:relative;width:min(960px,100%);user-select:none}
.cmp img{display:block;width:100%}
.cmp .after{position:absolute;top:0;left:0;width:100%;height:100%;clip-path:inset(0 50% 0 0)}
.cmp .after img{height:100%}
.cmp .bar{position:absolute;top:0;bottom:0;left:50%;width:2px;background:#fff;
 box-shadow:0 0 3px #000}
.controls{margin:8px 0} .controls input[type=range]{width:420px;vertical-align:middle}
.tag{display:inline-block;padding:1px 6px;border-radius:3px;background:#eee;font-size:12px}
"""

# The slider shows the "after" image on the left v% of the frame, the "before" image on the rest.
JS = """
function cmpSet(v){document.getElementById('cmp-after').style.clipPath='inset(0 '+(100-v)+'% 0 0)';
 document.getElementById('cmp-bar').style.left=v+'%';}
function cmpToggle(){var r=document.getElementById('cmp-range');r.value=(+r.value>50)?0:100;
 cmpSet(+r.value);}
function cmpPhoto(i){document.getElementById('cmp-before-img').src=CMP[i][0];
 document.getElementById('cmp-after-img').src=CMP[i][1];}
"""


def _rel(*parts: str) -> str:
    """A relative URL under out_dir, each part percent-encoded (names may hold spaces, '#', '?')."""
    return "/".join(quote(p, safe="") for p in parts)


def _html(report: dict, cfg, out_dir: Path) -> str:
    sel, chosen = report["selection"], _chosen(report)
    name = _esc(_conf(report, cfg, "experiment.name", ""))
    device = _esc(report.get("device", NA))
    detail = sel.get("chosen_detail") or {}
    links = " &middot; ".join(f'<a href="{f}">{f}</a>'
                              for f in ("writeup.md", "report.json", "submission.zip"))
    p = [(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
         f"<title>Eval report: {name}</title><style>{CSS}</style><script>{JS}</script>"
         "</head><body>"),
         f"<h1>Eval report: {name}</h1>",
         (f'<p class="meta">Device: <b>{device}</b> &middot; date: '
         f"{_esc(time.strftime('%Y-%m-%d %H:%M'))} &middot; {_esc(report.get('num_images', NA))} "
         f"evaluation photos &middot; eval took {_esc(_secs(report.get('eval_seconds')))} &middot; "
         f"{links}</p>"),
         "<h2>Selection</h2>",
         (f'<p>Chosen: <b>{_esc(chosen["name"])}</b> '
          f'<span class="tag">{_esc(chosen["kind"])}</span> '
         f"&mdash; score <b>{_esc(_num(sel['scores'].get(chosen['name']), '{:.3f}'))}</b> (quality "
         f"{_esc(_num(detail.get('quality'), '{:.3f}'))}, efficiency "
         f"{_esc(_num(detail.get('efficiency'), '{:.3f}'))}). The identity baseline is scored "
         "for context and never chosen.</p>"),
         "".join(f'<p class="warn"><b>Warning:</b> {_esc(w)}</p>' for w in sel.get("warnings", [])),
         f'<p class="note">{_esc(sel.get("normalisation", ""))}</p>',
         html_table(score_table(report, cfg)),
         "<h2>Quality (mean over the evaluation photos, at output resolution)</h2>",
         html_table(quality_table(report)),
         f'<p class="note">{_esc(_lpips_note(report))}</p>',
         "<h2>Throughput (batch 1 unless stated; whole path)</h2>",
         html_table(throughput_table(report)),
         (f'<p class="note">Device: {device}. "native" is the photo\'s own size through the '
         "model's working copy and the full-resolution transfer. Best batch: the model path at "
         "the working size only (the transfer runs per photo).</p>"),
         f"<h2>Quality vs latency at {_esc(_score_res(report, cfg))}</h2>",
         '<img src="plot.png" alt="quality vs latency plot" style="max-width:100%">',
         "<h2>Training time</h2>",
         html_table(training_table(report)) if _stages(report)
         else '<p class="na">no training manifest in the report</p>',
         _compare_html(report, chosen), _strips_html(report, out_dir), "</body></html>"]
    return "\n".join(p)


def _compare_html(report: dict, chosen: dict) -> str:
    """Before/after of the chosen model: the input under its output, a slider and a toggle."""
    names = report.get("image_names") or []
    if not names:
        return ""
    pairs = [[_rel("images", "input", f"{n}.png"), _rel("images", chosen["slug"], f"{n}.png")]
             for n in names]
    options = "".join(f'<option value="{i}">{_esc(n)}</option>' for i, n in enumerate(names))
    # the paths are percent-encoded, so no '<' or quote can end the script early
    return "\n".join([
        "<h2>Before / after: the chosen model</h2>",
        f"<script>var CMP={json.dumps(pairs)};</script>",
        (f'<div class="controls">photo <select onchange="cmpPhoto(this.value)">{options}</select> '
        'before <input id="cmp-range" type="range" min="0" max="100" value="50" '
        'oninput="cmpSet(this.value)"> after '
        '<button type="button" onclick="cmpToggle()">toggle</button></div>'),
        (f'<div class="cmp"><img id="cmp-before-img" src="{_esc(pairs[0][0])}" alt="before">'
        f'<div class="after" id="cmp-after"><img id="cmp-after-img" src="{_esc(pairs[0][1])}" '
        'alt="after"></div><div class="bar" id="cmp-bar"></div></div>'),
        (f'<p class="note">Left of the line: {_esc(chosen["name"])} (after); right: the input '
        "(before). Drag the slider, or toggle between all-before and all-after.</p>")])


def _strips_html(report: dict, out_dir: Path) -> str:
    """Per photo: input | highest-K teacher | student | target."""
    cols = [("input", "input")]
    cols += [(r["slug"], r["name"]) for r in _strip_rows(report) if r]
    cols.append(("target", "target (professional edit)"))
    out = ["<h2>Side by side: " + " | ".join(_esc(label) for _, label in cols) + "</h2>"]
    for n in report.get("image_names") or []:
        figs = []
        for slug, label in cols:
            img = (f'<img src="{_esc(_rel("images", slug, n + ".png"))}" alt="{_esc(label)}" '
                   'loading="lazy">' if (out_dir / "images" / slug / f"{n}.png").is_file()
                   else '<p class="na">missing</p>')
            figs.append(f"<figure>{img}<figcaption>{_esc(label)}</figcaption></figure>")
        out.append(f'<h3>{_esc(n)}</h3><div class="strip" style="--n:{len(cols)}">'
                   f"{''.join(figs)}</div>")
    return "\n".join(out)


# ----------------------------------------------------------------------------- writeup

def _writeup(report: dict, cfg) -> str:
    def c(key, default=None):
        return _conf(report, cfg, key, default)

    sel, rows, chosen = report["selection"], report["rows"], _chosen(report)
    res = _score_res(report, cfg)
    ks = sorted(r["num_steps"] for r in rows if r["kind"] == "teacher" and r.get("num_steps"))
    transfer, grid, codec = c("eval.transfer", "grid"), c("eval.transfer_grid"), c("codec.kind")
    codec_txt = {"pixel": f"pixel-unshuffle (space-to-depth, factor {c('codec.factor')}; exact, "
                          "no weights)",
                 "sd-vae": f"the Stable Diffusion VAE ({c('codec.pretrained')})",
                 "taesd": f"TAESD, the tiny VAE ({c('codec.pretrained')})"}.get(codec, codec)
    transfer_txt = (f"a {grid}x{grid} grid of local affine colour transforms, fitted in "
                    "closed form "
                    "between the working-resolution input and the model's output, upsampled "
                    "smoothly and applied to the original pixels" if transfer == "grid"
                    else "none: the decoded working copy is resized to the photo's size")
    L = [f"# Write-up: {c('experiment.name', '')}", "",
         (f"Device: {report.get('device', NA)}. Evaluation photos: {report.get('num_images', NA)}. "
         f"Chosen: **{chosen['name']}**.") + "".join(f" **Warning:** {w}" for w in sel.get("warnings", [])), "",
         "## Architecture", "", "The flow of one photo:", "", "```",
         "input photo (any size; oriented; sRGB float in [0, 1])",
         f"  -> working copy (long side {c('data.val_long_side')}, a multiple of the codec factor)",
         (f"  -> colour prior: one global cubic RGB curve fitted on the training pairs (ridge {c('prior.ridge')}"
          + (", their exposures aligned" if c("prior.align", "none") == "exposure" else "") + ")"
          if c("prior.kind", "none") == "curve" else "  -> (no colour prior)"),
         f"  -> codec.encode ({codec})",
         f"  -> teacher ({c('teacher.kind')}): K-step ODE, K in {ks or NA}",
         "     | student: one forward pass, z_out = z_in + G(z_in)",
         "  -> codec.decode",
         f"  -> full-resolution transfer ({transfer})",
         "output photo (same size and name as the input)", "```", "",
         f"- Codec: {codec_txt}.", f"- Full-resolution transfer: {transfer_txt}.", "",
         "## Why this approach", "",
         ("A multi-step teacher is the easier model to train well but costs K network evaluations "
         "per photo; distillation moves its result into a student that needs one. The tables "
         "below say how much quality that trade costs and how much time it saves. The transfer "
         "lets both run at a working resolution: a real-estate edit is mostly smooth in space "
         "(tone, colour, local exposure), so it is carried to the original pixels at any size "
         "with no network at full resolution and no tiles, and the output keeps the photo's own "
         "detail. The networks learn the residual over a closed-form colour curve, so with a "
         "few dozen pairs no trained model starts below it; the 'curve' row is the plain "
         "least-squares curve and, where the fit aligns the training inputs' exposures first, the "
         "'prior' row is the curve the networks start from, alone."), ""]
    teacher, student = _strip_rows(report)
    if teacher and student and teacher.get("score") and student.get("score"):
        t, s = teacher["score"], student["score"]
        L += [(f"Measured here at {res}: {teacher['name']} "
              f"({_num(teacher.get('function_evals'), '{}')} network evaluations) "
              f"{_num(t.get('psnr_db'))} dB at {_num(t.get('latency_ms'), '{:.1f}')} ms; "
              f"{student['name']} ({_num(student.get('function_evals'), '{}')} evaluation) "
              f"{_num(s.get('psnr_db'))} dB at {_num(s.get('latency_ms'), '{:.1f}')} ms."), ""]
    L += ["## Training time", "",
          md_table(training_table(report)) if _stages(report) else "No training manifest.", "",
          f"## Inference time and memory: {chosen['name']}", "",
          (f"Whole path (resize, encode, model, decode, transfer), batch 1 unless stated, after "
          f"warm-up; device: {report.get('device', NA)}."), "",
          md_table(throughput_table(report, [chosen])), "",
          "## Optimisations used", ""]
    L += _optimisations(report, cfg, chosen, codec_txt, transfer, grid)
    L += ["", "## Scores", "", sel.get("normalisation", ""), "",
          md_table(score_table(report, cfg)), "", md_table(quality_table(report)), ""]
    if _lpips_note(report):
        L += [_lpips_note(report) + ".", ""]
    L += ["## The choice", "",
          (f"**{chosen['name']}** ({chosen['kind']}), score "
          f"{_num(sel['scores'].get(chosen['name']), '{:.3f}')}: the highest combined score "
          "(the identity baseline is scored for context, never chosen). Its outputs for the "
          "evaluation photos are in submission.zip with selection.json."), ""]
    return "\n".join(L)


def _optimisations(report, cfg, chosen, codec_txt, transfer, grid) -> list[str]:
    """What the config and the measurements say was used; nothing is claimed beyond them."""
    def c(key, default=NA):
        return _conf(report, cfg, key, default)

    out = [f"- Latent codec: {codec_txt}"
           + ("; tiled encode/decode for large photos." if c("codec.kind") == "sd-vae"
              and c("codec.tiling", False) else "."),
           f"- Full-resolution transfer: {transfer}"
           + (f" ({grid}x{grid} grid): no network at full resolution, no tiles."
              if transfer == "grid" else "."),
           (f"- Network evaluations per photo for {chosen['name']}: "
           f"{_num(chosen.get('function_evals'), '{}')}."),
           (f"- Mixed precision in training: {c('train.mixed_precision')}; EMA decay "
           f"{c('train.ema_decay')}."),
           (f"- Training latents cached once: {c('data.cache_latents')}; teacher targets cached "
           f"for distillation: {c('distill.cache_teacher')}.")]
    bb = ((chosen.get("throughput") or {}).get(_score_res(report, cfg)) or {}).get("best_batch")
    if bb:
        out.append(f"- Batching: best batch {bb.get('batch')} at {_score_res(report, cfg)} "
                   f"({_num(bb.get('images_per_s'))} images/s on the model path).")
    return out


# ----------------------------------------------------------------------------- submission

def write_submission(report: dict, out_dir: Path) -> Path:
    """submission.zip: the chosen row's images/{slug}/{name}.png as {name}.png + selection.json."""
    chosen = _chosen(report)
    src, sel_file = out_dir / "images" / chosen["slug"], out_dir / "selection.json"
    sel_bytes = (sel_file.read_bytes() if sel_file.is_file()
                 else (json.dumps(report["selection"], indent=2, default=str) + "\n").encode())
    files = []
    for name in report.get("image_names") or []:
        f = src / f"{name}.png"
        if not f.is_file():
            raise FileNotFoundError(f"eval/report.py: {f} is missing: the chosen row '{chosen['name']}' has "
                                    f"no output for photo '{name}'; re-run eval/run.py")
        files.append((f, f"{name}.png"))
    return atomic_write_zip(out_dir / "submission.zip", files, {"selection.json": sel_bytes}, compress=False)


def write_report(report: dict, out_dir: Path, val_source, cfg) -> None:
    """Write plot.png, report.html, writeup.md and submission.zip into out_dir.

    `report`: the dict eval/run.py builds; images are read from
    out_dir/images/{slug|input|target}/{name}.png. `val_source` is not needed (the images are
    already in out_dir) and may be None; `cfg` is used only where report["config"] lacks a value.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_plot(report, out_dir / "plot.png", _score_res(report, cfg))
    for name, text in (("report.html", _html(report, cfg, out_dir)),
                       ("writeup.md", _writeup(report, cfg))):
        atomic_write_bytes(out_dir / name, text.encode("utf-8"))
        os.chmod(out_dir / name, 0o644)  # readable by a web server, like the images beside it
    write_submission(report, out_dir)
