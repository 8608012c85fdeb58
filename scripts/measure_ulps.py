"""Measure the ulp error of every derived function of docs/spec.md over all 2^32 inputs.

    python scripts/measure_ulps.py                 # every input (minutes per function)
    python scripts/measure_ulps.py --stride 4099   # a quick strided sample

Prints the markdown table that docs/spec.md carries; --json writes the same figures to a file.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from tqdm import tqdm

from refute.kernels import accuracy
from refute.kernels.reference import from_bits


@click.command()
@click.option("--stride", default=1, show_default=True, help="test every STRIDE-th bit pattern")
@click.option("--offset", default=0, show_default=True)
@click.option("--only", multiple=True, help="function name(s) to measure (default: all)")
@click.option("--json", "json_path", type=click.Path(), help="also write the figures here")
def main(stride: int, offset: int, only: tuple[str, ...], json_path: str | None) -> None:
    names = list(only) or list(accuracy.DERIVED)
    reports = []
    for name in names:
        report = accuracy.AccuracyReport(name)
        total = ((1 << 32) - offset + stride - 1) // stride
        with tqdm(total=total, desc=name, unit="in", unit_scale=True) as bar:
            for bits in accuracy.strided_bits(stride, offset):
                report.update(bits)
                bar.update(bits.size)
        reports.append(report)
        if json_path:  # written after every function, so a long sweep keeps what it finished
            with open(json_path, "w") as fh:
                json.dump([asdict(r) for r in reports], fh, indent=1)
    print(f"\n{reports[0].inputs} inputs per function (stride {stride}, offset {offset})\n")
    print(
        "| function | max ulp, normal results | at x = | max error, subnormal results "
        "(units of 2^-149) | at x = |"
    )
    print("|---|---|---|---|---|")
    for r in reports:
        xn = from_bits([r.worst_input_bits])[0]
        xs = from_bits([r.worst_subnormal_bits])[0]
        print(
            f"| {r.name} | {r.max_ulp_normal:.3f} | {float(xn):.9g} (0x{r.worst_input_bits:08x}) | "
            f"{r.max_ulp_subnormal:.3f} | {float(xs):.9g} (0x{r.worst_subnormal_bits:08x}) |"
        )
    for r in reports:
        for (lo, hi), worst in zip(accuracy.REGIONS.get(r.name, ()), r.region_max_ulp, strict=True):
            print(f"- {r.name} on [{lo}, {hi}): max {worst:.3f} ulp (2^-149 units where subnormal)")


if __name__ == "__main__":
    main()
