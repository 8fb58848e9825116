"""Where the device protocol was first; it lives in :mod:`vault.verify.devices` now (kept for old imports)."""

from vault.verify.devices._protocol import STEPS, Device, ImageToProgram
from vault.verify.devices._simulated import SimulatedDevice

__all__ = ["STEPS", "Device", "ImageToProgram", "SimulatedDevice"]
