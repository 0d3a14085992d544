"""The `semnb` command line (contract in design.md): thin wrappers over the package's functions.

Each command parses options, calls one function of the package, and prints where its
results are. Bad input becomes one line on stderr and exit status 2.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from semnb.data import synth_writers
from semnb.errors import SemnbInputError


class SemnbGroup(click.Group):
    """A click group that turns SemnbInputError into one clear line and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SemnbInputError as err:
            click.echo(f"semnb: error: {err}", err=True)
            sys.exit(2)


@click.group(cls=SemnbGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="semnb")
def main() -> None:
    """semnb: few-shot inspection of electron-microscope images."""


# ---------------------------------------------------------------- data
@main.group()
def data() -> None:
    """Make or inspect data sets."""


@data.command("synth")
@click.option("--kind", type=click.Choice(sorted(synth_writers.WRITERS)), required=True,
              help="sem: wafer defects (MVTec layout); tem: cross-sections; stm: tunnelling scans.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Folder to write.")
@click.option("--n-per-class", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--size", type=click.IntRange(min=32, max=4096), default=256, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
def data_synth(kind: str, out_dir: Path, n_per_class: int, size: int, seed: int) -> None:
    """Write a synthetic data set with pixel masks and a manifest."""
    out = synth_writers.write_synthetic(kind, out_dir, n_per_class=n_per_class, size=size, seed=seed)
    click.echo(f"wrote {kind} data set to {out}")


# ---------------------------------------------------------------- demo
@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("semnb-demo"),
              show_default=True, help="Folder for the data, figures and the HTML report.")
@click.option("--n-per-class", type=click.IntRange(min=2), default=12, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out_dir: Path, n_per_class: int, seed: int) -> None:
    """The main job: offline, on the default synthetic SEM data, ending in one HTML report."""
    from semnb.demo import run_demo

    report = run_demo(out_dir, n_per_class=n_per_class, seed=seed)
    click.echo(f"demo report: {report.resolve()}")


# ---------------------------------------------------------------- eval
@main.group("eval", cls=SemnbGroup)
def eval_() -> None:
    """Measure a method against its baselines on a data set (results contract in design.md)."""


# ---------------------------------------------------------------- bench
@main.group(cls=SemnbGroup)
def bench() -> None:
    """Speed benchmarks that print figures."""


if __name__ == "__main__":
    main()
