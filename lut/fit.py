"""The best global 3D LUT for a colour mapping, in closed form: splat, smooth, solve.

    fit = LatticeFit(size=33)
    fit.add(x, y)                  # (N, 3) input colours and the outputs to match, in [0, 1]
    table = fit.solve(prior)       # (3, S, S, S) in the table[c, b, g, r] layout of lut/model.py

The table L minimises, over every sample p with trilinear corner weights w_p (8 lattice nodes),

    sum_p |w_p^T L - y_p|^2 / n  +  smooth * |D2 (L - P)|^2  +  ridge * |L - P|^2

D2 takes second differences along r, g and b: zero on any affine colour map, so lattice cells
without samples are filled by extending the mapping the samples show, not flattened towards
grey. P is a prior table (the identity by default) that the fill falls back to far from any
sample. n is the mean sample count per lattice node, so `smooth` and `ridge` mean the same for
one photo or a hundred. The normal equations are sparse (each sample touches 8 nodes of one
cell): accumulated per cell as 8x8 blocks, solved with one sparse LU for the three channels.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from lut.model import apply_lut, identity_lut

# Chosen on the FiveK sample: fit input -> target on 12 pairs, PSNR on the 4 held out, two folds
# (17^3: smooth 3e-5 21.9 dB, 1.5e-4 23.4, 5e-4 23.6, 1.5e-3 23.6, 1.5e-2 23.3; in-sample 24.4).
# In lattice-free units: the weight on the lattice is smooth * (S - 1)^4, the same continuous
# curvature penalty at any size (second differences shrink as h^2, the node count grows as h^-3).
SMOOTH = 5e-4
RIDGE = 1e-4
CHUNK = 1 << 17  # samples per accumulation step: (CHUNK, 8, 8) float64 = 64 MB


def _corner_offsets(size: int) -> torch.Tensor:
    """Node offsets of the 8 corners of a cell, corner k = 4 db + 2 dg + dr, nodes n = (b S + g) S + r."""
    d = torch.arange(2)
    db, dg, dr = torch.meshgrid(d, d, d, indexing="ij")
    return ((db * size + dg) * size + dr).reshape(8)


def trilinear_weights(x: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, 3) rgb in [0, 1] -> (cell (N,) in [0, (S-1)^3), weights (N, 8) of its corners), float64."""
    pos = x.double().clamp(0, 1) * (size - 1)
    lo = pos.floor().long().clamp(max=size - 2)
    f = pos - lo
    wr, wg, wb = (torch.stack([1 - f[:, c], f[:, c]], 1) for c in range(3))
    w = (wb[:, :, None, None] * wg[:, None, :, None] * wr[:, None, None, :]).reshape(-1, 8)
    cell = (lo[:, 2] * (size - 1) + lo[:, 1]) * (size - 1) + lo[:, 0]
    return cell, w


def second_differences(size: int) -> sp.csr_matrix:
    """sum over the r, g, b axes of D2^T D2, (S^3, S^3): the smoothness term's matrix."""
    d2 = sp.diags([1.0, -2.0, 1.0], [0, 1, 2], shape=(size - 2, size))
    eye = sp.identity(size, format="csr")
    axes = [sp.kron(eye, sp.kron(eye, d2)), sp.kron(eye, sp.kron(d2, eye)), sp.kron(d2, sp.kron(eye, eye))]
    return sum((d.T @ d) for d in axes).tocsr()


class LatticeFit:
    """Accumulates input -> output colour samples on a size^3 lattice; `solve` gives the table."""

    def __init__(self, size: int = 33):
        if not 2 <= size <= 129:
            raise ValueError(f"lut/fit.py: size={size}; use 2 to 129 (17, 33 and 65 are the usual .cube sizes)")
        self.size = size
        cells = (size - 1) ** 3
        self.blocks = torch.zeros(cells, 64, dtype=torch.float64)  # sum w w^T per cell
        self.sums = torch.zeros(cells, 24, dtype=torch.float64)    # sum w y^T per cell
        self.count = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x, y (N, 3) float in [0, 1]: input colours and the colours the table should give them."""
        x, y = x.reshape(-1, 3).cpu(), y.reshape(-1, 3).cpu()
        for start in range(0, x.shape[0], CHUNK):
            cell, w = trilinear_weights(x[start:start + CHUNK], self.size)
            yy = y[start:start + CHUNK].double()
            self.blocks.index_add_(0, cell, (w[:, :, None] * w[:, None, :]).reshape(-1, 64))
            self.sums.index_add_(0, cell, (w[:, :, None] * yy[:, None, :]).reshape(-1, 24))
        self.count += x.shape[0]

    def solve(self, prior: torch.Tensor | None = None, smooth: float = SMOOTH, ridge: float = RIDGE) -> torch.Tensor:
        """The table (3, S, S, S) float32, clamped to [0, 1]; `prior` (3, S, S, S), the identity by default."""
        s = self.size
        nodes = s ** 3
        prior = identity_lut(s) if prior is None else prior
        p = prior.double().reshape(3, nodes).T.numpy()                      # (S^3, 3), red fastest
        used = (self.blocks[:, 0::9].sum(1) > 0).nonzero().squeeze(1)      # cells with samples
        c = used
        base = ((c // (s - 1) ** 2) * s + (c // (s - 1)) % (s - 1)) * s + c % (s - 1)
        node = (base[:, None] + _corner_offsets(s)[None]).numpy()          # (cells, 8)
        n = max(self.count, 1) / nodes
        rows = np.repeat(node, 8, axis=1).ravel()
        cols = np.tile(node, (1, 8)).ravel()
        data = sp.csr_matrix((self.blocks[used].numpy().ravel() / n, (rows, cols)), shape=(nodes, nodes))
        rhs = np.zeros((nodes, 3))
        np.add.at(rhs, node.ravel(), self.sums[used].reshape(-1, 8, 3).numpy().reshape(-1, 3) / n)
        reg = smooth * (s - 1) ** 4 * second_differences(s) + ridge * sp.identity(nodes, format="csr")
        table = spla.splu((data + reg).tocsc()).solve(rhs + reg @ p)
        return torch.from_numpy(table.T.reshape(3, s, s, s)).float().clamp(0, 1).contiguous()


def resample(table: torch.Tensor, size: int) -> torch.Tensor:
    """A (3, S, S, S) table read trilinearly at the nodes of a size^3 lattice: (3, size, size, size).
    From a coarser lattice this is exact: the finer table gives the same trilinear function."""
    if table.shape[-1] == size:
        return table
    nodes = identity_lut(size).reshape(1, 3, size, size * size)
    return apply_lut(table[None].float(), nodes)[0].reshape(3, size, size, size).contiguous()
