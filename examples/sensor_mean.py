"""The mean temperature of 1,000 sensors, no reading leaving its sensor.

Each simulated sensor holds its own readings. With the Federated Core API, each sensor
computes its local mean and count; the server receives only the count-weighted mean of
those (one number), which equals the mean over every reading. Checked against numpy.

    python examples/sensor_mean.py
"""

from __future__ import annotations

import numpy as np

from fedloom.core import CLIENTS, LocalRuntime, computation, map, mean


@computation(CLIENTS)
def mean_temperature(readings):  # type: ignore[no-untyped-def]
    """Weighted by readings per sensor: sum_k n_k mean_k / sum_k n_k."""
    local_means = map(lambda r: float(np.mean(r)), readings)
    counts = map(len, readings)
    return mean(local_means, weight=counts)


def main() -> None:
    rng = np.random.default_rng(0)
    sensors = [
        rng.normal(loc=rng.uniform(15, 25), scale=2.0, size=rng.integers(1, 200))
        for _ in range(1000)
    ]
    federated = mean_temperature(sensors, runtime=LocalRuntime())
    central = float(np.concatenate(sensors).mean())
    print(f"sensors:            {len(sensors)}")
    print(f"readings:           {sum(len(s) for s in sensors)}")
    print(f"federated mean:     {federated:.6f} °C")
    print(f"numpy over all:     {central:.6f} °C")
    assert abs(federated - central) < 1e-9, (federated, central)
    print("match:              yes")


if __name__ == "__main__":
    main()
