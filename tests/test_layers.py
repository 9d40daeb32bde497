"""Import layers of src/xaiimg, read from the source with ``ast`` (nested imports included) so they stay true:

1. The ground floor (:mod:`xaiimg.ops`, :mod:`xaiimg.nn`, :mod:`xaiimg.passes`) imports nothing else from xaiimg.
2. A module in ``methods/`` imports from ``methods/`` only the package (registry), ``methods/base.py``, a family
   base (``methods/*_base.py``) or modules of its own family package (``methods/lrp/``): never a sibling method.
3. A module in ``methods/`` never imports a private name (``_x``) from another module.
4. Metrics import from ``methods/`` only the explainer protocol (``Explainer``, ``get_method``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
GROUND_FLOOR = {"xaiimg.ops", "xaiimg.nn", "xaiimg.passes"}
EXPLAINER_PROTOCOL = {"Explainer", "get_method"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(path): path for path in sorted((SRC / "xaiimg").rglob("*.py"))}


def imports(module: str, source: str) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` of every import in ``source`` (the code of ``module``);
    ``from package import submodule`` counts as an import of the submodule."""
    package = module if MODULES.get(module, Path()).name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule, None, node.lineno) if submodule in MODULES
                             else (base, alias.name, node.lineno))
    return found


def is_family_base(module: str) -> bool:
    return module == "xaiimg.methods.base" or (module.startswith("xaiimg.methods.")
                                               and module.rpartition(".")[2].endswith("_base"))


def family_package(module: str) -> str | None:
    """``xaiimg.methods.<family>`` for a module inside a family package of ``methods/``, else ``None``."""
    parts = module.split(".")
    family = ".".join(parts[:3])
    return family if len(parts) >= 3 and parts[1] == "methods" and MODULES.get(family, Path()).name == "__init__.py" \
        else None


def ground_floor_violations(module: str, source: str) -> list[str]:
    if module not in GROUND_FLOOR:
        return []
    return [f"{module}:{line} imports {target}" for target, _, line in imports(module, source)
            if target.split(".")[0] == "xaiimg" and target not in GROUND_FLOOR]


def sibling_method_violations(module: str, source: str) -> list[str]:
    if not module.startswith("xaiimg.methods"):
        return []
    family = family_package(module)
    return [f"{module}:{line} imports {target}" for target, _, line in imports(module, source)
            if target.startswith("xaiimg.methods.") and not is_family_base(target)
            and not (family and target.startswith(family + "."))]


def private_name_violations(module: str, source: str) -> list[str]:
    if not module.startswith("xaiimg.methods"):
        return []
    return [f"{module}:{line} imports {target}.{name}" for target, name, line in imports(module, source)
            if target.startswith("xaiimg") and target != module and name and name.startswith("_")]


def metric_violations(module: str, source: str) -> list[str]:
    if not module.startswith("xaiimg.metrics"):
        return []
    return [f"{module}:{line} imports {target}" + (f".{name}" if name else "")
            for target, name, line in imports(module, source)
            if target.startswith("xaiimg.methods") and not (target in ("xaiimg.methods", "xaiimg.methods.base")
                                                            and name in EXPLAINER_PROTOCOL)]


RULES = [ground_floor_violations, sibling_method_violations, private_name_violations, metric_violations]


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_import_rule_holds_in_src(rule):
    found = [message for module, path in MODULES.items() for message in rule(module, path.read_text())]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("rule,module,source", [
    (ground_floor_violations, "xaiimg.nn", "from xaiimg.methods.base import Explainer"),
    (ground_floor_violations, "xaiimg.ops", "def f():\n    import xaiimg.models.zoo"),
    (sibling_method_violations, "xaiimg.methods.msgcam", "from xaiimg.methods.cameras import scaled_sizes"),
    (sibling_method_violations, "xaiimg.methods.gradient", "from xaiimg.methods import cam"),
    (sibling_method_violations, "xaiimg.methods.lrp.explainer", "from xaiimg.methods.transformer import vit_trace"),
    (private_name_violations, "xaiimg.methods.cam", "from xaiimg.methods.cam_base import _helper"),
    (private_name_violations, "xaiimg.methods.lrp.explainer", "from .rules import _private"),
    (metric_violations, "xaiimg.metrics.sanity", "from xaiimg.methods.base import preserved_state"),
    (metric_violations, "xaiimg.metrics._common", "def f():\n    from xaiimg.methods.cam import GradCAM"),
])
def test_rules_catch_violations(rule, module, source):
    assert rule(module, source)


def test_allowed_imports_pass():
    assert not sibling_method_violations("xaiimg.methods.perturbation",
                                         "from xaiimg.methods.cam_base import ChannelWeightedCAM\n"
                                         "from xaiimg.methods.perturbation_base import group_sums\n"
                                         "from xaiimg.methods import get_method")
    assert not sibling_method_violations("xaiimg.methods.lrp.explainer", "from .composites import COMPOSITES")
    assert not metric_violations("xaiimg.metrics._common", "def f():\n    from xaiimg.methods import get_method")
    assert ("xaiimg.methods.cam_base", "ChannelWeightedCAM") in {
        (target, name) for target, name, _ in imports("xaiimg.methods.cam", MODULES["xaiimg.methods.cam"].read_text())}
