"""``hydra/sweeper=grids``: a sweep that is the union of several grids (sklearn's list of param grids).

Hydra's basic sweeper runs one cartesian product, which cannot express the usual comparison table:
the dense baseline once, every sparse algorithm at every sparsity. With this sweeper a sweep file lists
grids; the jobs are each grid's product, in order, and overrides given on the command line apply to
every grid (a swept command-line key replaces that key in each grid)::

    defaults:
      - override /hydra/sweeper: grids
    hydra:
      sweeper:
        grids:
          - {sparsity: dense}
          - {sparsity: "static,set,rigl", sparsity.sparsity: "0.9,0.95"}

Everything else (launchers, ``max_batch_size``, the sweep directory and its report) is the basic
sweeper's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper


@dataclass
class GridsSweeperConf:
    _target_: str = "hydra_plugins.dst_grids.GridsSweeper"
    max_batch_size: int | None = None
    grids: list[dict[str, Any]] = field(default_factory=list)


def grid_jobs(grids: list[dict[str, Any]], arguments: list[str], parse) -> list[list[str]]:
    """Each grid's cartesian product (its params, then ``arguments``), concatenated in order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if not grids:
        raise HydraException("hydra.sweeper.grids must list at least one grid (a mapping of key: values).")
    jobs: list[list[str]] = []
    for grid in grids:
        params = [f"{key}={value}" for key, value in dict(grid).items()]
        jobs.extend(BasicSweeper.split_arguments(parse(params + list(arguments)), None)[0])
    return jobs


class GridsSweeper(Sweeper):
    """The basic sweeper over the union of ``grids`` instead of one product.

    It wraps a basic sweeper rather than subclassing it: Hydra's plugin scan re-executes the modules of
    its core plugins, so a subclass made at import time would derive from a stale class.
    """

    def __init__(self, max_batch_size: int | None = None, grids: list[dict[str, Any]] | None = None):
        super().__init__()
        self.max_batch_size = max_batch_size
        self.grids = list(grids or [])
        self.basic = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        self.basic = BasicSweeper(max_batch_size=self.max_batch_size, params=None)
        self.basic.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        parser = OverridesParser.create(config_loader=self.basic.hydra_context.config_loader)
        jobs = grid_jobs(self.grids, arguments, parser.parse_overrides)
        batches = list(self.basic.split_overrides_to_chunks(jobs, self.max_batch_size))
        # The basic sweeper builds its batches from `params`, then launches them: hand it ours.
        self.basic.split_arguments = lambda overrides, max_batch_size: batches
        return self.basic.sweep([])


# Hydra instantiates sweepers only from its plugin registry and only under names in the `hydra_plugins`
# package; giving this module such a name (Plugins.register is Hydra's public hook) spares dst a second
# installed top-level package.
GridsSweeper.__module__ = "hydra_plugins.dst_grids"
sys.modules.setdefault("hydra_plugins.dst_grids", sys.modules[__name__])
Plugins.instance().register(GridsSweeper)
ConfigStore.instance().store(group="hydra/sweeper", name="grids", node=GridsSweeperConf, provider="dst")
