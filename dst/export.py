"""A trained sparse model in a compact file, and a predict function loaded back from it.

:func:`export_model` writes one ``.npz`` file (numpy's zip of arrays): the model's config, its dense
leaves (biases, norms, layers kept dense or masked), its model state (BatchNorm averages) and each
stored layer in the chosen format:

* ``dense``: every kernel dense, with exact zeros off its mask;
* ``csr``: each sparse fully connected kernel, and each sparse convolution the kernels can run, as
  ``values``, ``cols`` and ``rowptr`` over its output units (a convolution's over its matrix view
  ``kh * kw * c_in``), exactly its active weights;
* ``condensed``: each as ``values [n_out, k]`` and ``indices [n_out, k]`` (constant fan-in only).

:func:`load_exported` rebuilds the model and returns a jitted ``predict(x) -> logits`` (evaluation mode)
that runs the stored layers on the compiled kernels (:mod:`dst.kernels`), a batch of one through their
sparse matrix-vector product; without the kernels (or off the CPU) a batch of one takes an XLA gather.
Stored convolutions run on :func:`dst.kernels.csr_conv` with the strides and padding the file records;
grouped or dilated convolutions (which the kernels do not run) stay dense in every format.

``dst-export RUN_DIR --format csr --out model.npz`` writes the file from a run's latest checkpoint.
"""

from __future__ import annotations

import importlib
import json
import zipfile
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dst import backends
from dst import kernels
from dst.masks import named_leaves
from dst.models import build_model

FORMATS = ("dense", "csr", "condensed")
_VERSION = 1


def _stored_layers(masks, layers, convolutions):
    leaves = named_leaves(masks)
    return [n for n in layers if (np.ndim(leaves[n]) == 2 or n in convolutions) and not np.all(leaves[n])]


