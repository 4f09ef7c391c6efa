"""``dst-train``: the Hydra entry point over ``conf/``.

A bad setting prints one sentence (``error: <field> must be ...``) on stderr and exits with status 2,
before anything is compiled or written beyond Hydra's own ``.hydra/`` folder.
"""

from __future__ import annotations

import pathlib
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from omegaconf import OmegaConf

from dst.app.validate import ConfigError

CONFIG_DIR = str(pathlib.Path(__file__).resolve().parents[2] / "conf")
EXIT_BAD_CONFIG = 2


def _train(cfg: DictConfig):
    from dst.app.run import run  # after Hydra has parsed the command line: --help stays fast

    plain = OmegaConf.to_container(cfg, resolve=True)
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        summary = run(plain, run_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(EXIT_BAD_CONFIG)
    return summary.get("test/accuracy")


main = hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")(_train)

if __name__ == "__main__":
    main()
