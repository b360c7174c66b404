"""Energy and carbon of training: kWh = accelerator-hours × power × PUE, CO2e = kWh × grid intensity.

The method of Lacoste et al. 2019 ("Quantifying the Carbon Emissions of Machine
Learning", arXiv:1910.09700) and Patterson et al. 2021 ("Carbon Emissions and
Large Neural Network Training", arXiv:2104.10350, equation 1 and Table 4):
energy is the hours each processor ran times its average power draw, times the
data centre's PUE (power usage effectiveness, facility power over IT power);
the emissions are that energy times the carbon intensity of the grid that
supplied it (kg CO2-equivalent per kWh). Patterson et al.'s GPT-3 row: 10,000
V100s for 14.8 days at 330 W measured system power per GPU, PUE 1.1, 0.429
kgCO2e/kWh: 1,287 MWh and 552 tCO2e.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from lmlab.errors import LmlabError, did_you_mean


@dataclass(frozen=True)
class Grid:
    """A grid's carbon intensity in kg CO2e per kWh, and where the figure comes from."""

    name: str
    kg_per_kwh: float
    source: str


GRIDS: dict[str, Grid] = {g.name: g for g in [
    Grid("world", 0.475, "IEA, Global Energy & CO2 Status Report 2019: world average of electricity generation, "
                         "2018, 475 gCO2/kWh"),
    Grid("us", 0.429, "Patterson et al. 2021, Table 4: the US average they used for GPT-3 (Microsoft's data "
                      "centre), 0.429 kgCO2e/kWh"),
]}


def parse_grid(text: str) -> Grid:
    """A grid by name (`us`, `eu`, ...) or a number in kg CO2e per kWh (`0.429`)."""
    try:
        value = float(text)
    except ValueError:
        if text.lower() not in GRIDS:
            raise LmlabError(f"unknown grid {text!r}{did_you_mean(text.lower(), GRIDS)}; give one of "
                             f"{', '.join(GRIDS)} or a carbon intensity in kg CO2e per kWh (e.g. 0.429)") from None
        return GRIDS[text.lower()]
    if not 0 <= value < 5:
        raise LmlabError(f"grid carbon intensity is kg CO2e per kWh, between 0 and a few tenths; not {value:g}")
    return Grid(f"{value:g} kgCO2e/kWh", value, "given on the command line")


@dataclass(frozen=True)
class Footprint:
    """Energy and emissions of `device_hours` of `watts` each, in a data centre of `pue` on `grid`."""

    device_hours: float
    watts: float
    pue: float
    grid: Grid

    @property
    def energy_kwh(self) -> float:
        return self.device_hours * self.watts / 1000.0 * self.pue

    @property
    def co2e_kg(self) -> float:
        return self.energy_kwh * self.grid.kg_per_kwh


ASSUMED_CPU_WATTS_PER_THREAD = 10.0  # a server or laptop CPU core under load draws roughly 5-15 W
DEFAULT_GRID = "world"


@dataclass(frozen=True)
class Hardware:
    """What a run ran on, how many devices, and the power assumed for each."""

    description: str
    devices: int
    watts: float
    power_source: str


def this_hardware(threads: int | None = None, world_size: int = 1) -> Hardware:
    """The hardware of this process: its GPU (power from the accelerator table) or its CPU threads (power assumed)."""
    import torch

    from lmlab.planning.accelerators import ACCELERATORS

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        match = next((a for key, a in ACCELERATORS.items() if key.split("-")[0].lower() in name.lower()), None)
        watts = match.watts if match else 300.0
        source = f"{match.name} datasheet board power" if match else "assumed 300 W (accelerator not in lmlab's table)"
        return Hardware(f"{world_size} × {name}", world_size, watts, source)
    threads = threads or torch.get_num_threads()
    cpu = platform.processor() or platform.machine()
    return Hardware(f"CPU ({cpu}), {threads} of {os.cpu_count()} threads, {world_size} process(es)", world_size,
                    threads * ASSUMED_CPU_WATTS_PER_THREAD,
                    f"assumed {ASSUMED_CPU_WATTS_PER_THREAD:g} W per thread in use (not measured)")


__all__ = ["DEFAULT_GRID", "GRIDS", "Footprint", "Grid", "Hardware", "parse_grid", "this_hardware"]
