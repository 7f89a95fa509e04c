"""Adobe Cube LUT 1.0 files (`.cube`): read, write and apply a 3D colour look-up table.

    cube = read_cube("look.cube")                # CubeLUT: table (3, S, S, S), title, domain
    out = apply_cube(cube, x)                    # (B, 3, H, W) in [0, 1] -> same shape, trilinear
    write_cube("look.cube", table, title="studio look")

The format (Adobe's "Cube LUT Specification 1.0", also DaVinci Resolve's): keyword lines
(TITLE "text", LUT_3D_SIZE N, DOMAIN_MIN r g b, DOMAIN_MAX r g b), then N^3 lines of output
"R G B" with **red varying fastest**, then green, then blue. `#` starts a comment line; blank
lines and Windows line ends are fine. Resolve's `LUT_3D_INPUT_RANGE lo hi` is read as the domain.

The table uses the project's layout `table[c, b, g, r]` (lut/model.py), so flattening its
(b, g, r) axes in C order gives the file's line order exactly; the application is the same
trilinear `apply_lut` the 3D-LUT baseline uses (one implementation).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.checkpoint import atomic_write_bytes
from lut.model import BAND_PIXELS, apply_lut

MAX_SIZE = 256  # what ffmpeg and Resolve accept; 65 is the largest size tools usually write
KEYWORDS = {"TITLE", "LUT_3D_SIZE", "LUT_1D_SIZE", "DOMAIN_MIN", "DOMAIN_MAX", "LUT_3D_INPUT_RANGE",
            "LUT_1D_INPUT_RANGE"}
KEYWORD = re.compile(r"[A-Z][A-Z0-9_]*")  # before the table, other upper-case words are keywords we ignore


class CubeError(ValueError):
    """A `.cube` file that cannot be used: "path, line N: what is wrong: the fix"."""


@dataclass
class CubeLUT:
    table: torch.Tensor  # (3, S, S, S) float32, table[c, b, g, r]: output channel c at input (r, g, b)
    title: str = ""
    domain_min: tuple[float, float, float] = (0.0, 0.0, 0.0)
    domain_max: tuple[float, float, float] = (1.0, 1.0, 1.0)
    path: str = ""
    comments: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.table.shape[-1]


def _numbers(tokens: list[str], where: str, what: str) -> list[float]:
    values = []
    for t in tokens:
        try:
            v = float(t)
        except ValueError:
            raise CubeError(f"{where}: {t!r} is not a number ({what}): the line must hold numbers only, "
                            "e.g. `0.25 0.5 1.0`") from None
        if not math.isfinite(v):
            raise CubeError(f"{where}: {t!r} is not a finite number ({what}): re-export the LUT")
        values.append(v)
    return values


def _sane_range(lo: list[float], hi: list[float], where: str) -> tuple[float, float]:
    """Output values a colour table may hold: the domain widened by its own width on each side
    (over- and undershoot are fine; 255 or 4095 in a [0, 1] table are not)."""
    if not all(a < b for a, b in zip(lo, hi)):
        raise CubeError(f"{where}: DOMAIN_MIN {lo} must be below DOMAIN_MAX {hi} in every channel")
    span = max(b - a for a, b in zip(lo, hi))
    return min(lo) - span, max(hi) + span


def parse_cube(text: str, name: str = "<cube>") -> CubeLUT:
    """Parse the text of a `.cube` file; raise CubeError naming the line for anything malformed."""
    title, comments = "", []
    size = size_line = None
    one_d = None  # line of a LUT_1D_SIZE keyword
    lo, hi = [0.0] * 3, [1.0] * 3
    rows: list[list[float]] = []
    first_row = last_row = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"{name}, line {number}"
        if not line:
            continue
        if line.startswith("#"):
            comments.append(line[1:].strip())
            continue
        head, _, rest = line.replace("\t", " ").partition(" ")
        keyword = head.upper()
        if keyword in KEYWORDS and rows:
            raise CubeError(f"{where}: keyword {head!r} after the table started (line {first_row}): "
                            "keywords go before the table data")
        if keyword in KEYWORDS or (not rows and KEYWORD.fullmatch(head)):
            if keyword == "TITLE":
                title = rest.strip().strip('"')
            elif keyword == "LUT_3D_SIZE":
                tokens = rest.split()
                value = _numbers(tokens, where, "LUT_3D_SIZE")[0] if len(tokens) == 1 else 0.5
                if value != int(value) or not 2 <= value <= MAX_SIZE:
                    raise CubeError(f"{where}: LUT_3D_SIZE {rest.strip()!r} must be one whole number from 2 "
                                    f"to {MAX_SIZE} (33 is common)")
                size, size_line = int(value), number
            elif keyword == "LUT_1D_SIZE":
                one_d = number
            elif keyword in ("DOMAIN_MIN", "DOMAIN_MAX"):
                values = _numbers(rest.split(), where, keyword)
                if len(values) != 3:
                    raise CubeError(f"{where}: {keyword} needs 3 numbers (R G B), got {len(values)}")
                (lo if keyword == "DOMAIN_MIN" else hi)[:] = values
            elif keyword == "LUT_3D_INPUT_RANGE":  # Resolve's variant of the domain
                values = _numbers(rest.split(), where, keyword)
                if len(values) != 2:
                    raise CubeError(f"{where}: LUT_3D_INPUT_RANGE needs 2 numbers (min max), got {len(values)}")
                lo[:], hi[:] = [values[0]] * 3, [values[1]] * 3
            # other keywords (LUT_1D_INPUT_RANGE, LUT_IN_VIDEO_RANGE, ...) do not change a 3D table
            continue
        if size is None:
            if one_d is not None:
                raise CubeError(f"{where}: this is a 1D LUT (LUT_1D_SIZE on line {one_d}) and a 3D one is "
                                "needed: export a 3D LUT (LUT_3D_SIZE) from your tool")
            raise CubeError(f"{where}: table data before any LUT_3D_SIZE line: add `LUT_3D_SIZE N` before it")
        if one_d is not None:
            raise CubeError(f"{where}: the file holds a 1D shaper (LUT_1D_SIZE, line {one_d}) before the 3D "
                            "table, which is not supported: export a plain 3D LUT")
        values = _numbers(line.split(), where, "an R G B entry")
        if len(values) != 3:
            raise CubeError(f"{where}: {len(values)} value(s), expected 3 (R G B)")
        if not rows:
            valid = _sane_range(lo, hi, where)
        if not all(valid[0] <= v <= valid[1] for v in values):
            raise CubeError(f"{where}: {line!r} lies far outside the domain [{min(lo):g}, {max(hi):g}]: an "
                            "integer-scaled table (0-1023 or 0-4095, e.g. a .3dl file renamed to .cube?) or a "
                            "damaged file; a .cube table holds floats in the domain's range")
        if len(rows) == size ** 3:
            raise CubeError(f"{where}: more entries than LUT_3D_SIZE {size} (line {size_line}) allows: "
                            f"{size}^3 = {size ** 3} lines were expected")
        rows.append(values)
        first_row, last_row = first_row or number, number
    if size is None:
        raise CubeError(f"{name}: no LUT_3D_SIZE line" + (
            f" (it is a 1D LUT, LUT_1D_SIZE on line {one_d}; a 3D one is needed)" if one_d else
            ": not a 3D .cube file"))
    if len(rows) != size ** 3:
        raise CubeError(f"{name}, line {last_row or size_line}: the table ends after {len(rows)} entries, but "
                        f"LUT_3D_SIZE {size} (line {size_line}) needs {size}^3 = {size ** 3}: the file is cut "
                        "short or the size is wrong")
    table = torch.tensor(rows, dtype=torch.float32)  # (S^3, 3), red fastest: row = (b * S + g) * S + r
    table = table.T.reshape(3, size, size, size).contiguous()
    return CubeLUT(table, title, tuple(lo), tuple(hi), name, comments)


def read_cube(path: str | Path) -> CubeLUT:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark is tolerated
    except FileNotFoundError:
        raise CubeError(f"{path}: no such file: check the path of the .cube file") from None
    except UnicodeDecodeError as exc:
        raise CubeError(f"{path}: not a text file ({exc}): a .cube file is plain text") from None
    return parse_cube(text, str(path))


def format_cube(table: torch.Tensor, title: str = "", domain_min=(0.0, 0.0, 0.0), domain_max=(1.0, 1.0, 1.0),
                comments: tuple[str, ...] = ()) -> str:
    """The text of a `.cube` file for `table` (3, S, S, S) in the `table[c, b, g, r]` layout."""
    if table.ndim != 4 or table.shape[0] != 3 or len(set(table.shape[1:])) != 1:
        raise ValueError(f"lut/cube.py: table has shape {tuple(table.shape)}; expected (3, S, S, S)")
    size = table.shape[-1]
    lines = [f"# {c}" for c in comments]
    if title:
        lines.append(f'TITLE "{title.replace(chr(34), chr(39))}"')
    # LUT_3D_SIZE before DOMAIN_*: ffmpeg's lut3d reads DOMAIN lines only after the size line
    lines += [f"LUT_3D_SIZE {size}",
              "DOMAIN_MIN " + " ".join(f"{v:g}" for v in domain_min),
              "DOMAIN_MAX " + " ".join(f"{v:g}" for v in domain_max)]
    rows = table.detach().double().cpu().reshape(3, -1).T.tolist()  # red fastest
    lines += [f"{r:.6f} {g:.6f} {b:.6f}" for r, g, b in rows]
    return "\n".join(lines) + "\n"


def write_cube(path: str | Path, table: torch.Tensor, title: str = "", comments: tuple[str, ...] = (),
               domain_min=(0.0, 0.0, 0.0), domain_max=(1.0, 1.0, 1.0)) -> Path:
    """Write `table` (3, S, S, S) as a `.cube` file (atomic: a temporary file, then rename)."""
    path = Path(path)
    atomic_write_bytes(path, format_cube(table, title, domain_min, domain_max, comments).encode())
    return path


def apply_cube(cube: CubeLUT, x: torch.Tensor, band_pixels: int = BAND_PIXELS) -> torch.Tensor:
    """x (B, 3, H, W) in the cube's domain (usually [0, 1]) -> (B, 3, H, W), trilinear, not clamped;
    uint8 x (levels 0..255) -> uint8 through apply_lut's fast path (float for a non-default domain).

    Inputs are mapped from [DOMAIN_MIN, DOMAIN_MAX] to the lattice; colours outside the domain
    take the border entry (as Resolve and ffmpeg do).
    """
    table = cube.table.to(x.device)
    if cube.domain_min != (0.0, 0.0, 0.0) or cube.domain_max != (1.0, 1.0, 1.0):
        lo = torch.tensor(cube.domain_min, device=x.device).view(1, 3, 1, 1)
        hi = torch.tensor(cube.domain_max, device=x.device).view(1, 3, 1, 1)
        x = ((x.float() / 255 if x.dtype == torch.uint8 else x) - lo) / (hi - lo)
    return apply_lut(table[None].expand(x.shape[0], -1, -1, -1, -1), x, band_pixels)
