"""Device and precision (issue 19, item 1): every registered method and the main metrics run with their tensors on
the device they are given, with no host round trip in their hot path, and ``device=`` / ``autocast=`` of the Python
entry points move, cast and restore as documented.

Host round trips are caught by :func:`no_host_transfers`: ``Tensor.cpu``, ``.numpy``, ``.tolist``, ``.item`` and the
implicit ``int(t)``, ``float(t)``, ``operator.index(t)`` raise while a method or metric runs, unless the innermost
xaiimg function on the stack is in :data:`ALLOWED_TRANSFERS` (a host value genuinely needed once per call, with the
reason). Data-dependent branches (``if t.any(): raise ...``) still synchronise once per call for input checks; they
are not counted. The devices: the CPU always, and CUDA when this machine has it.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
import torch
from test_contracts import CHEAP_PARAMS, VIT_METHODS, images, tiny_vit
from tiny_cnn import TinyCNN, tiny_spec

import xaiimg
from xaiimg.methods import available_methods, get_method
from xaiimg.metrics import get_metric

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PACKAGE = Path(xaiimg.__file__).resolve().parent
TRANSFERS = ("cpu", "numpy", "tolist", "item", "__int__", "__float__", "__index__")

# (file under src/xaiimg, function) -> why a host value is needed there, once per call (not per mask or step).
ALLOWED_TRANSFERS = {
    ("methods/gradient.py", "_per_image_host_values"):
        "SmoothGrad: Captum's NoiseTunnel takes each image's noise level as a Python float and reads a one-image "
        "target with .item() (one transfer of B values each per call, before the loop over images)",
    ("metrics/localisation.py", "result"):
        "SegmentationScores.result: the pooled pixel counts become the result's Python ints, once per result",
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _responsible_site() -> tuple[str, str] | None:
    """(file relative to the package, function) of the innermost xaiimg frame on the caller's stack."""
    for frame in inspect.stack(context=0)[2:]:
        path = Path(frame.filename).resolve()
        if path.is_relative_to(PACKAGE):
            return path.relative_to(PACKAGE).as_posix(), frame.function
    return None


@contextmanager
def no_host_transfers(allowed: dict = ALLOWED_TRANSFERS):
    """Inside, a device-to-host transfer made by xaiimg code raises unless its site is ``allowed``."""
    originals = {name: getattr(torch.Tensor, name) for name in TRANSFERS}

    def guarded(name):
        def transfer(tensor, *args, **kwargs):
            site = _responsible_site()
            if site is not None and site not in allowed:
                raise AssertionError(f"host round trip Tensor.{name} in {site[0]}:{site[1]}")
            return originals[name](tensor, *args, **kwargs)
        return transfer

    with mock.patch.multiple(torch.Tensor, **{name: guarded(name) for name in TRANSFERS}):
        yield


def model_for(name: str, device: str):
    from xaiimg.models.zoo import attach_spec

    model = tiny_vit().float() if name in VIT_METHODS else attach_spec(TinyCNN(), tiny_spec(5, "features.3"))
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------ the guard itself
def test_guard_catches_transfers_in_xaiimg_only_and_allows_listed_sites():
    scores = torch.tensor([0.25, 0.75])
    result = xaiimg.metrics.InsertionDeletionResult(
        protocol="rise", pixels_per_step=1, targets=scores, fractions=scores, insertion_curve=scores,
        deletion_curve=scores, insertion_auc=scores, deletion_auc=scores)
    with no_host_transfers(), pytest.raises(AssertionError, match="Tensor.item in metrics/faithfulness.py:summary"):
        result.summary()
    with no_host_transfers(), pytest.raises(AssertionError, match="Tensor.__int__ in metrics/localisation.py"):
        xaiimg.metrics.PointingGame(top_k=torch.tensor(5))
    with no_host_transfers({("metrics/faithfulness.py", "summary"): "allowed here"}):
        assert result.summary()["insertion_auc"] == 0.5
        assert scores.tolist() == [0.25, 0.75]   # the test's own transfers are not the library's


# ------------------------------------------------------------------------------------------------- methods
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", available_methods())
def test_method_keeps_its_tensors_on_the_device(name, device):
    model = model_for(name, device)
    x = images(2).float()
    explainer = get_method(name, **CHEAP_PARAMS.get(name, {}))
    with no_host_transfers():
        maps = explainer(model, x, target=[1, 3], device=device)
    assert maps.device == x.device and maps.dtype == torch.float32 and maps.shape == (2, 1, 16, 16)
    assert torch.isfinite(maps).all()
    assert next(model.parameters()).device.type == device, "the model was not left where it was"


# ------------------------------------------------------------------------------------------------- metrics
def ground_truth(device: str) -> torch.Tensor:
    masks = torch.zeros(2, 32, 32, dtype=torch.bool, device=device)
    masks[0, 4:18, 6:24] = True
    masks[1, 16:30, 2:12] = True
    return masks


METRIC_CASES = {
    "insertion-deletion": dict(protocol="thesis", batch_size=64),
    "positive-negative-perturbation": dict(batch_size=16),
    "pointing-game": dict(masks=None),
    "pointing-game/thesis-top100": dict(masks=None, preset="thesis-top100", top_k=20),
    "energy-pointing-game": dict(masks=None),
    "segmentation": dict(masks=None),
    "model-randomisation": dict(layers=["features.2", "classifier"]),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(METRIC_CASES))
