"""The combined score: `quality_weight * quality + efficiency_weight * efficiency` (0.7 / 0.3).

    quality    = clip((PSNR_dB - psnr_floor_db) / (psnr_ceil_db - psnr_floor_db), 0, 1)
    efficiency = latency_ref_ms / (latency_ref_ms + p50 latency at score_resolution)

PSNR is the mean over the evaluation photos at output resolution; latency is the whole path
(working copy, codec, model, full-resolution transfer) at batch 1 on a 1 MP photo by default, so
quality and speed are measured on the same path. Both normalisations are in the config
(`eval.*`) and written into the report. The identity baseline is scored for context but is
never chosen.
"""

from __future__ import annotations

from core.config import EvalConfig


def quality(psnr_db: float, e: EvalConfig) -> float:
    return min(1.0, max(0.0, (psnr_db - e.psnr_floor_db) / (e.psnr_ceil_db - e.psnr_floor_db)))


def efficiency(latency_ms: float, e: EvalConfig) -> float:
    return e.latency_ref_ms / (e.latency_ref_ms + latency_ms)


def normalisation_text(e: EvalConfig) -> str:
    return (f"score = {e.quality_weight} * quality + {e.efficiency_weight} * efficiency; quality = clip((PSNR - "
            f"{e.psnr_floor_db}) / ({e.psnr_ceil_db} - {e.psnr_floor_db}), 0, 1) with PSNR the mean over the "
            f"evaluation photos at output resolution; efficiency = {e.latency_ref_ms} / ({e.latency_ref_ms} + "
            f"p50 latency in ms at '{e.score_resolution}' (batch 1, the whole path: working copy, codec, network "
            f"and full-resolution transfer; 'photo-1024' is a 1 MP photo through the same path the quality was "
            f"measured on)")


def score_rows(rows: list[dict], e: EvalConfig) -> dict:
    """Adds row["score"] = {"quality", "efficiency", "score"}; returns the selection."""
    scores = {}
    for row in rows:
        psnr = row["quality"]["mean"]["psnr"]
        lat = row["throughput"][e.score_resolution]["p50_ms"]
        q, f = quality(psnr, e), efficiency(lat, e)
        row["score"] = {"quality": q, "efficiency": f, "score": e.quality_weight * q + e.efficiency_weight * f,
                        "psnr_db": psnr, "latency_ms": lat}
        scores[row["name"]] = row["score"]["score"]
    eligible = [r for r in rows if r["kind"] != "baseline" or r["name"] != "identity"]
    chosen = max(eligible, key=lambda r: r["score"]["score"]) if eligible else rows[0]
    return {"chosen": chosen["name"], "kind": chosen["kind"], "scores": scores,
            "normalisation": normalisation_text(e), "score_resolution": e.score_resolution,
            "chosen_detail": chosen["score"], "warnings": quality_warnings(rows, chosen)}


def quality_warnings(rows: list[dict], chosen: dict) -> list[str]:
    """Plain sentences for every row, the chosen one first, whose quality is below the input
    itself (identity) or below the closed-form colour curve: a trained model that does worse than
    either is not worth its training, and the report must say so."""
    psnr = {r["name"]: r["quality"]["mean"]["psnr"] for r in rows}
    out = []
    for row in [chosen] + [r for r in rows if r is not chosen]:
        if row["name"] in ("identity", "curve", "prior"):
            continue
        for base, what in (("identity", "the unedited input"), ("curve", "the global colour curve"),
                           ("prior", "the colour prior the networks start from")):
            if base in psnr and psnr[row["name"]] < psnr[base]:
                who = "The chosen model" if row is chosen else "Row"
                out.append(f"{who} '{row['name']}' is below {what} ('{base}'): {psnr[row['name']]:.2f} dB "
                           f"against {psnr[base]:.2f} dB PSNR.")
    return out
