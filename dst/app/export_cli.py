"""``dst-export RUN_DIR --format dense|csr|condensed --out FILE``: a run's trained model, compactly.

Reads the run's config (``RUN_DIR/.hydra/config.yaml``) and its latest checkpoint, and writes the model
with :func:`dst.export.export_model`: its params (the stored layers as values and indices in the csr
and condensed formats), its model state and its config, in one ``.npz`` file that
:func:`dst.load_exported` turns into a jitted predict function. Works for masked and stored runs alike.
A bad argument or a run without a checkpoint is one sentence on stderr and exit status 2; nothing in
the run directory is changed.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from omegaconf import OmegaConf

import dst
from dst import backends
from dst.app.run import prepare
from dst.app.validate import ConfigError
from dst.export import FORMATS
from dst.export import export_model
from dst.masks import named_leaves
from dst.masks import replace_named
from dst.train import auto
from dst.train.apply import model_state_shapes


def _latest_state(run_dir: pathlib.Path) -> dict:
    directory = run_dir / "checkpoints"
    manager = ocp.CheckpointManager(directory.absolute()) if directory.is_dir() else None
    step = manager.latest_step() if manager else None
    if step is None:
        raise ConfigError(f"{run_dir} has no checkpoint to export (checkpoints/ is written after each epoch with "
                          "trainer.checkpoint_every_epochs >= 1, and after the last).")
    try:
        tree = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    finally:
        manager.close()
    return tree["state"]


def _dense_view(state: dict, shapes: dict, backend_name: str):
    """Dense ``(params, masks)`` from a checkpoint's raw state (stored layers expanded from their slot flags,
    ``live``; checkpoints written before that name hold them as ``masks``)."""
    params, masks = state["params"], state["live"] if "live" in state else state["masks"]
    topologies = state.get("topologies") or {}
    if not topologies:
        return params, masks
    backend_name = auto.SPARSE_BACKEND if backend_name == "auto" else backend_name   # auto stores on csr
    backend = backends.make(backend_name)
    p, m = named_leaves(params), named_leaves(masks)
    dense_p, dense_m = {}, {}
    for name, raw in topologies.items():
        values = jnp.asarray(p[name])
        layout = backends.kernel_layout(shapes[name], backend.count_of(values))
        topology = backend.topology_from({f: jnp.asarray(raw[f]) for f in backend.fields}, layout)
        w, mask = backend.expand(values, jnp.asarray(m[name]), topology, layout)
        dense_p[name], dense_m[name] = np.asarray(w), np.asarray(mask)
    return replace_named(params, dense_p), replace_named(masks, dense_m)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dst-export", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a run directory (holding .hydra/config.yaml and checkpoints/)")
    parser.add_argument("--format", default="csr", help=f"one of {', '.join(FORMATS)} (default csr)")
    parser.add_argument("--out", required=True, help="the file to write (.npz)")
    args = parser.parse_args(argv)
    run_dir = pathlib.Path(args.run_dir)
    try:
        if args.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {args.format!r}.")
        config_file = run_dir / ".hydra" / "config.yaml"
        if not config_file.is_file():
            raise ConfigError(f"{run_dir} is not a run directory (no .hydra/config.yaml).")
        cfg = OmegaConf.to_container(OmegaConf.load(config_file), resolve=True)
        plan = prepare(cfg, say=lambda *_: None)
        sample = jnp.zeros((1,) + tuple(plan.data.example_shape), jnp.float32)
        shapes = {n: tuple(s.shape) for n, s in named_leaves(model_state_shapes(plan.model, sample)[0]).items()}
        state = _latest_state(run_dir)
        params, masks = _dense_view(state, shapes, cfg["sparsity"].get("backend") or "masked")
        layers = dst.sparsifiable_layers(jax.tree_util.tree_map(np.asarray, params))
        convolutions, kept = backends.convolutions(plan.model, sample, layers)
        counts = export_model(args.out, args.format, cfg["model"], plan.data.num_classes, params, masks,
                              state.get("model_state") or {}, layers, convolutions)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    size = pathlib.Path(args.out).stat().st_size
    stored = ", ".join(f"{n} ({c})" for n, c in counts.items()) or "none (every kernel dense)"
    dense = "".join(f"; {n} stays dense ({why})" for n, why in kept.items()) if args.format != "dense" else ""
    print(f"exported {run_dir} as {args.format} to {args.out} ({size / 2**20:.2f} MiB); stored layers: {stored}{dense}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
