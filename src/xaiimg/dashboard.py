"""Interactive comparison dashboard (thesis ch.5) in ipywidgets; serve it as a web page with Voila::

    voila notebooks/07_comparison_dashboard.ipynb

Model picker (zoo or user checkpoint), image (sample or upload), top-5 classes, per-method parameter panels,
maps side by side with an enhancement toggle, top-k% saliency segmentation, an experiment runner with a progress
bar, the results table and CSV/JSON export. Every action reports its state in the status line; long jobs update
a progress bar while they run.
"""
from __future__ import annotations

import io
import json
import traceback
from pathlib import Path
from typing import Any

import ipywidgets as w
import torch
from PIL import Image

from xaiimg.compare import (EXPERIMENT_METRICS, Experiment, explain_methods, method_parameters, open_model,
                            run_experiment)
from xaiimg.data import ImageFolder, load_image, sample_images, sample_names
from xaiimg.methods import available_methods
from xaiimg.models import available_models, top_k
from xaiimg.report import ResultsStore, RunRecord
from xaiimg.viz import overlay, saliency_segment

CHECKPOINT = "user checkpoint…"
HIDDEN_METHODS = {"sliding-window"}


def _png(image) -> bytes:
    """PNG bytes of an image in [0,1]: a ``[3,H,W]`` tensor or an ``HxWx3`` array."""
    array = image.permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) else image
    buffer = io.BytesIO()
    Image.fromarray((array.clip(0, 1) * 255).round().astype("uint8")).save(buffer, format="PNG")
    return buffer.getvalue()


def _parse(text: str, default: Any) -> Any:
    """A parameter value typed in a text box, converted like its default (JSON for lists/None)."""
    text = text.strip()
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if default is None or isinstance(default, (list, tuple, dict)):
        return None if text in ("", "None") else json.loads(text) if text[:1] in "[{0123456789-" else text
    return text


