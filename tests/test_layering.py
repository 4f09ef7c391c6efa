"""The package's layers: only ``dst/app/`` imports Hydra or the app; the library below never imports upward."""

import ast
import pathlib

import dst

PACKAGE = pathlib.Path(dst.__file__).parent


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_app_imports_hydra_or_the_app():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if "app" in path.relative_to(PACKAGE).parts:
            continue
        bad = {n for n in _imports(path) if n.split(".")[0] in ("hydra", "omegaconf") or n.startswith("dst.app")}
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert offenders == {}
