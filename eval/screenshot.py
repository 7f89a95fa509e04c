"""Screenshot an HTML report with headless Chromium, offline, to check what a reader sees.

    python -m eval.screenshot runs/demo/eval/report.html report.png --width 1400 --height 2400

Chromium runs with a fresh temporary profile and no background networking; the page is
opened from file://, so a report that needs the network shows up broken in the PNG.
Needs Debian's chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


class ScreenshotError(RuntimeError):
    """Chromium missing, timed out, or wrote no PNG; the message says which and the fix."""


def find_chromium() -> str:
    """Path of the Chromium binary: /usr/bin/chromium, else `chromium` on PATH."""
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise ScreenshotError("chromium not found (looked for /usr/bin/chromium and 'chromium' on "
                          "PATH); install it with: apt-get update && apt-get install -y chromium")


def screenshot(html: str | Path, out_png: str | Path, width: int = 1400, height: int = 2400,
               timeout_s: float = 90.0) -> Path:
    """Render `html` at width x height CSS pixels into `out_png`; returns the PNG path."""
    html, out_png = Path(html).resolve(), Path(out_png).resolve()
    if not html.is_file():
        raise ScreenshotError(f"{html} not found: pass the report.html that eval/run.py wrote")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    out_png.unlink(missing_ok=True)  # so a stale PNG never passes for a new one
    binary = find_chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={out_png}",
               f"--window-size={width},{height}", html.as_uri()]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise ScreenshotError(f"chromium took longer than {timeout_s:.0f} s on {html}; "
                                  "raise --timeout or check the page") from exc
    if not out_png.is_file() or out_png.stat().st_size == 0:
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-8:])
        raise ScreenshotError(f"chromium wrote no PNG at {out_png} (exit code {proc.returncode}). "
                              f"Its last messages:\n{tail}")
    return out_png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Screenshot report.html with headless Chromium (offline).")
    p.add_argument("report_html")
    p.add_argument("out_png")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=2400)
    p.add_argument("--timeout", type=float, default=90.0, help="seconds before giving up")
    args = p.parse_args(argv)
    try:
        path = screenshot(args.report_html, args.out_png, args.width, args.height, args.timeout)
    except ScreenshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
