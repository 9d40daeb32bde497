"""Sharded, resumable per-image evaluation (xaiimg.studies.sharded): two gloo processes under torchrun write the
tables one process writes, byte for byte, on the synthetic benchmark and on the labelled ImageNet sample folder; a
run killed mid-way (SIGKILL) resumes to the same tables; damaged or cut-short lines are never read back."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from xaiimg.studies import sharded as sh

TORCHRUN = Path(sys.executable).with_name("torchrun")
TABLES = ("table.csv", "table.json", "table.tex", "per_image.csv")
SIZE = 32


def tiny_checkpoint(path: Path, class_names: list[str]) -> Path:
    """An untrained synthetic CNN at 32 px (weights seeded): enough to exercise every path in seconds."""
    from xaiimg.models.synthetic import build_synthetic_model, save_checkpoint

    model = build_synthetic_model("cnn", class_names, size=SIZE, seed=0)
    return save_checkpoint(model, {"kind": "cnn", "size": SIZE, "class_names": class_names}, {}, path)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {"synthetic": tiny_checkpoint(folder / "synthetic.pt", ["disc", "square", "triangle", "cross", "ring",
                                                                      "star"]),
            "imagenet": tiny_checkpoint(folder / "imagenet.pt", [f"class {i}" for i in range(1000)])}


def synthetic_args(model: Path) -> list[str]:
    """12 synthetic scenes in blocks of 2, two methods, a faithfulness and a localisation metric."""
    return ["--data", "synthetic", "--count", "12", "--synthetic-size", str(SIZE), "--synthetic-model", str(model),
            "--method", "grad-cam", "--method", "gradient", "--metric", "insertion-deletion",
            "--metric-param", "insertion-deletion.protocol=thesis", "--metric", "energy-pointing-game",
            "--batch-size", "2"]


def imagenet_args(model: Path, samples: Path) -> list[str]:
    """The first 3 labelled sample photos, explained and scored for their label, two metrics sharing 'overall'."""
    return ["--data", "imagenet", "--root", str(samples / "images"), "--labels", str(samples / "labels.csv"),
            "--count", "3", "--synthetic-model", str(model), "--method", "grad-cam", "--target", "label",
            "--metric", "insertion-deletion", "--metric", "positive-negative-perturbation"]


def evaluation(args: list[str]) -> sh.Evaluation:
    return sh.evaluation_from_args(sh.build_parser().parse_args(["evaluate-sharded", "--out", "unused", *args]))


def single_process(out: Path, args: list[str]) -> Path:
    """The reference: one process (world size 1), then the merge."""
    sh.evaluate_shard(out, evaluation(args))
    sh.merge_shards(out, resamples=1000)
    return out


def same_tables(a: Path, b: Path) -> bool:
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in TABLES)


@pytest.fixture(scope="module")
def synthetic_reference(models, tmp_path_factory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)           # as torchrun's workers (OMP_NUM_THREADS=1) and the subprocesses here
    try:
        return single_process(tmp_path_factory.mktemp("reference"), synthetic_args(models["synthetic"]))
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------- split
@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_blocks_cover_every_image_once_and_do_not_depend_on_the_world_size(batch_size):
    reference = sh.split_blocks(11, batch_size, 0, 1)
    for world in (1, 2, 3, 5):
        blocks = [block for rank in range(world) for block in sh.split_blocks(11, batch_size, rank, world)]
        assert sorted(p for block in blocks for p in block) == list(range(11))
        assert sorted(blocks) == reference                      # the same batches in every layout
    assert sh.split_blocks(5, 1, 1, 2) == [[1], [3]]            # rank::world_size over images
    with pytest.raises(ValueError, match="rank"):
        sh.split_blocks(5, 1, 2, 2)


def test_rank_comes_from_the_launcher_and_a_contradicting_pair_is_refused(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert sh.shard_position() == (0, 1) and sh.shard_position(2, 3) == (2, 3)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert sh.shard_position() == (1, 2)
    with pytest.raises(ValueError, match="contradict"):
        sh.shard_position(0, 2)


# --------------------------------------------------------------------------------------------- records
def test_checksummed_lines_round_trip_and_damage_is_detected(tmp_path):
    entry = {"kind": "record", "scores": {"m": {"a": 0.1 + 0.2, "b": float("nan")}}, "label": None}
    line = sh.checksummed_line(entry)
    back = sh.parse_line(line[:-1])
    assert back["scores"]["m"]["a"] == 0.1 + 0.2 and back["label"] is None      # floats exact (repr)
    with pytest.raises(ValueError, match="checksum"):
        sh.parse_line(line[:-1].replace(b"0.30000000000000004", b"0.40000000000000004"))
    with pytest.raises(ValueError, match="JSON"):
        sh.parse_line(line[: len(line) // 2])
    header = sh.checksummed_line({"kind": "header", "run": "r", "identity": {}})
    record = sh.checksummed_line({"kind": "record", "run": "r", "position": 0, "method": "m", "scores": {}})
    (tmp_path / "s.jsonl").write_bytes(header + record + record[:20])
    shard = sh.read_shard(tmp_path / "s.jsonl")
    assert shard.header["run"] == "r" and len(shard.records) == 1
    assert shard.problems == [(3, "cut short (20 bytes without a newline)")]


# --------------------------------------------------------------------------------- torchrun, 2 x gloo
TWO_RUNS = """
import sys
import torch.distributed as dist
from xaiimg.studies.sharded import main
# One torchrun launch for two evaluations (saves starting two more interpreters): main() uses this process group.
dist.init_process_group("gloo")
for argv in ({synthetic!r}, {imagenet!r}):
    if main(argv):
        sys.exit(1)
