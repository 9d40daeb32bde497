"""Same numbers on every rebuild: a seeded training run, repeated in separate processes, writes byte-identical
checkpoints and metrics (DVC hashes stay put); measured durations go to timings.json only."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch

from xaiimg.models.zoo import read_checkpoint, write_checkpoint


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.name != "timings.json"}


def test_synthetic_run_retrained_in_two_processes_is_byte_identical(tmp_path):
    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        subprocess.run([sys.executable, "-m", "xaiimg.cli", "train-synthetic", "--out", str(out), "--seed", "0",
                        "--models", "cnn", "vit", "--size", "48", "--train-size", "48", "--epochs", "1",
                        "--test-size", "16", "--threads", "1"], check=True, capture_output=True, text=True)
        runs.append(out)
    assert digests(runs[0]) == digests(runs[1]) and set(digests(runs[0])) == {"cnn.pt", "metrics.json", "vit.pt"}
    timings = json.loads((runs[0] / "timings.json").read_text())
    assert set(timings) == {"cnn", "vit"} and timings["cnn"]["train_seconds"] > 0
    assert not any(key.endswith("_seconds") for model in json.loads((runs[0] / "metrics.json").read_text()).values()
                   for key in model)


def test_write_checkpoint_is_byte_reproducible_and_reads_back(tmp_path):
    state = {"state_dict": {"weight": torch.arange(12.0).reshape(3, 4)}, "config": {"kind": "cnn"}}
    first, second = write_checkpoint(state, tmp_path / "a.pt"), write_checkpoint(state, tmp_path / "b.pt")
    assert first.read_bytes() == second.read_bytes()
    other = write_checkpoint({**state, "config": {"kind": "vit"}}, tmp_path / "c.pt")
    assert other.read_bytes() != first.read_bytes()
    loaded = read_checkpoint(first)
    assert torch.equal(loaded["state_dict"]["weight"], state["state_dict"]["weight"]) and loaded["config"] == {
        "kind": "cnn"}
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    torch.save(state, tmp_path / "plain2.pt")
    assert plain.read_bytes() != (tmp_path / "plain2.pt").read_bytes()   # what write_checkpoint fixes
