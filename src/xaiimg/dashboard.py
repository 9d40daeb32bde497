"""Interactive comparison dashboard (thesis ch.5) in ipywidgets; serve it as a web page with Voila::

    voila notebooks/07_comparison_dashboard.ipynb

Model picker (zoo or user checkpoint), image (sample or upload), top-5 classes, per-method parameter panels,
maps side by side with an enhancement toggle, top-k% saliency segmentation, an experiment runner with a progress
bar, the results table and CSV/JSON/figure export. Every action reports its state in the status line; long jobs
update a progress bar while they run.

Safe to serve to colleagues: an upload is decoded as an image before anything is written and stored under a name
made from its content hash and its decoded format (the client's file name never reaches the file system and is
shown only as escaped text); every HTML fragment escapes its text; folders and checkpoints typed into the page must
lie under ``files_root``; exports go to ``export_dir``, never into the results store.
"""
from __future__ import annotations

import hashlib
import html
import io
import json
import math
import re
import time
import traceback
from pathlib import Path
from typing import Any

import ipywidgets as w
import torch
from PIL import Image

from xaiimg.compare import (
    EXPERIMENT_METRICS,
    Experiment,
    explain_methods,
    method_parameters,
    open_model,
    run_experiment,
)
from xaiimg.data import ImageFolder, decode_image, sample_images, sample_names
from xaiimg.methods import available_methods
from xaiimg.metrics import PROTOCOLS as INSERTION_DELETION_PROTOCOLS
from xaiimg.models import available_models, top_k
from xaiimg.report import ResultsStore, RunRecord, write_atomic
from xaiimg.viz import method_grid, saliency_segment, save_figure

CHECKPOINT = "user checkpoint…"
HIDDEN_METHODS = {"sliding-window"}
UPLOAD_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "WEBP": ".webp",
                     "PPM": ".ppm"}
MAX_UPLOAD_BYTES = 16 * 2**20
DISPLAY_NAME_LENGTH = 80
TABLE_DIGITS = 3


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


