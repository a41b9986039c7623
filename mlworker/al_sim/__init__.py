"""Label-efficiency simulation of the product's active learning (issue 10).

``python -m mlworker.al_sim --help``; the method and the documented configuration are in
mlworker/al_sim.md.
"""

from mlworker.al_sim.simulate import (
    Head,
    HeadConfig,
    PoolState,
    RoutingRules,
    SimConfig,
    run_strategy,
    select,
)

__all__ = [
    "Head",
    "HeadConfig",
    "PoolState",
    "RoutingRules",
    "SimConfig",
    "run_strategy",
    "select",
]
