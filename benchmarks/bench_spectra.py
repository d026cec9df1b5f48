"""Exact spectra at 7B widths (never imported by tests). Prints figures; asserts nothing.

    python benchmarks/bench_spectra.py [--shapes 3584x18944,3584x3584] [--threads N] [--skip-svdvals]

For each shape, a float32 matrix with a *planted* spectrum (X = U diag(s) Vᵀ formed in float64,
then rounded to float32) is decomposed by
  - gram:     frankenlab's exact route, eigenvalues of the float64 Gram matrix (`gram_singular_values`)
  - svdvals:  `torch.linalg.svdvals` in float32 (the previous exact route)
  - krylov:   frankenlab's lowrank route (block Krylov, top 32, block 40, depth 8: the defaults)
  - torch-lowrank: `torch.svd_lowrank(q=40, niter=4)`, the previous lowrank route
and the error is max_i |σ_i − s_i| / s_1 against the planted values (over every value for the
exact routes, the top 32 for the randomized ones), plus σ1's relative error. Rounding X to float32
moves the true singular values by up to ‖X32 − X64‖₂, printed as the floor no method can beat.
Two spectra: `decaying` (s_i = 0.98^i, a trained weight's shape) and `flat` (s_i from 1 down to
0.9 over the top 512, then 0.5: the hard case for randomized methods). Then the geometry cost per
weight: top-16 singular vectors from the Gram matrix (what `compare` pays per W_ref / W_after).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from frankenlab.compare import spectra as S  # noqa: E402


def planted(m: int, n: int, kind: str, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, float]:
    """(float32 X, the planted s in float64, ‖X32 − X64‖₂ / s_1)."""
    r = min(m, n)
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, r, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))
    i = np.arange(r)
    s = 0.98 ** i if kind == "decaying" else np.where(i < 512, 1.0 - 0.1 * i / 512, 0.5)
    x64 = (u * torch.from_numpy(s)) @ v.T
    x32 = x64.float()
    err = S.krylov_singular_values((x32.double() - x64).float(), 1, 16, 6, seed=1)[0]
    return x32, s, float(err / s[0])


def timed(fn, *args):  # noqa: ANN001, ANN201
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def bench(m: int, n: int, kind: str, skip_svdvals: bool) -> None:
    x, s, floor = planted(m, n, kind)
    print(f"\n[{m}x{n}, {kind} spectrum] float32 rounding floor ‖X32 − X64‖₂/s1 = {floor:.1e}")
    rows = []
    g, t = timed(S.gram_singular_values, x)
    rows.append(("gram (float64 Gram + eigvalsh)", t, np.abs(g - s).max(), (g[0] - s[0]) / s[0]))
    if not skip_svdvals:
        sv, t = timed(lambda a: torch.linalg.svdvals(a).double().numpy(), x)
        rows.append(("svdvals (float32)", t, np.abs(sv - s).max(), (sv[0] - s[0]) / s[0]))
    kr, t = timed(S.krylov_singular_values, x, 32, 40, 8, 0)
    rows.append(("lowrank: block Krylov k=32 b=40 depth 8", t, np.abs(kr - s[:32]).max(), (kr[0] - s[0]) / s[0]))
    torch.manual_seed(0)
    tl, t = timed(lambda a: torch.svd_lowrank(a, q=40, niter=4)[1][:32].double().numpy(), x)
    rows.append(("previous lowrank: svd_lowrank q=40 niter=4", t, np.abs(tl - s[:32]).max(), (tl[0] - s[0]) / s[0]))
    base = rows[0][1]
    for label, t, err, e1 in rows:
        print(f"  {label:44s} {t:8.2f} s ({t / base:5.2f}x gram)   max|Δσ|/σ1 {err / s[0]:.1e}   σ1 rel. error "
              f"{e1:+.1e}")
    dev = torch.device("cpu")
    xo = S.oriented(x.reshape(-1), (m, n))
    gm, t_gram = timed(S.gram, xo, dev)
    (lam, vec, how), t_eig = timed(S.top_eigenpairs, gm, 16)
    print(f"  geometry, top-16 singular vectors of W: Gram {t_gram:.2f} s + {how} {t_eig:.2f} s; "
          f"σ1..σ16 max rel. error {np.abs(lam.sqrt().numpy() / s[:16] - 1).max():.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="3584x18944,3584x3584")
    ap.add_argument("--kinds", default="decaying,flat")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--skip-svdvals", action="store_true", help="skip the slow float32 svdvals reference")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"cpu threads {args.threads}, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    for shape in args.shapes.split(","):
        m, n = (int(v) for v in shape.split("x"))
        for kind in args.kinds.split(","):
            bench(m, n, kind, args.skip_svdvals)


if __name__ == "__main__":
    main()