def test_metric_keeps_its_tensors_on_the_device(case, device):
    from xaiimg.models.zoo import attach_spec

    model = attach_spec(TinyCNN(), tiny_spec(5, "features.3")).to(device).eval()
    x = images(2, size=32).float().to(device)   # the thesis preset's 51-pixel blur needs 26 pixels or more
    metric = get_metric(case.split("/")[0])
    options = {key: (ground_truth(device) if key == "masks" else value) for key, value in METRIC_CASES[case].items()}
    third = "grad-cam" if metric.explains else xaiimg.explain("grad-cam", model, x, target=[1, 3])
    with no_host_transfers():
        result = metric(model, x, third, [1, 3], **options)
    tensors = {field: value for field, value in vars(result).items() if isinstance(value, torch.Tensor)}
    assert tensors and all(value.device.type == device for value in tensors.values()), \
        {field: value.device for field, value in tensors.items()}
    assert all(isinstance(value, float) for value in result.summary().values())


# ------------------------------------------------------------------------------------------------ autocast
@pytest.mark.parametrize("name", available_methods())
def test_autocast_runs_the_forwards_in_bfloat16_and_returns_float32_maps(name):
    model = model_for(name, "cpu")
    x = images(2).float()
    explainer = get_method(name, **CHEAP_PARAMS.get(name, {}))
    reference = explainer(model, x, target=[1, 3])
    seen = []
    first_layer = next(m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    handle = first_layer.register_forward_hook(lambda _module, _inputs, output: seen.append(output.dtype))
    try:
        maps = explainer(model, x, target=[1, 3], autocast="bfloat16")
        assert torch.bfloat16 in seen, "no forward ran under autocast"
        seen.clear()
        model(x)
        assert seen == [torch.float32], "autocast left on after the call"
    finally:
        handle.remove()
    assert maps.dtype == torch.float32 and maps.device == x.device and torch.isfinite(maps).all()
    assert (maps - reference).abs().mean() < 0.05, "bfloat16 maps far from the float32 maps"
    assert not model._forward_hooks and not model._forward_pre_hooks, "autocast hooks left behind"


def test_autocast_in_metrics_and_results_back_in_float32():
    model = model_for("grad-cam", "cpu")
    x = images(2, size=32).float()
    saliency = xaiimg.explain("grad-cam", model, x, target=[1, 3])
    plain = get_metric("insertion-deletion")(model, x, saliency, [1, 3], protocol="rise", batch_size=64)
    cast = get_metric("insertion-deletion")(model, x, saliency, [1, 3], protocol="rise", batch_size=64,
                                            device="cpu", autocast="bfloat16")
    assert cast.insertion_curve.dtype == torch.float32 and cast.insertion_curve.device == x.device
    assert (cast.insertion_curve - plain.insertion_curve).abs().max() < 0.05
    assert not torch.equal(cast.insertion_curve, plain.insertion_curve), "autocast did not change the precision"


# ------------------------------------------------------------------------------------ defaults, errors, moves
def test_device_and_autocast_off_change_nothing():
    model = model_for("grad-cam", "cpu").double()
    x = images(3)
    for name in ("grad-cam", "rise", "score-cam"):
        explainer = get_method(name, **CHEAP_PARAMS.get(name, {}))
        assert torch.equal(explainer(model, x, target=[0, 1, 2]),
                           explainer(model, x, target=[0, 1, 2], device="cpu", autocast=None))
    saliency = xaiimg.explain("grad-cam", model, x)
    metric = get_metric("insertion-deletion")
    assert torch.equal(metric(model, x, saliency, protocol="rise").deletion_auc,
                       metric(model, x, saliency, protocol="rise", device="cpu").deletion_auc)


@pytest.mark.parametrize("device, autocast, message", [
    ("tpu", None, "unknown device 'tpu'"),
    ("meta", None, "unsupported device 'meta'"),
    ("gpu:0", None, "unknown device 'gpu:0'"),
    ("cpu", "float32", "autocast must be None, 'bfloat16' or 'float16'"),
    ("cpu", torch.int8, "autocast must be None"),
] + ([] if torch.cuda.is_available() else [("cuda", None, "CUDA is not available")]))
def test_bad_device_or_autocast_is_refused_before_any_pass(device, autocast, message):
    model = model_for("grad-cam", "cpu")
    x = images(1).float()
    with pytest.raises(ValueError, match=message):
        xaiimg.explain("grad-cam", model, x, device=device, autocast=autocast)
    with pytest.raises(ValueError, match=message):
        get_metric("insertion-deletion")(model, x, torch.rand(1, 1, 16, 16), device=device, autocast=autocast)


def test_a_model_spread_over_devices_is_refused():
    model = model_for("grad-cam", "cpu")
    model.classifier.to("meta")
    with pytest.raises(ValueError, match="several devices"):
        xaiimg.explain("grad-cam", model, images(1).float(), device="cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_model_moves_for_the_call_and_back_also_on_error(device):
    model = model_for("grad-cam", "cpu")
    weight = model.classifier.weight
    placed = []
    handle = model.register_forward_pre_hook(lambda module, _inputs: placed.append(module.classifier.weight.device))
    try:
        maps = xaiimg.explain("grad-cam", model, images(2).float(), device=device)
        with pytest.raises(ValueError, match="unknown layer"):
            xaiimg.explain("grad-cam", model, images(2).float(), device=device, layer="nowhere")
    finally:
        handle.remove()
    assert placed and {d.type for d in placed} == {device}
    assert maps.device.type == "cpu" and model.classifier.weight is weight and weight.device.type == "cpu"
