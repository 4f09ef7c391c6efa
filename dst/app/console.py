"""Short console text for long lists of layer names (a ViT stores 48 kernels; naming each one buries
the run's first lines)."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"(\d+)")


def _ranges(numbers: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5)`` -> ``0..2,5``."""
    parts, start = [], numbers[0]
    for prev, cur in zip(numbers, numbers[1:] + (None,)):
        if cur != prev + 1:
            parts.append(str(start) if start == prev else f"{start}..{prev}")
            start = cur
    return ",".join(parts)


def layer_list(names, fold_from: int = 9) -> str:
    """The names joined by ``, ``; from ``fold_from`` names on, those that differ in one number are folded
    into one entry with the numbers as ranges (``Block_0/Dense_0/kernel, ..., Block_11/Dense_0/kernel`` ->
    ``Block_{0..11}/Dense_0/kernel``), after a count. Folding repeats over every number of a name, so a grid
    of blocks and layers becomes one entry."""
    names = list(names)
    if len(names) < fold_from:
        return ", ".join(names)
    items = [tuple(int(t) if i % 2 else t for i, t in enumerate(_NUMBER.split(n))) for n in names]
    items = [tuple((t,) if isinstance(t, int) else t for t in item) for item in items]
    positions = max((len(item) for item in items), default=0)
    for k in range(positions - 2, 0, -2):       # numeric tokens sit at odd positions; fold the last first
        groups: dict[tuple, list] = {}
        for item in items:
            key = item[:k] + (None,) + item[k + 1:] if len(item) > k else item
            groups.setdefault(key, []).append(item)
        items = [members[0] if len(members) == 1 or len(members[0]) <= k else
                 members[0][:k] + (tuple(sorted({n for m in members for n in m[k]})),) + members[0][k + 1:]
                 for members in groups.values()]
    fmt = lambda t: str(t[0]) if len(t) == 1 else "{" + _ranges(t) + "}"
    return f"{len(names)} layers: " + ", ".join("".join(fmt(t) if i % 2 else t for i, t in enumerate(item))
                                                for item in items)


def density_list(densities: dict[str, float], fold_from: int = 9) -> str:
    """``name=density`` for each layer; from ``fold_from`` layers on, the layers of one density (to four
    places) are folded as :func:`layer_list` folds names: ``block{0..11}/mlp_fc1/kernel=0.0512``."""
    shown = {n: f"{d:.4f}" for n, d in densities.items()}
    if len(shown) < fold_from:
        return ", ".join(f"{n}={d}" for n, d in shown.items())
    by_density: dict[str, list[str]] = {}
    for name, d in shown.items():
        by_density.setdefault(d, []).append(name)
    return f"{len(shown)} layers: " + ", ".join(
        f"{entry}={d}" for d, names in by_density.items()
        for entry in layer_list(names, fold_from=2).removeprefix(f"{len(names)} layers: ").split(", "))
