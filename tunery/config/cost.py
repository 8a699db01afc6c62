"""The recipe's ``cost`` section: the rates that price a run's usage (see :mod:`tunery.ops.usage`)."""

from __future__ import annotations

from pydantic import Field

from tunery.config.base import Section


class CostConfig(Section):
    """Prices and power draws; the defaults price nothing (0 per hour) and estimate energy from typical
    draws."""

    cpu_hour: float = Field(0.0, ge=0.0, description="Price of one CPU busy for an hour (a CPU-hour).")
    gpu_hour: float = Field(0.0, ge=0.0, description="Price of one GPU busy for an hour.")
    currency: str = Field("USD", min_length=1, max_length=8, description="Currency of the two prices.")
    cpu_watts: float = Field(
        10.0, gt=0.0, description="Power of one busy CPU in watts (energy = CPU-seconds x this)."
    )
    gpu_watts: float = Field(300.0, gt=0.0, description="Power of one busy GPU in watts.")
