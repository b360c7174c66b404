"""Energy and carbon: Patterson et al. 2021's GPT-3 estimate (Table 4) reproduced from their assumptions."""

from __future__ import annotations

import pytest

from lmlab.cli.main import main
from lmlab.errors import LmlabError
from lmlab.planning.compute import plan_compute, training_flops
from lmlab.planning.energy import GRIDS, parse_grid

# Patterson et al. 2021, Table 4, GPT-3: 10,000 V100s, 14.8 days, 330 W measured per GPU (with its share of
# host, memory and network), PUE 1.1, 0.429 kgCO2e/kWh -> 1,287 MWh and 552 tCO2e; 3.14e23 FLOPs at 24.6
# TFLOP/s per V100 (of its 125 TFLOP/s fp16 peak: MFU 0.197).
GPT3 = dict(accelerator="V100-32GB", dtype="fp16", gpus=10_000, mfu=24.6 / 125, pue=1.1, watts=330)


def test_gpt3_energy_and_carbon_within_ten_percent_of_patterson():
    plan = plan_compute(training_flops(174.6e9, 300e9), **GPT3)
    footprint = plan.footprint(GRIDS["us"])
    assert plan.days == pytest.approx(14.8, rel=0.1)
    assert footprint.energy_kwh / 1000 == pytest.approx(1287, rel=0.1)
    assert footprint.co2e_kg / 1000 == pytest.approx(552, rel=0.1)


def test_gpt3_from_the_command_line(capsys):
    assert main(["plan", "compute", "gpt3-175b", "--tokens", "300B", "--accelerator", "V100-32GB", "--dtype", "fp16",
                 "--gpus", "10000", "--mfu", "0.197", "--watts", "330", "--pue", "1.1", "--grid", "0.429"]) == 0
    out = capsys.readouterr().out
    energy = next(line for line in out.splitlines() if line.strip().startswith("energy"))
    carbon = next(line for line in out.splitlines() if line.strip().startswith("carbon"))
    mwh = float(energy.split()[1].replace(",", ""))
    tonnes = float(carbon.split()[1].replace(",", ""))
    assert energy.split()[2] == "MWh" and mwh == pytest.approx(1287, rel=0.1)
    assert carbon.split()[2] == "t" and tonnes == pytest.approx(552, rel=0.1)


def test_energy_by_hand():
    plan = plan_compute(3.6e18, "A100-80GB", "bf16", gpus=2, mfu=0.5, pue=1.2)  # 3.6e18 / 156e12 = 23,077 s
    hours = 3.6e18 / 156e12 / 3600
    footprint = plan.footprint(parse_grid("0.2"))
    assert footprint.energy_kwh == pytest.approx(hours * 0.400 * 1.2)  # the datasheet's 400 W
    assert footprint.co2e_kg == pytest.approx(hours * 0.400 * 1.2 * 0.2)


@pytest.mark.parametrize(("text", "message"), [("mars", "unknown grid"), ("-1", "between 0"), ("wrld", "world")])
def test_bad_grids(text, message):
    with pytest.raises(LmlabError, match=message):
        parse_grid(text)


def test_bad_grid_on_the_command_line(capsys):
    assert main(["plan", "compute", "--params", "1B", "--grid", "mars"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
