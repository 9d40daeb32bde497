"""The dashboard served to colleagues: hostile upload names and contents, HTML in every text it shows, server paths
typed into the page, exports kept out of the results store, and an upload chosen before the model is loaded."""
from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from xaiimg.dashboard import MAX_UPLOAD_BYTES, ComparisonDashboard, display_name, results_table_html

HOSTILE_HTML = "<img src=x onerror=console.error(1)>.jpg"


def _png_bytes(size=(40, 30), colour=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(app: ComparisonDashboard, name: str, content: bytes) -> None:
    app.upload.value = ({"name": name, "type": "image/png", "size": len(content), "content": memoryview(content),
                         "last_modified": datetime.now(UTC)},)


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: relative path -> (size, mtime_ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def world(tmp_path):
    """A results store two folders down, with a victim file beside it and one above it."""
    store = tmp_path / "project" / "runs"
    store.mkdir(parents=True)
    (tmp_path / "victim.txt").write_text("precious")
    (tmp_path / "project" / "victim.txt").write_text("precious")
    return tmp_path, store


class _NoModel(Exception):
    pass


@pytest.fixture
def app_without_model(world, monkeypatch):
    """A dashboard whose model loading raises: proves rejections happen before any model pass."""
    _, store = world
    app = ComparisonDashboard(store)

    def refuse():
        raise _NoModel("the model must not be loaded for a rejected upload")

    monkeypatch.setattr(app, "load_model", refuse)
    return app


@pytest.mark.parametrize("name", ["../../victim.txt", "../../../../../../tmp/owned.png", "/etc/passwd",
                                  "..\\..\\victim.txt", "sub/dir/../../x.png"])
def test_traversal_names_with_non_image_bytes_write_nothing(world, app_without_model, name):
    root, store = world
    before = _tree(root)
    _upload(app_without_model, name, b"owned")
    assert "Error" in app_without_model.status.value and "not a readable image" in app_without_model.status.value
    assert _tree(root) == before and not Path("/tmp/owned.png").exists()


@pytest.mark.parametrize("name", ["../../victim.txt", "/etc/passwd", "..\\..\\victim.png", HOSTILE_HTML])
def test_image_uploads_are_stored_by_content_hash_inside_the_store(world, name, monkeypatch):
    root, store = world
    app = ComparisonDashboard(store)
    shown = []
    monkeypatch.setattr(app, "_set_image", lambda image, label: shown.append((image.size, label)))
    before = _tree(root)
    content = _png_bytes()
    _upload(app, name, content)
    after = _tree(root)
    new = sorted(set(after) - set(before))
    assert len(new) == 1 and {k: v for k, v in after.items() if k in before} == before
    stored = root / new[0]
    assert stored.parent == store / "uploads" and stored.read_bytes() == content
    assert len(stored.stem) == 64 and stored.suffix == ".png"
    assert shown == [((40, 30), f"upload:{stored.name} ({display_name(name)})")]
    _upload(app, name, content)                        # the same bytes again: the same file, nothing new
    assert _tree(root) == after


def test_display_name_keeps_only_the_last_component_and_printable_text():
    assert display_name("../../victim.txt") == "victim.txt"
    assert display_name("..\\..\\victim.txt") == "victim.txt"
    assert display_name("a\x00b\nc.png") == "abc.png"
    assert display_name("../") == "upload" and len(display_name("x" * 500)) == 80


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (_png_bytes(size=(200, 200))[:-40], "corrupt or truncated"),
    (b"%PDF-1.4 not an image", "not a readable image"),
])
def test_bad_uploads_are_refused_before_anything_is_written(world, app_without_model, content, message):
    root, _ = world
    before = _tree(root)
    _upload(app_without_model, "photo.png", content)
    assert message in app_without_model.status.value
    assert _tree(root) == before


def test_oversized_upload_is_refused_before_decoding(world, app_without_model, monkeypatch):
    root, _ = world
    decoded = []
    monkeypatch.setattr("xaiimg.dashboard.decode_image", lambda *a, **k: decoded.append(1))
    before = _tree(root)
    _upload(app_without_model, "big.png", b"\x89PNG" + b"\x00" * MAX_UPLOAD_BYTES)
    assert "the limit is" in app_without_model.status.value and decoded == []
    assert _tree(root) == before