def display_name(name: Any) -> str:
    """A client-supplied file name as display text: its last path component (``/`` or ``\\``), printable
    characters only, at most ``DISPLAY_NAME_LENGTH`` of them. Still escaped wherever it is shown as HTML."""
    base = re.split(r"[\\/]", str(name))[-1]
    return "".join(ch for ch in base if ch.isprintable())[:DISPLAY_NAME_LENGTH] or "upload"


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in ``root`` once both are resolved (symbolic links and ``..`` followed)."""
    return path.resolve().is_relative_to(root.resolve())


def store_upload(store: ResultsStore, content: bytes, name: str) -> tuple[Path, Image.Image]:
    """Keep an uploaded image in ``<store>/uploads/<sha256 of the bytes><extension of the decoded format>``.

    The bytes are size-checked and decoded (format whitelist, decompression-bomb limit) before anything is
    written; the client's ``name`` is used in messages only. Returns the stored path and the RGB image.
    """
    shown = display_name(name)
    if not content:
        raise ValueError(f"upload {shown!r} is empty")
    if len(content) > MAX_UPLOAD_BYTES:
        raise ValueError(f"upload {shown!r} has {len(content):,} bytes; the limit is {MAX_UPLOAD_BYTES:,}")
    image, image_format = decode_image(content, label=f"upload {shown!r}")
    extension = UPLOAD_EXTENSIONS.get(image_format)
    if extension is None:
        raise ValueError(f"upload {shown!r} is a {image_format or 'unknown'} image; accepted formats: "
                         f"{', '.join(UPLOAD_EXTENSIONS)}")
    folder = store.root / "uploads"
    if folder.exists() and not inside(folder, store.root):
        raise ValueError(f"{folder} leads outside the results store; refusing to write there")
    path = folder / f"{hashlib.sha256(content).hexdigest()}{extension}"
    if not path.is_file():
        write_atomic(path, content)
    return path, image


def _cell_text(value: Any) -> str:
    """A results-table cell: floats rounded to ``TABLE_DIGITS`` places, everything else as text."""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.{TABLE_DIGITS}f}"
    return str(value)


def results_table_html(rows: list[dict[str, Any]], unreadable: list[tuple[str, str]]) -> str:
    """The stored runs as an escaped HTML table that scrolls sideways inside the page, and the files of the
    store that are not readable run records, by name and reason."""
    parts = []
    if rows:
        columns = list(rows[0])
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell_text(row[c]))}</td>" for c in columns) + "</tr>"
                       for row in rows)
        parts.append("<div style='overflow-x:auto;max-width:100%'><table class='results' style='font-size:11px;"
                     f"white-space:nowrap'><tr>{head}</tr>{body}</table></div>")
    else:
        parts.append("<i>No stored results yet.</i>")
    if unreadable:
        items = "".join(f"<li><code>{html.escape(name)}</code>: {html.escape(reason)}</li>"
                        for name, reason in unreadable)
        parts.append(f"<p style='color:#b00'>unreadable: {len(unreadable)}</p><ul>{items}</ul>")
    return "".join(parts)


class ComparisonDashboard:
    """Build with ``ComparisonDashboard(store_dir)``; display ``.widget`` in Jupyter or Voila.

    ``files_root``: folders of images and checkpoint files typed into the page must lie under it (default: the
    current folder). ``export_dir``: where exported tables and figures go (default: ``exports`` beside the store).
    """

    def __init__(self, store_dir: str | Path = "../artifacts/runs", default_model: str = "efficientnet_lite0",
                 default_methods: tuple[str, ...] = ("grad-cam",), files_root: str | Path = ".",
                 export_dir: str | Path | None = None):
        self.store = ResultsStore(store_dir)
        self.files_root = Path(files_root).resolve()
        self.export_dir = Path(export_dir) if export_dir is not None else self.store.root.parent / "exports"
        if inside(self.export_dir, self.store.root):
            raise ValueError(f"export folder {self.export_dir} is inside the results store {self.store.root}; "
                             "choose a folder outside it")
        self.model = None
        self.x = None
        self.image01 = None
        self._pil: Image.Image | None = None
        self._image_name = ""
        self.maps: dict[str, torch.Tensor] = {}
        self._maps_target = 0
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
        self.protocol = w.Dropdown(options=list(INSERTION_DELETION_PROTOCOLS), value="rise", description="Protocol",
                                   tooltip="insertion/deletion preset (PROTOCOLS.md)")
        self.experiment_button = w.Button(description="Run experiment")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="Progress")
        self.results = w.HTML()
        self.export_csv = w.Button(description="Export CSV")
        self.export_json = w.Button(description="Export JSON")
        self.export_maps = w.Button(description="Export figure")
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
        self.export_maps.on_click(lambda _: self._guard(self.export_figure))

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
            w.HBox([self.export_csv, self.export_json, self.export_maps, self.exported]),
        ])
        self._refresh_parameter_panels()
        self._show_results()

    # ---------------------------------------------------------------------------------------- actions
    def _guard(self, action) -> None:
        """Run a UI action, reporting errors in the status line instead of losing them in the kernel log."""
        try:
            action()
        except Exception as error:  # shown to the user; the full trace goes to the log
            self.status.value = (f"<span style='color:#b00'>Error: {html.escape(type(error).__name__)}: "
                                 f"{html.escape(str(error))}</span>")
            traceback.print_exc()

    def _say(self, text: str) -> None:
        """Show plain ``text`` (escaped) in the status line."""
        self.status.value = html.escape(text)

    def _under_files_root(self, text: str, what: str) -> Path:
        """A server path typed into the page, refused unless it lies under ``files_root``."""
        path = Path(text.strip())
        path = path if path.is_absolute() else self.files_root / path
        if not text.strip() or not inside(path, self.files_root):
            raise ValueError(f"{what} must be a path under {self.files_root}, got {text.strip()!r}")
        return path.resolve()

    def _class_name(self, index: int) -> str:
        names = self.model.spec.class_names if self.model is not None else []
        return f"{names[index]} ({index})" if 0 <= index < len(names) else f"class {index}"

    def load_model(self) -> None:
        self._say("Loading model…")
        if self.model_name.value == CHECKPOINT:
            checkpoint = self._under_files_root(self.checkpoint.value, "the checkpoint")
            self.model = open_model(arch=self.arch.value.strip(), checkpoint=checkpoint)
        else:
            self.model = open_model(self.model_name.value)
        self._refresh_parameter_panels()
        self._say(f"Loaded {self.model.spec.name}.")
        if self._pil is None:
            self.set_image_from_sample()
        else:
            self._set_image(self._pil, self._image_name)

    def set_image_from_sample(self) -> None:
        self._set_image(sample_images([self.sample.value])[0], f"sample:{self.sample.value}")

    def set_image_from_upload(self) -> None:
        """Validate the uploaded file and keep it in the store (:func:`store_upload`), then show it."""
        files = self.upload.value
        if files:
            path, image = store_upload(self.store, bytes(files[0]["content"]), files[0]["name"])
            self._set_image(image, f"upload:{path.name} ({display_name(files[0]['name'])})")

    def _set_image(self, image: Image.Image, name: str) -> None:
        """Make ``image`` the current one (loading the model first if none is loaded) and show its top-5."""
        self._pil, self._image_name = image, name
        if self.model is None:
            self.load_model()
            return
        self.x = self.model.preprocess(image)
        self.image01 = self.model.spec.to_unit_range(self.x).clamp(0, 1)
        self.image_view.value = _png(self.image01[0])
        ranked = top_k(self.model, self.x, k=5)[0]
        self.top5.value = "<b>Top-5</b><table>" + "".join(
            f"<tr><td>{index}</td><td>{html.escape(name)}</td><td>{p:.3f}</td></tr>"
            for index, name, p in ranked) + "</table>"
        self.target.options = [(f"{name} ({index})", index) for index, name, _ in ranked]
        self.target.value = ranked[0][0]
        self._say(f"Image ready ({name}); predicted: {ranked[0][1]}.")

    def _refresh_parameter_panels(self) -> None:
        panels = []
        for method in self.methods.value:
            widgets = {}
            for name, default in method_parameters(method).items():
                if name == "layer" and default is None and self.model is not None:
                    default = self.model.spec.default_layer
                widgets[name] = (w.Text(value="" if default is None else str(default), description=name), default)
            self._param_widgets[method] = widgets
            panels.append(w.VBox([w.HTML(f"<i>{html.escape(method)}</i>")] + [text for text, _ in widgets.values()]))
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
        self._maps_target = self.target.value
        self.maps_box.children = [w.VBox([w.HTML(f"<b>{html.escape(label)}</b>"),
                                          w.Image(value=self._map_png(label, m), format="png", width=260)])
                                  for label, m in self.maps.items()]
        seconds = sum(result.seconds.values())
        self.store.add(RunRecord(kind="explain", method=", ".join(self.maps), model=self.model.spec.name,
                                 data=self._image_name, parameters={"methods": chosen, "target": self.target.value,
                                                                    "enhance": self.enhance.value},
                                 metrics={f"seconds[{m}]": t for m, t in result.seconds.items()}))
        self._show_results()
        self.show_segments()
        self._say(f"Generated {len(self.maps)} map(s) in {seconds:.1f} s.")

    def _maps_figure(self, maps: dict[str, torch.Tensor], cell_size: float):
        """The current image's maps side by side, each titled with its method and class, with a colourbar."""
        class_name = self._class_name(self._maps_target)
        return method_grid(self.image01[:1], {label: m[:1] for label, m in maps.items()},
                           titles=[f"{label}\n{class_name}" for label in maps], show_image=False, colorbar=True,
                           cell_size=cell_size)

    def _map_png(self, label: str, saliency: torch.Tensor) -> bytes:
        buffer = io.BytesIO()
        self._maps_figure({label: saliency}, cell_size=2.4).savefig(buffer, format="png", dpi=80)
        return buffer.getvalue()

    def show_segments(self) -> None:
        self.segments_box.children = [
            w.VBox([w.HTML(f"<b>{html.escape(label)}: top {self.percent.value}%</b>"),
                    w.Image(value=_png(saliency_segment(self.image01, m, self.percent.value)[0][0]), format="png",
                            width=224)])
            for label, m in self.maps.items()]

    def experiment(self) -> None:
        folder = ImageFolder(self._under_files_root(self.folder.value, "the image folder"))
        paths = [item.path for item in folder.items][: max(1, self.limit.value)]
        if not self.methods.value:
            raise ValueError("choose at least one method")
        if self.model is None:
            self.load_model()
        for method in self.methods.value:
            self.progress.max, self.progress.value = len(paths), 0
            self._say(f"Running {self.metric.value} for {method} on {len(paths)} image(s)…")

            def advance(done, total):
                self.progress.value = done

            options = {"protocol": self.protocol.value} if self.metric.value == "insertion-deletion" else {}
            run_experiment(self.model, paths, Experiment(method, self.metric.value, self._method_params(method),
                                                         options, self.enhance.value),
                           data_name=str(folder.root), store=self.store, progress=advance)
        self._show_results()
        self._say("Experiment finished; results stored.")

    def _show_results(self) -> None:
        contents = self.store.scan()
        self.results.value = results_table_html(self.store.flat_rows(contents.records), contents.unreadable)

    def _exported(self, paths: list[Path], what: str) -> None:
        self.exported.value = "Exported to " + ", ".join(f"<code>{html.escape(str(p.resolve()))}</code>"
                                                         for p in paths)
        self._say(f"Exported {what}.")

    def export(self, fmt: str) -> Path:
        """Every stored run as ``results.csv`` (flat rows) or ``results.json`` (full records) in ``export_dir``."""
        path = self.store.export(self.export_dir / f"results.{fmt}")
        self._exported([path], fmt.upper())
        return path

    def export_figure(self) -> list[Path]:
        """The current maps (titled with method and class, with a colourbar) as PNG and PDF in ``export_dir``."""
        if not self.maps:
            raise ValueError("generate maps before exporting them")
        stem = self.export_dir / time.strftime("maps-%Y%m%d-%H%M%S")
        paths = save_figure(self._maps_figure(self.maps, cell_size=2.2), stem, formats=("png", "pdf"))
        self._exported(paths, "figure")
        return paths