dist.destroy_process_group()
"""


def run_in_own_group(command: list[str], timeout: float, **options) -> subprocess.CompletedProcess:
    """``subprocess.run`` whose timeout kills the whole process group (torchrun's workers too)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, **options)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.slow
def test_two_gloo_processes_under_torchrun_write_the_single_process_tables(models, synthetic_reference, shared_data,
                                                                          tmp_path):
    samples = shared_data / "imagenet-samples"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        imagenet_reference = single_process(tmp_path / "imagenet-1", imagenet_args(models["imagenet"], samples))
        rebuilt = single_process(tmp_path / "imagenet-rebuilt", imagenet_args(models["imagenet"], samples))
    finally:
        torch.set_num_threads(threads)
    common = ["--threads", "1", "--resamples", "1000"]
    script = tmp_path / "two_runs.py"
    script.write_text(TWO_RUNS.format(
        synthetic=["evaluate-sharded", "--out", str(tmp_path / "synthetic-2"), *synthetic_args(models["synthetic"]),
                   *common],
        imagenet=["evaluate-sharded", "--out", str(tmp_path / "imagenet-2"),
                  *imagenet_args(models["imagenet"], samples), *common]))
    done = run_in_own_group([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(script)], timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for reference, name in ((synthetic_reference, "synthetic-2"), (imagenet_reference, "imagenet-2")):
        assert sorted(p.name for p in sh.shard_files(tmp_path / name)) == ["shard-0-of-2.jsonl", "shard-1-of-2.jsonl"]
        assert all(sh.read_shard(p).records for p in sh.shard_files(tmp_path / name))   # both ranks did work
        assert same_tables(reference, tmp_path / name), name
    # No clock reading in a shard (the seconds go to timings/): a rebuild writes the same bytes, DVC the same hash.
    assert sh.shard_path(rebuilt, 0, 1).read_bytes() == sh.shard_path(imagenet_reference, 0, 1).read_bytes()
    timings = json.loads((tmp_path / "synthetic-2" / "timings.json").read_text())
    assert {m: t["images"] for m, t in timings.items()} == {"grad-cam": 12, "gradient": 12}
    per_image = (imagenet_reference / "per_image.csv").read_text().splitlines()
    assert per_image[0].startswith("image,position,label,target,method,insertion_auc,deletion_auc,"
                                   "insertion-deletion:overall,positive_auc,negative_auc,"
                                   "positive-negative-perturbation:overall")
    assert per_image[1].startswith("ILSVRC2012_val_00000001.JPEG,0,65,65,grad-cam,")


def test_records_are_the_library_s_own_numbers(models, synthetic_reference):
    """A record is what explain + metric give for its block, called directly."""
    from xaiimg.methods import get_method
    from xaiimg.metrics import energy_pointing_game, insertion_deletion
    from xaiimg.models.synthetic import load_synthetic_model

    plan = sh.prepare(evaluation(synthetic_args(models["synthetic"])))
    x, _label, mask = zip(*(plan.source.load(i, plan.model.spec) for i in (2, 3)))
    x, masks = torch.stack(x), torch.stack(mask)
    model = load_synthetic_model(models["synthetic"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        targets = model(x).argmax(1)
        maps = get_method("grad-cam")(model, x, target=targets)
        faithfulness = insertion_deletion(model, x, maps, target=targets, protocol="thesis")
        energy = energy_pointing_game(maps, masks)
    finally:
        torch.set_num_threads(threads)
    rows = [line.split(",") for line in (synthetic_reference / "per_image.csv").read_text().splitlines()]
    header, rows = rows[0], [dict(zip(rows[0], row)) for row in rows[1:]]
    assert header[5:] == ["insertion_auc", "deletion_auc", "overall", "energy_inside"]
    ours = [row for row in rows if row["method"] == "grad-cam" and row["position"] in ("2", "3")]
    assert [float(row["insertion_auc"]) for row in ours] == faithfulness.insertion_auc.tolist()
    assert [float(row["energy_inside"]) for row in ours] == energy.energy_inside.tolist()
    assert [int(row["target"]) for row in ours] == targets.tolist()


# ------------------------------------------------------------------------------------------ kill, resume
def record_lines(path: Path) -> int:
    return max(0, path.read_bytes().count(b"\n") - 1) if path.exists() else 0


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_to_the_same_tables(models, synthetic_reference, tmp_path, one_thread):
    out = tmp_path / "run"
    shard = sh.shard_path(out, 0, 1)
    total = 12 * 2
    process = subprocess.Popen(
        [sys.executable, "-m", "xaiimg.cli", "evaluate-sharded", "--out", str(out),
         *synthetic_args(models["synthetic"]), "--threads", "1", "--no-merge"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while record_lines(shard) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    kept = record_lines(shard)
    assert 2 <= kept < total, f"the run was not killed mid-way ({kept} of {total} records)"
    with pytest.raises(sh.IncompleteRunError, match=f"{total - kept} of {total}"):
        sh.merge_shards(out)

    # A crash while writing leaves a line cut short, and a disk may damage one: neither may be read back.
    lines = shard.read_bytes().splitlines(keepends=True)
    damaged = lines[1].replace(b'"insertion_auc":0.', b'"insertion_auc":1.', 1)
    assert damaged != lines[1]
    shard.write_bytes(b"".join([lines[0], damaged, *lines[2:]]) + lines[-1][:40])
    assert [reason for _n, reason in sh.read_shard(shard).problems] == [
        "checksum mismatch (damaged)", "cut short (40 bytes without a newline)"]
    with pytest.warns(sh.CorruptRecordWarning) as caught:   # keep: the sources may not change in between here
        summary = sh.evaluate_shard(out, evaluation(synthetic_args(models["synthetic"])), code_change="keep")
    named = [str(w.message) for w in caught]
    assert any(f"{shard}:2: checksum mismatch" in m for m in named)
    assert any(f"{shard}:{len(lines) + 1}: cut short" in m for m in named)
    assert summary.computed == total - kept + 1 and summary.skipped == kept - 1
    assert not sh.read_shard(shard).problems and len(sh.read_shard(shard).records) == total
    sh.merge_shards(out, resamples=1000)
    assert same_tables(synthetic_reference, out)

    # Idempotent: run again, nothing is computed and the tables stay the same.
    again = sh.evaluate_shard(out, evaluation(synthetic_args(models["synthetic"])), code_change="keep")
    assert (again.computed, again.skipped) == (0, total)


def test_records_of_other_sources_are_computed_again_or_kept(models, synthetic_reference, tmp_path, one_thread):
    out = tmp_path / "run"
    shutil.copytree(synthetic_reference / "shards", out / "shards")
    shard = sh.shard_path(out, 0, 1)
    header, first, *rest = (sh.parse_line(line) for line in shard.read_bytes().splitlines())
    first["code"] = "0" * 16                                 # as if an older xaiimg had computed it
    shard.write_bytes(b"".join(map(sh.checksummed_line, [header, first, *rest])))
    with pytest.warns(UserWarning, match="records computed by other xaiimg sources: 1; kept"):
        kept = sh.evaluate_shard(out, evaluation(synthetic_args(models["synthetic"])), code_change="keep")
    assert kept.computed == 0
    with pytest.warns(UserWarning, match="records computed by other xaiimg sources: 1; computed again"):
        again = sh.evaluate_shard(out, evaluation(synthetic_args(models["synthetic"])))
    assert again.computed == 1 and all(r["code"] == sh.code_digest() for r in sh.read_shard(shard).records)
    sh.merge_shards(out, resamples=1000)
    assert same_tables(synthetic_reference, out)


def test_another_evaluation_in_the_same_folder_is_refused(models, synthetic_reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(synthetic_reference / "shards", out / "shards")
    other = [*synthetic_args(models["synthetic"])[:-2], "--batch-size", "3"]
    with pytest.raises(sh.RunMismatchError, match="batch_size"):
        sh.evaluate_shard(out, evaluation(other))
    with pytest.raises(sh.RunMismatchError, match="autocast: 'bfloat16' here vs None there"):
        sh.evaluate_shard(out, evaluation([*synthetic_args(models["synthetic"]), "--autocast", "bfloat16"]))
    # A shard of a second world size holding the same records merges to the same tables (duplicates agree).
    shutil.copy(out / "shards" / "shard-0-of-1.jsonl", out / "shards" / "shard-0-of-2.jsonl")
    sh.merge_shards(out, resamples=1000)
    assert same_tables(synthetic_reference, out)


def test_entry_point_help_and_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        sh.main(["--help"])
    assert exit_info.value.code == 0 and "evaluate" in capsys.readouterr().out
    assert sh.main(["merge-shards", "--out", str(tmp_path)]) == 2
    assert "no shard files" in capsys.readouterr().err
    assert sh.main(["evaluate-sharded", "--out", str(tmp_path), "--data", "synthetic", "--count", "2",
                    "--synthetic-model", "x.pt", "--method", "grad-cam", "--metric", "pointing-game"]) == 2
    assert "no per-image scores" in capsys.readouterr().err