def test_decompression_bomb_is_refused(world, app_without_model):
    root, _ = world
    buffer = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, format="PNG")     # 144 Mpx in a few kB
    before = _tree(root)
    _upload(app_without_model, "bomb.png", buffer.getvalue())
    assert "too large to load safely" in app_without_model.status.value
    assert _tree(root) == before


def test_an_unlisted_format_is_refused(world, app_without_model):
    root, _ = world
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="ICO")
    before = _tree(root)
    _upload(app_without_model, "icon.ico", buffer.getvalue())
    assert "accepted formats" in app_without_model.status.value
    assert _tree(root) == before


def test_status_line_escapes_error_text(world, app_without_model):
    _upload(app_without_model, HOSTILE_HTML, b"not an image")
    status = app_without_model.status.value
    assert "<img" not in status and "&lt;img src=x onerror=console.error(1)&gt;.jpg" in status


def test_results_table_escapes_and_rounds_every_cell():
    rows = [{"method": HOSTILE_HTML, "data": "<script>alert(1)</script>", "metric.auc": 0.123456789}]
    table = results_table_html(rows, [("<b>bad</b>.json", "not JSON")])
    assert "<img" not in table and "<script>" not in table and "<b>bad" not in table
    assert "&lt;script&gt;" in table and "0.123<" in table and "0.1234" not in table
    assert "unreadable: 1" in table and "overflow-x:auto" in table


def test_a_stored_hostile_record_is_shown_escaped_in_a_later_session(world):
    _, store = world
    from xaiimg.report import ResultsStore, RunRecord

    ResultsStore(store).add(RunRecord("explain", HOSTILE_HTML, "m", f"upload:{HOSTILE_HTML}", {}, {"seconds": 1.0},
                                      versions={}))
    app = ComparisonDashboard(store)
    assert "<img" not in app.results.value and "&lt;img" in app.results.value


def test_a_poisoned_store_still_shows_its_good_records(world):
    root, store = world
    from xaiimg.report import ResultsStore, RunRecord

    ResultsStore(store).add(RunRecord("explain", "grad-cam", "m", "sample:coffee", {}, {"seconds": 1.0}, versions={}))
    (store / "export.json").write_text(json.dumps([{"kind": "x"}]))
    (store / "records" / "broken.json").write_text("{not json")
    app = ComparisonDashboard(store)
    assert "grad-cam" in app.results.value and "unreadable: 2" in app.results.value
    assert "export.json" in app.results.value and "broken.json" in app.results.value


def test_exports_never_go_inside_the_store(world):
    root, store = world
    with pytest.raises(ValueError, match="inside the results store"):
        ComparisonDashboard(store, export_dir=store / "exports")
    app = ComparisonDashboard(store)
    assert not app.export_dir.resolve().is_relative_to(store.resolve())


def test_typed_folders_and_checkpoints_must_lie_under_files_root(world, monkeypatch):
    root, store = world
    app = ComparisonDashboard(store, files_root=root / "project")
    monkeypatch.setattr(app, "load_model", lambda: (_ for _ in ()).throw(_NoModel("must not load")))
    app.folder.value = "../"
    app._guard(app.experiment)
    assert "must be a path under" in app.status.value
    with pytest.raises(ValueError, match="must be a path under"):
        app._under_files_root("../victim.txt", "the image folder")
    with pytest.raises(ValueError, match="must be a path under"):
        app._under_files_root(str(root / "victim.txt"), "the checkpoint")
    assert app._under_files_root("runs", "the image folder") == store.resolve()


def test_upload_before_load_model_explains_the_upload(world, lite0, monkeypatch):
    """Defect 3: choosing an upload first loads the model and keeps the upload (not the sample image)."""
    _, store = world
    monkeypatch.setattr("xaiimg.dashboard.open_model", lambda *args, **kwargs: lite0)
    app = ComparisonDashboard(store)
    content = _png_bytes(size=(64, 64), colour=(240, 240, 20))
    _upload(app, "yellow.png", content)
    assert app.model is lite0 and "upload:" in app.status.value and "yellow.png" in app.status.value
    assert "sample" not in app.status.value
    expected = lite0.preprocess(Image.open(io.BytesIO(content)).convert("RGB"))
    assert (app.x == expected).all()
    app.methods.value = ("grad-cam",)
    app.generate()
    record = ComparisonDashboard(store).store.records()[-1]
    assert record.data.startswith("upload:") and record.data.endswith("(yellow.png)")