def export_model(path, fmt: str, model_config: dict, num_classes: int, params, masks, model_state,
                 layers, convolutions: dict | None = None) -> dict:
    """Write ``params`` (dense, any values off ``masks``) under ``masks`` to ``path`` in format ``fmt``;
    ``layers`` are the sparsifiable ones, ``convolutions`` the :class:`dst.backends.ConvGeometry` of each
    convolution among them that the kernels can run (:func:`dst.backends.convolutions`; the others stay
    dense). Returns ``{layer: stored count}`` of the stored layers."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    params = jax.tree_util.tree_map(lambda p, m: np.where(np.asarray(m), np.asarray(p), 0).astype(np.asarray(p).dtype),
                                    params, masks)
    convolutions = convolutions or {}
    stored = [] if fmt == "dense" else _stored_layers(masks, layers, convolutions)
    backend = backends.make(fmt) if stored else None
    arrays, counts = {}, {}
    m = named_leaves(masks)
    for name, leaf in named_leaves(params).items():
        if name not in stored:
            arrays[f"params/{name}"] = np.asarray(leaf)
            continue
        try:
            layout = backend.layout(np.asarray(m[name]))._replace(conv=convolutions.get(name))
        except ValueError as err:
            raise ValueError(f"--format {fmt}: layer {name} {err}.") from None
        values, _, topology = backend.compress(jnp.asarray(leaf), jnp.asarray(m[name]), layout)
        arrays[f"stored/{name}/values"] = np.asarray(values)
        for field in backend.fields:   # the transposes are rebuilt on loading
            arrays[f"stored/{name}/{field}"] = np.asarray(getattr(topology, field))
        counts[name] = layout.count
    for name, leaf in named_leaves(model_state).items():
        arrays[f"state/{name}"] = np.asarray(leaf)
    meta = {"version": _VERSION, "format": fmt, "model": model_config, "num_classes": num_classes,
            "stored": {n: [list(np.shape(m[n])), counts[n]] for n in stored},
            "convolutions": {n: {"strides": list(g.strides), "padding": g.padding} for n, g in convolutions.items()
                             if n in stored}}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return counts


def _build(model_config: dict, num_classes: int):
    options = {k: v for k, v in model_config.items() if k not in ("name", "_target_")}
    target = model_config.get("_target_")
    if not target:
        return build_model(model_config["name"], num_classes=num_classes, **options)
    module, _, attr = target.rpartition(".")
    factory = getattr(importlib.import_module(module), attr)
    return factory(**options)


def _nest(flat: dict):
    """``{"a/b/c": x}`` -> ``{"a": {"b": {"c": x}}}``."""
    out = {}
    for name, value in flat.items():
        node = out
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load_exported(path) -> Callable:
    """The jitted ``predict(x) -> logits`` of an exported model (``x`` shaped as the model's inputs,
    with a batch axis). Its ``meta`` attribute is the file's metadata (format, model config, stored
    layers). A file that is not a whole export of dst (truncated, or another program's) raises
    ``ValueError`` with one sentence saying so."""
    meta, arrays = _read_export(path)
    model = _build(meta["model"], meta["num_classes"])
    dense = {k.removeprefix("params/"): jnp.asarray(v) for k, v in arrays.items() if k.startswith("params/")}
    state = _nest({k.removeprefix("state/"): jnp.asarray(v) for k, v in arrays.items() if k.startswith("state/")})
    stored = meta["stored"]
    if not stored:
        params = _nest(dense)
        apply = _dense_apply(model)
        return _predict(lambda x: apply(params, state, x), meta)
    backend = backends.make(meta["format"])
    layout_of = {n: _layout(shape, count, meta.get("convolutions", {}).get(n)) for n, (shape, count) in stored.items()}
    topologies = {n: backend.topology_from({f: arrays[f"stored/{n}/{f}"] for f in backend.fields}, layout)
                  for n, layout in layout_of.items()}
    values = {n: jnp.asarray(arrays[f"stored/{n}/values"]) for n in stored}
    params = _nest({**dense, **values})
    kernel_apply = backends.stored_apply(model, backends.make(meta["format"]), layout_of)
    gather_apply = backends.stored_apply(model, _gather_backend(meta["format"]), layout_of)
    compiled = kernels.available() and jax.default_backend() == "cpu"
    if compiled:
        kernels.register()

    def forward(x):
        # A batch of one takes the kernels' sparse matrix-vector product where they are built, the XLA
        # gather elsewhere (static: one program per batch size).
        apply = gather_apply if x.shape[0] == 1 and not compiled else kernel_apply
        return apply(backends.Stored(params, topologies), state, x, False, None)[0]

    return _predict(forward, meta)


def _layout(shape: list, count: int, conv: dict | None) -> backends.Layout:
    """A stored layer's layout from the file: a 4-D kernel runs with its recorded strides and padding."""
    if conv is None:
        return backends.Layout(tuple(shape), count)
    padding = conv["padding"] if isinstance(conv["padding"], str) else tuple(tuple(p) for p in conv["padding"])
    geometry = backends.ConvGeometry(tuple(shape), tuple(conv["strides"]), padding)
    return backends.Layout((int(np.prod(shape[:-1])), shape[-1]), count, geometry)


def _read_export(path) -> tuple[dict, dict]:
    """``(meta, arrays)`` of an exported file, or one sentence on what is wrong with it."""
    def not_export(why: str) -> ValueError:
        return ValueError(f"{path} is not a model exported by dst-export ({why}); export the run again with "
                          "dst-export RUN_DIR --out FILE.npz.")

    if not zipfile.is_zipfile(path):   # FileNotFoundError passes through: the path itself is wrong
        open(path, "rb").close()
        raise not_export("it is truncated or not a .npz archive")
    try:
        with np.load(path, allow_pickle=False) as data:
            raw = bytes(data["meta"]) if "meta" in data.files else None
            arrays = {k: data[k] for k in data.files if k != "meta"}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
        raise not_export(f"its arrays cannot be read: {type(err).__name__}") from None
    try:
        meta = json.loads(raw.decode()) if raw is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    missing = [k for k in ("model", "num_classes", "stored", "format") if k not in (meta or {})]
    if meta is None or missing:
        raise not_export("it has no dst metadata" if meta is None else f"its metadata lacks {', '.join(missing)}")
    return meta, arrays


def _gather_backend(fmt: str) -> backends.Backend:
    """The batch-of-one path: one XLA gather (condensed) or gather + segment_sum (csr)."""
    base = backends.make(fmt)
    return base._replace(matmul=base.matmul_xla)


def _dense_apply(model):
    from dst.train.apply import flax_apply

    apply = flax_apply(model)
    return lambda params, state, x: apply(params, state, x, False, None)[0]


def _predict(forward, meta):
    predict = jax.jit(forward)

    def call(x):
        return predict(jnp.asarray(x, jnp.float32))

    call.meta = meta
    return call


__all__ = ["FORMATS", "export_model", "load_exported"]
