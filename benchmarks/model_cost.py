"""Per-iteration cost of the forward model now against an earlier commit's (issue 13).

Make the earlier renderer importable as a package ``oldrecon`` and run::

    mkdir -p /tmp/before/oldrecon && touch /tmp/before/oldrecon/__init__.py
    for f in physics optics pupil; do git show 67d39b3:recon/$f.py > /tmp/before/oldrecon/$f.py; done
    python -m nvplive.benchmarks.model_cost /tmp/before

One iteration = forward + backward of the renderer for 7 views (float32), what a
reconstruction iteration spends in the physics.
"""

from __future__ import annotations

import importlib
import platform
import sys
import time

import torch

from nvplive.recon import physics
from nvplive.recon.optics import Optics, VolumeGeometry
from nvplive.recon.pupil import PupilParameters
from nvplive.recon.simulate import default_sources

SHAPES = [(32, 64, 64), (64, 128, 128)]
VOXEL_UM = (0.25, 0.25, 0.25)
VIEWS = 7


def iteration_s(render, model, dn: torch.Tensor, src: torch.Tensor, repeats: int, **kwargs) -> float:
    """Mean seconds of one forward + backward pass of ``render`` (after one warm-up pass)."""
    target = render(model, dn, src, **kwargs).detach()

    def step() -> None:
        x = (dn * 0.9).requires_grad_()
        ((render(model, x, src, **kwargs) - target) ** 2).mean().backward()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main(argv: list[str]) -> int:
    """Print the cost table; ``argv[0]`` is the folder holding the earlier ``oldrecon`` package."""
    sys.path.insert(0, argv[0])
    old = importlib.import_module("oldrecon.physics")
    old_optics = importlib.import_module("oldrecon.optics")
    torch.manual_seed(0)
    print(f"{platform.node()}, torch {torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M')}")
    print("| volume | before: padded grid | before s | now: padded grid | now s | now with pupil s | now / before |")
    print("|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        geometry = VolumeGeometry(shape, VOXEL_UM)
        sources = default_sources(geometry, VIEWS, seed=0)
        depth = float(-sources[:, 2].min())
        src = torch.tensor(sources, dtype=torch.float32)
        dn = 0.01 * torch.rand(shape)
        before = old.ForwardModel.build(old_optics.Optics(), old_optics.VolumeGeometry(shape, VOXEL_UM), source_depth_um=depth)
        now = physics.ForwardModel.build(Optics(), geometry, source_depth_um=depth)
        pupil = physics.pupil_on_grid(now, PupilParameters(zernike_rad=(0.0,) * 21, apodisation=(-0.1,)))
        repeats = 2 if shape[0] <= 32 else 1
        t_before = iteration_s(old.render, before, dn, src, repeats)
        t_now = iteration_s(physics.render, now, dn, src, repeats)
        t_pupil = iteration_s(physics.render, now, dn, src, repeats, pupil=pupil)
        print(
            f"| {'×'.join(map(str, shape))} | {before.padded_shape_yx[0]}² | {t_before:.2f} | "
            f"{now.padded_shape_yx[0]}² (exit {now.exit_shape_yx[0]}²) | {t_now:.2f} | {t_pupil:.2f} | {t_now / t_before:.1f}× |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
