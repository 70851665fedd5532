"""Device profiles: which channels a kind of device has and how they follow its hidden state.

A profile turns the latent state of a machine (load, slow thermal load, time of day, the phase
of its working cycle, wear) into sensor readings. The channels are correlated because they all
derive from the same few latent quantities, as on a real machine. Numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "PROFILES",
    "ChannelSpec",
    "DeviceProfile",
    "Latent",
    "get_profile",
]

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Latent:
    """The hidden state of one device over a block of samples (each field is one value a row)."""

    t: Array  # seconds since the device started
    load: Array  # 0..1, follows load changes with a short lag
    slow_load: Array  # 0..1, the same with a thermal lag
    day: Array  # -1..1, the slow day-like cycle
    phase: Array  # radians, the working cycle (stroke, rotation, compressor, request burst)
    wear: Array  # 0..1, slow degradation (only the motor profile uses it)


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    unit: str
    noise: float  # standard deviation of the sensor noise, in the channel's unit


@dataclass(frozen=True)
class DeviceProfile:
    """A kind of device: channels, load behaviour, cycle frequency and how readings are formed."""

    name: str
    channels: tuple[ChannelSpec, ...]
    render: Callable[[Latent, Array], Array]  # (latent, per-device gains) -> rows × channels
    load_range: tuple[float, float] = (0.5, 1.0)  # a new load is drawn uniformly from it
    load_dwell_s: float = 12.0  # mean time between load changes
    load_tau_s: float = 3.0  # lag of the load after a change
    thermal_tau_s: float = 20.0
    cycle_hz: float = 0.6  # working-cycle frequency at zero load
    cycle_hz_per_load: float = 0.4  # ... and how much it rises with load
    day_period_s: float = 120.0  # a compressed day, so two minutes of history see all of it
    wear_per_hour: float = 0.0
    default_fault_channels: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self.channels]

    @property
    def noise(self) -> Array:
        return np.array([c.noise for c in self.channels], dtype=np.float64)

    def channel_index(self, name: str) -> int:
        for i, c in enumerate(self.channels):
            if c.name == name:
                return i
        raise KeyError(f"profile {self.name!r} has no channel {name!r} (has {self.channel_names})")


def _pump(z: Latent, g: Array) -> Array:
    ripple = np.sin(z.phase)
    load = z.load
    speed = 1480.0 * (0.55 + 0.45 * load) * g[0]
    flow = 140.0 * load * g[1] * (1.0 + 0.04 * ripple)
    p_out = (2.5 + 2.0 * load) * g[2] + 1.2 * ripple
    p_in = 1.2 - 0.35 * load - 0.1 * ripple
    current = (6.0 + 12.0 * load) * g[3] + 1.0 * ripple + 0.3 * z.day
    power = 0.4 * current * (1.0 + 0.02 * ripple)
    vibration = (1.5 + 1.8 * load) * g[4] + 1.2 * np.abs(np.sin(2.0 * z.phase))
    temperature = 35.0 + 14.0 * z.slow_load * g[5] + 2.5 * z.day
    return np.stack([flow, p_in, p_out, current, power, speed, vibration, temperature], axis=1)


def _motor(z: Latent, g: Array) -> Array:
    rot = np.sin(z.phase)
    defect = np.sin(3.57 * z.phase)  # outer-race defect frequency, grows with wear
    load = z.load
    voltage = 400.0 + 4.0 * z.day
    current = (8.0 + 16.0 * load) * g[0] + 0.3 * rot
    speed = 2950.0 - 60.0 * load * g[1]
    torque = (20.0 + 70.0 * load) * g[2] + 1.5 * rot
    wear = z.wear
    vib_rms = (1.0 + 0.8 * load) * g[3] + 0.3 * np.abs(rot) + 2.0 * wear * (0.6 + 0.4 * defect)
    vib_peak = 2.8 * vib_rms + 0.8 * wear * np.abs(defect)
    bearing_t = 38.0 + 12.0 * z.slow_load * g[4] + 10.0 * wear + 2.0 * z.day
    winding_t = 45.0 + 30.0 * z.slow_load * g[5] + 2.0 * z.day
    return np.stack(
        [current, voltage, speed, torque, vib_rms, vib_peak, bearing_t, winding_t], axis=1
    )


def _hvac(z: Latent, g: Array) -> Array:
    outdoor = 18.0 + 9.0 * z.day * g[0]
    duty = 0.5 + 0.5 * np.tanh(4.0 * np.sin(z.phase))  # compressor cycling on and off
    demand = np.clip(0.4 * z.load + 0.6 * (outdoor - 12.0) / 18.0, 0.0, 1.0)
    compressor = (2.0 + 14.0 * demand * duty) * g[1]
    supply = 22.0 - 9.0 * demand * duty * g[2]
    room = 22.5 + 0.6 * z.day - 0.4 * duty + 0.3 * (z.slow_load - 0.5)
    ret = room + 1.5 + 0.5 * demand
    fan = (35.0 + 55.0 * demand) * g[3]
    humidity = 45.0 - 6.0 * demand * duty + 4.0 * z.day
    setpoint_error = room - 22.5
    return np.stack(
        [supply, ret, room, outdoor, fan, compressor, humidity, setpoint_error], axis=1
    )


def _server(z: Latent, g: Array) -> Array:
    traffic = np.clip(0.35 + 0.3 * z.day + 0.35 * z.load, 0.02, 1.2) * g[0]
    burst = 0.08 * np.maximum(np.sin(z.phase), 0.0)  # periodic batch job
    cpu = 100.0 * np.clip(0.08 + 0.65 * traffic + burst, 0.0, 1.0)
    mem = 40.0 + 25.0 * z.slow_load * g[1] + 5.0 * traffic
    req = 800.0 * traffic * g[2]
    net_rx = 40.0 * traffic + 2.0
    net_tx = 120.0 * traffic + 5.0 + 30.0 * burst
    disk = 20.0 + 60.0 * burst * g[3] + 10.0 * traffic
    latency = 12.0 + 30.0 * traffic**2 + 40.0 * burst
    temp = 45.0 + 25.0 * cpu / 100.0 + 3.0 * z.day
    return np.stack([cpu, mem, req, net_rx, net_tx, disk, latency, temp], axis=1)


PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile(
            name="pump",
            channels=(
                ChannelSpec("flow", "l/min", 1.2),
                ChannelSpec("pressure_in", "bar", 0.012),
                ChannelSpec("pressure_out", "bar", 0.05),
                ChannelSpec("current", "A", 0.12),
                ChannelSpec("power", "kW", 0.05),
                ChannelSpec("speed", "rpm", 6.0),
                ChannelSpec("vibration", "mm/s", 0.08),
                ChannelSpec("temperature", "degC", 0.15),
            ),
            render=_pump,
            default_fault_channels={
                "spike": ("pressure_out",),
                "drift": ("temperature",),
                "stuck": ("pressure_out",),
                "noise": ("vibration",),
                "dropout": (),
                "step": ("current",),
                "frequency": (),
                "multi": ("flow", "pressure_out", "vibration"),
                "bearing_wear": ("vibration", "temperature"),
            },
        ),
        DeviceProfile(
            name="motor",
            channels=(
                ChannelSpec("current", "A", 0.15),
                ChannelSpec("voltage", "V", 0.8),
                ChannelSpec("speed", "rpm", 2.0),
                ChannelSpec("torque", "Nm", 0.8),
                ChannelSpec("vibration_rms", "mm/s", 0.05),
                ChannelSpec("vibration_peak", "mm/s", 0.15),
                ChannelSpec("bearing_temp", "degC", 0.15),
                ChannelSpec("winding_temp", "degC", 0.2),
            ),
            render=_motor,
            cycle_hz=0.8,
            cycle_hz_per_load=0.2,
            wear_per_hour=0.02,
            default_fault_channels={
                "spike": ("vibration_peak",),
                "drift": ("bearing_temp",),
                "stuck": ("torque",),
                "noise": ("vibration_rms",),
                "dropout": (),
                "step": ("current",),
                "frequency": (),
                "multi": ("vibration_rms", "vibration_peak", "bearing_temp"),
                "bearing_wear": ("vibration_rms", "vibration_peak", "bearing_temp"),
            },
        ),
        DeviceProfile(
            name="hvac",
            channels=(
                ChannelSpec("supply_temp", "degC", 0.1),
                ChannelSpec("return_temp", "degC", 0.1),
                ChannelSpec("room_temp", "degC", 0.05),
                ChannelSpec("outdoor_temp", "degC", 0.1),
                ChannelSpec("fan_speed", "%", 0.5),
                ChannelSpec("compressor_current", "A", 0.15),
                ChannelSpec("humidity", "%", 0.3),
                ChannelSpec("setpoint_error", "K", 0.05),
            ),
            render=_hvac,
            cycle_hz=0.15,
            cycle_hz_per_load=0.1,
            load_dwell_s=40.0,
            default_fault_channels={
                "spike": ("compressor_current",),
                "drift": ("room_temp",),
                "stuck": ("supply_temp",),
                "noise": ("fan_speed",),
                "dropout": (),
                "step": ("return_temp",),
                "frequency": (),
                "multi": ("supply_temp", "compressor_current", "fan_speed"),
                "bearing_wear": ("fan_speed",),  # the fan's bearing
            },
        ),
        DeviceProfile(
            name="server",
            channels=(
                ChannelSpec("cpu", "%", 1.0),
                ChannelSpec("memory", "%", 0.2),
                ChannelSpec("requests", "1/s", 8.0),
                ChannelSpec("net_rx", "MB/s", 0.5),
                ChannelSpec("net_tx", "MB/s", 1.2),
                ChannelSpec("disk_io", "MB/s", 0.8),
                ChannelSpec("latency", "ms", 0.4),
                ChannelSpec("temperature", "degC", 0.2),
            ),
            render=_server,
            cycle_hz=0.1,
            cycle_hz_per_load=0.05,
            load_dwell_s=30.0,
            default_fault_channels={
                "spike": ("latency",),
                "drift": ("memory",),
                "stuck": ("cpu",),
                "noise": ("net_tx",),
                "dropout": (),
                "step": ("latency",),
                "frequency": (),
                "multi": ("cpu", "latency", "requests"),
                "bearing_wear": ("temperature",),  # a cooling fan's bearing: the box runs hotter
            },
        ),
    )
}


def get_profile(name: str) -> DeviceProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown device profile {name!r}; known: {sorted(PROFILES)}") from None
