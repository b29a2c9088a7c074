"""The layers, enforced: a core that imports nothing above it; the training code and the gateway
each on the core alone; the command line on top of them all.

    memefly (core: contract, captions, decoding, paths, http ...)
      ^-- model_export (data, training, export)
      ^-- gateway (the service)      engine/ and backends/ know nothing of HTTP (api/)
            ^-- memefly.cli (the `memefly` command, the only place that joins them)

Every import counts, those inside functions too (the CLI's are all there); relative imports
are banned by ruff (TID252), so every import is one this test reads.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imports(path: Path) -> list[tuple[str, set[str]]]:
    """Each import statement: the module it names, and every name it could bring in
    (`from gateway import api` brings gateway.api)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, {alias.name}) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}))
    return found


def modules_under(folder: str, leave_out: str | None = None) -> list[Path]:
    return [p for p in sorted((ROOT / folder).rglob("*.py")) if not (leave_out and p.is_relative_to(ROOT / leave_out))]


def offenders(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    def hits(name: str) -> bool:
        return any(name == f or name.startswith(f + ".") for f in forbidden)

    return [
        f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name} imports {module}"
        for path in paths
        for module, names in imports(path)
        if any(hits(name) for name in names)
    ]


LAYERS = {
    "the core": (modules_under("memefly", leave_out="memefly/cli"), ("gateway", "model_export", "memefly.cli")),
    "the training code": (modules_under("model_export"), ("gateway", "memefly.cli")),
    "the gateway": (modules_under("gateway"), ("model_export", "memefly.cli")),
    "the gateway's engine and backends": (
        modules_under("gateway/engine") + modules_under("gateway/backends"),
        ("gateway.api", "fastapi", "starlette"),
    ),
}


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_what_is_below_it(layer):
    paths, forbidden = LAYERS[layer]
    assert paths, f"no modules found for {layer}"
    assert offenders(paths, forbidden) == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import numpy\n"
        "def f():\n"
        "    from gateway.api.app import create_app\n"
        "    import model_export.export\n"
        "    from gateway import api\n"
        "    from gateway import errors\n"
    )
    assert offenders([module], ("gateway.api", "model_export")) == [
        "m.py imports gateway.api.app",
        "m.py imports model_export.export",
        "m.py imports gateway",
    ]
