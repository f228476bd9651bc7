"""The ``swimdiff-geo`` command group.

Commands are imported lazily from their own modules, so ``swimdiff-geo --help`` and the
inference commands never import torch; training commands say clearly when the ``train`` extra is
missing.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import signal
from types import FrameType

import click

from swimdiff_geo import __version__

# command name -> (module in swimdiff_geo.cli, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "detect-change": ("detect_change", "detect_change", "Map change between two dates of imagery."),
    "map-landcover": ("map_landcover", "map_landcover", "Map land cover in one image."),
    "info": ("info", "info", "Describe an ONNX model or a raster."),
    "stack": ("stack", "stack", "Write a Sentinel-2 product's bands as one GeoTIFF."),
    "batch": ("batch", "batch", "Run many change / land-cover jobs from a manifest."),
    "pretrain": ("pretrain", "pretrain", "SwiMDiff self-supervised pretraining (train extra)."),
    "finetune": ("finetune", "finetune", "Train change / land-cover heads (train extra)."),
    "export": ("export", "export", "Export a checkpoint to ONNX (train extra)."),
}
TRAINING_COMMANDS = ("pretrain", "finetune", "export")


class LazyGroup(click.Group):
    """A group whose sub-commands are imported only when they are run or asked for help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._spec_available(name)]

    @staticmethod
    def _spec_available(name: str) -> bool:
        module = COMMANDS[name][0]
        return importlib.util.find_spec(f"swimdiff_geo.cli.{module}") is not None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS or not self._spec_available(name):
            return None
        module_name, attr, _ = COMMANDS[name]
        module = importlib.import_module(f"swimdiff_geo.cli.{module_name}")
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (a scheduler's timeout, ``kill``) unwinds like Ctrl-C instead of ending the
    process on the spot: the job's outputs in progress are rolled back (no ``.swimdiff-tmp-*``
    folder is left behind) and a batch stops its workers; exit status 143 = 128 + 15."""
    raise SystemExit(128 + signum)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="swimdiff-geo")
def cli() -> None:
    """swimdiff-geo: change maps and land-cover maps from satellite imagery.

    Inference commands run ONNX models over GeoTIFFs of any size in bounded memory; run
    "swimdiff-geo COMMAND --help" for each command's options.
    """
    if click.get_current_context().invoked_subcommand in TRAINING_COMMANDS:
        return  # Lightning handles SIGTERM itself (and checkpoints every epoch)
    with contextlib.suppress(ValueError):  # not the main thread: the embedding app decides
        signal.signal(signal.SIGTERM, exit_on_sigterm)


if __name__ == "__main__":  # pragma: no cover
    cli()
