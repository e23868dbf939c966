"""Source NA: accuracy versus cost of the source spectrum's band limit (issue 13 item 1).

The detection pupil is a hard aperture at NA; the emitted spherical wave's angular
spectrum is cut, with a smooth edge, at a source NA ``NA_src`` that is a numerical
device: light beyond NA reaches the camera only after Δn scattered it into the pupil.
For a few choices of ``NA_src`` (and the padding each one's default rules size), this
measures, on the cell phantom, how far the images and their specimen-induced part
(image − Δn = 0 image) are from a reference with ``NA_src`` at the grid's limit (at
most 0.98·n) and 1.5× the padding, and what one reconstruction-like iteration (forward
+ backward of 7 views, float32) costs.

Run: ``python -m nvplive.benchmarks.source_na [--json FILE]`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from nvplive.recon import physics
from nvplive.recon.optics import Optics, VolumeGeometry
from nvplive.recon.phantoms import make_phantom
from nvplive.recon.simulate import THICK_OPTICS, THICK_SHAPE_ZYX, THICK_VOXEL_UM_ZYX, default_sources, thick_sources

GEOMETRIES = {
    "demo 32×64×64 @0.25 µm": (Optics(), VolumeGeometry((32, 64, 64), (0.25, 0.25, 0.25)), default_sources),
    "thick 32×64×64 @0.5×0.16×0.16 µm": (THICK_OPTICS, VolumeGeometry(THICK_SHAPE_ZYX, THICK_VOXEL_UM_ZYX), thick_sources),
}
#: Source NA choices as fractions of n_medium (None: the detection NA, the old model).
FRACTIONS = (None, 0.85, 0.9, 0.95)
VIEWS = 7


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _iteration_s(model: physics.ForwardModel, dn: torch.Tensor, src: torch.Tensor, repeats: int = 2) -> float:
    target = physics.render(model, dn, src).detach()

    def step() -> None:
        x = (dn * 0.9).requires_grad_()
        loss = ((physics.render(model, x, src) - target) ** 2).mean()
        loss.backward()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def _with_source_na(optics: Optics, na_source: float | None) -> Optics:
    values = optics.to_dict()
    values["na_source"] = na_source
    return Optics(**values)


def rows() -> list[dict]:
    """One dict per (geometry, source NA): grids, image and specimen-part errors, iteration time."""
    torch.manual_seed(0)
    out = []
    for name, (optics, geometry, make_sources) in GEOMETRIES.items():
        sources = make_sources(geometry, VIEWS, seed=0)
        depth = float(-sources[:, 2].min())
        src = torch.tensor(sources, dtype=torch.float32)
        dn = torch.tensor(make_phantom("cell", geometry.shape_zyx, geometry.voxel_um_zyx, seed=0), dtype=torch.float32)
        empty = torch.zeros_like(dn)
        ref_optics = _with_source_na(optics, min(0.98 * optics.n_medium, geometry.max_field_na(optics)))
        ref_pad = tuple(int(1.5 * p) for p in physics.default_padding(ref_optics, geometry, depth))
        ref = physics.ForwardModel.build(ref_optics, geometry, pad_yx=ref_pad)
        ref_image = physics.render(ref, dn, src)
        ref_specimen = ref_image - physics.render(ref, empty, src)
        for fraction in FRACTIONS:
            na_src = optics.na if fraction is None else min(fraction * optics.n_medium, geometry.max_field_na(optics))
            model = physics.ForwardModel.build(_with_source_na(optics, na_src), geometry, source_depth_um=depth)
            image = physics.render(model, dn, src)
            specimen = image - physics.render(model, empty, src)
            out.append(
                {
                    "geometry": name,
                    "source_na": round(na_src, 3),
                    "source_na_over_n": round(na_src / optics.n_medium, 3),
                    "padded_grid": list(model.padded_shape_yx),
                    "exit_grid": list(model.exit_shape_yx),
                    "image_error": _rel(image, ref_image),
                    "specimen_error": _rel(specimen, ref_specimen),
                    "iteration_s": _iteration_s(model, dn, src),
                }
            )
            print(out[-1], flush=True)
    return out


def markdown(table: list[dict]) -> str:
    """The rows as a Markdown table with the machine line."""
    lines = [
        f"Machine: {platform.node()} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}.",
        "",
        "| geometry | source NA (/n) | padded grid | exit grid | image error | specimen-part error | iteration s (7 views, fwd+bwd) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['geometry']} | {r['source_na']} ({r['source_na_over_n']}) | {r['padded_grid'][0]}² | {r['exit_grid'][0]}² "
            f"| {100 * r['image_error']:.2f} % | {100 * r['specimen_error']:.1f} % | {r['iteration_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: measure, print, write JSON if asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the rows as JSON")
    args = parser.parse_args(argv)
    table = rows()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(table, fh, indent=1)
    print(markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