class ComparisonDashboard:
    """Build with ``ComparisonDashboard(store_dir)``; display ``.widget`` in Jupyter or Voila."""

    def __init__(self, store_dir: str | Path = "../artifacts/runs", default_model: str = "efficientnet_lite0",
                 default_methods: tuple[str, ...] = ("grad-cam",)):
        self.store = ResultsStore(store_dir)
        self.model = None
        self.x = None
        self.image01 = None
        self.maps: dict[str, torch.Tensor] = {}
        methods = [m for m in available_methods() if m not in HIDDEN_METHODS]

        self.status = w.HTML(value="Ready.")
        self.model_name = w.Dropdown(options=available_models() + [CHECKPOINT], value=default_model,
                                     description="Model")
        self.arch = w.Text(placeholder="resnet18", description="Arch")
        self.checkpoint = w.Text(placeholder="path/to/state_dict.pth", description="Checkpoint")
        self.load_button = w.Button(description="Load model", button_style="primary")
        self.sample = w.Dropdown(options=sample_names(), description="Sample")
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="Upload")
        self.image_view = w.Image(format="png", width=224)
        self.top5 = w.HTML()
        self.target = w.Dropdown(options=[], description="Class")
        self.methods = w.SelectMultiple(options=methods, value=[m for m in default_methods if m in methods],
                                        description="Methods", rows=8)
        self.params_box = w.VBox()
        self.enhance = w.Checkbox(value=False, description="Sliding-window enhancement")
        self.run_button = w.Button(description="Generate maps", button_style="success")
        self.maps_box = w.HBox()
        self.percent = w.IntSlider(value=20, min=1, max=100, description="Top-k %", continuous_update=False)
        self.segments_box = w.HBox()
        self.folder = w.Text(description="Folder", placeholder="folder of images")
        self.limit = w.IntText(value=8, description="Max images")
        self.metric = w.Dropdown(options=EXPERIMENT_METRICS, description="Metric")
        self.protocol = w.Dropdown(options=["rise", "thesis", "groupcam"], value="rise", description="Protocol")
        self.experiment_button = w.Button(description="Run experiment")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="Progress")
        self.results = w.HTML()
        self.export_csv = w.Button(description="Export CSV")
        self.export_json = w.Button(description="Export JSON")
        self.exported = w.HTML()
        self._param_widgets: dict[str, dict[str, tuple[w.Text, Any]]] = {}

        self.load_button.on_click(lambda _: self._guard(self.load_model))
        self.sample.observe(lambda _: self._guard(self.set_image_from_sample), names="value")
        self.upload.observe(lambda _: self._guard(self.set_image_from_upload), names="value")
        self.methods.observe(lambda _: self._refresh_parameter_panels(), names="value")
        self.run_button.on_click(lambda _: self._guard(self.generate))
        self.percent.observe(lambda _: self._guard(self.show_segments), names="value")
        self.experiment_button.on_click(lambda _: self._guard(self.experiment))
        self.export_csv.on_click(lambda _: self._guard(lambda: self.export("csv")))
        self.export_json.on_click(lambda _: self._guard(lambda: self.export("json")))

        self.widget = w.VBox([
            w.HTML("<h2>xaiimg: saliency comparison</h2>"), self.status,
            w.HBox([self.model_name, self.arch, self.checkpoint, self.load_button]),
            w.HBox([w.VBox([self.sample, self.upload, self.image_view]), w.VBox([self.top5, self.target])]),
            w.HBox([self.methods, w.VBox([w.HTML("<b>Parameters</b>"), self.params_box])]),
            w.HBox([self.enhance, self.run_button]), self.maps_box,
            w.HTML("<h3>Saliency segmentation</h3>"), self.percent, self.segments_box,
            w.HTML("<h3>Experiments</h3>"),
            w.HBox([self.folder, self.limit, self.metric, self.protocol]),
            w.HBox([self.experiment_button, self.progress]), self.results,
            w.HBox([self.export_csv, self.export_json, self.exported]),
        ])
        self._refresh_parameter_panels()
        self._show_results()

    # ---------------------------------------------------------------------------------------- actions
    def _guard(self, action) -> None:
        """Run a UI action, reporting errors in the status line instead of losing them in the kernel log."""
        try:
            action()
        except Exception as error:  # shown to the user; the full trace goes to the log
            self.status.value = f"<span style='color:#b00'>Error: {type(error).__name__}: {error}</span>"
            traceback.print_exc()

    def _say(self, text: str) -> None:
        self.status.value = text

    def load_model(self) -> None:
        self._say("Loading model…")
        if self.model_name.value == CHECKPOINT:
            self.model = open_model(arch=self.arch.value.strip(), checkpoint=self.checkpoint.value.strip())
        else:
            self.model = open_model(self.model_name.value)
        self._refresh_parameter_panels()
        self._say(f"Loaded {self.model.spec.name}.")
        if self.image01 is None:
            self.set_image_from_sample()
        else:
            self._set_image(self._pil)

    def set_image_from_sample(self) -> None:
        self._image_name = f"sample:{self.sample.value}"
        self._set_image(sample_images([self.sample.value])[0])

    def set_image_from_upload(self) -> None:
        files = self.upload.value
        if files:
            content = files[0]["content"]
            path = Path(self.store.root) / "uploads" / files[0]["name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes(content))
            self._image_name = f"upload:{path.name}"
            self._set_image(load_image(path))

    def _set_image(self, image: Image.Image) -> None:
        self._pil = image
        if self.model is None:
            self.load_model()
            return
        self.x = self.model.preprocess(image)
        self.image01 = self.model.spec.to_unit_range(self.x).clamp(0, 1)
        self.image_view.value = _png(self.image01[0])
        ranked = top_k(self.model, self.x, k=5)[0]
        self.top5.value = "<b>Top-5</b><table>" + "".join(
            f"<tr><td>{index}</td><td>{name}</td><td>{p:.3f}</td></tr>" for index, name, p in ranked) + "</table>"
        self.target.options = [(f"{name} ({index})", index) for index, name, _ in ranked]
        self.target.value = ranked[0][0]
        self._say(f"Image ready; predicted: {ranked[0][1]}.")

    def _refresh_parameter_panels(self) -> None:
        panels = []
        for method in self.methods.value:
            widgets = {}
            for name, default in method_parameters(method).items():
                if name == "layer" and default is None and self.model is not None:
                    default = self.model.spec.default_layer
                widgets[name] = (w.Text(value="" if default is None else str(default), description=name), default)
            self._param_widgets[method] = widgets
            panels.append(w.VBox([w.HTML(f"<i>{method}</i>")] + [text for text, _ in widgets.values()]))
        self.params_box.children = panels

    def _method_params(self, method: str) -> dict[str, Any]:
        defaults = method_parameters(method)
        params = {}
        for name, (text, shown_default) in self._param_widgets.get(method, {}).items():
            if text.value.strip() != ("" if shown_default is None else str(shown_default)):
                params[name] = _parse(text.value, defaults[name])
            elif name == "layer" and shown_default is not None:
                params[name] = shown_default
        return params

    def generate(self) -> None:
        if self.x is None:
            self.set_image_from_sample()
        if not self.methods.value:
            raise ValueError("choose at least one method")
        chosen = {m: self._method_params(m) for m in self.methods.value}
        result = explain_methods(self.model, self.x, chosen, target=[self.target.value], enhance=self.enhance.value,
                                 on_method=lambda m: self._say(f"Explaining with {m}…"))
        self.maps = result.maps
        self.maps_box.children = [w.VBox([w.HTML(f"<b>{label}</b>"), w.Image(value=_png(overlay(self.image01[0], m[0])),
                                                                              format="png", width=224)])
                                  for label, m in self.maps.items()]
        seconds = sum(result.seconds.values())
        self.store.add(RunRecord(kind="explain", method=", ".join(self.maps), model=self.model.spec.name,
                                 data=self._image_name, parameters={"methods": chosen, "target": self.target.value,
                                                                    "enhance": self.enhance.value},
                                 metrics={f"seconds[{m}]": t for m, t in result.seconds.items()}))
        self._show_results()
        self.show_segments()
        self._say(f"Generated {len(self.maps)} map(s) in {seconds:.1f} s.")

    def show_segments(self) -> None:
        self.segments_box.children = [
            w.VBox([w.HTML(f"<b>{label}: top {self.percent.value}%</b>"),
                    w.Image(value=_png(saliency_segment(self.image01, m, self.percent.value)[0][0]), format="png",
                            width=224)])
            for label, m in self.maps.items()]

    def experiment(self) -> None:
        if self.model is None:
            self.load_model()
        folder = ImageFolder(self.folder.value.strip())
        paths = [item.path for item in folder.items][: max(1, self.limit.value)]
        if not self.methods.value:
            raise ValueError("choose at least one method")
        for method in self.methods.value:
            self.progress.max, self.progress.value = len(paths), 0
            self._say(f"Running {self.metric.value} for {method} on {len(paths)} image(s)…")

            def advance(done, total):
                self.progress.value = done

            run_experiment(self.model, paths, Experiment(method, self.metric.value, self._method_params(method),
                                                         {"protocol": self.protocol.value}, self.enhance.value),
                           data_name=str(folder.root), store=self.store, progress=advance)
        self._show_results()
        self._say("Experiment finished; results stored.")

    def _show_results(self) -> None:
        rows = self.store.flat_rows()
        if not rows:
            self.results.value = "<i>No stored results yet.</i>"
            return
        columns = list(rows[0])
        head = "".join(f"<th>{c}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{row[c]}</td>" for c in columns) + "</tr>" for row in rows)
        self.results.value = f"<table class='results'><tr>{head}</tr>{body}</table>"

    def export(self, fmt: str) -> Path:
        path = self.store.export(self.store.root / f"export.{fmt}")
        self.exported.value = f"Exported to <code>{path}</code>"
        self._say(f"Exported {fmt.upper()}.")
        return path
