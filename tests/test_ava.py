"""AVA readers: AVA.txt rows (valid and malformed), the JSON test split, splits, the image dataset."""
from __future__ import annotations

import json

import pytest
import torch
from torchvision import transforms

from xaiimg.data.ava import (
    AVADataset,
    AVARecord,
    mean_score,
    read_ava_json,
    read_ava_txt,
    split_by_ids,
    vote_distribution,
)

VALID = ("1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396\n"
         "2 953958 10 7 15 26 26 21 10 0 0 0 0 0 1396   \n"   # trailing spaces, as in real files
         "\n"
         "3 954184 0 0 4 8 41 56 10 5 4 0 0 0 1396\n")


def write(tmp_path, text, name="AVA.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_valid_rows(tmp_path):
    records = read_ava_txt(write(tmp_path, VALID))
    assert [r.image_id for r in records] == ["953619", "953958", "954184"]
    first = records[0]
    assert first.index == 1 and first.semantic_tags == (1, 22) and first.challenge_id == 1396
    assert first.votes == (0, 1, 5, 17, 38, 36, 15, 6, 5, 1) and first.num_votes == 124
    assert torch.allclose(first.distribution.sum(), torch.tensor(1.0))
    second = records[1]                                              # 10*1+7*2+15*3+26*4+26*5+21*6+10*7 = 499
    assert second.mean_score == pytest.approx(499 / 115)


@pytest.mark.parametrize("bad_row,message", [
    ("4 954113 0 1 2 3 4 5 6 7 8 9 0 0", "expected 15 fields"),
    ("4 954113 0 1 2 3 4 5 6 7 8 x 0 0 1396", "must be an integer"),
    ("4 954113 0 1 2 3 -4 5 6 7 8 9 0 0 1396", "negative vote"),
    ("4 954113 0 0 0 0 0 0 0 0 0 0 0 0 1396", "no votes"),
    ("4 953958 0 1 2 3 4 5 6 7 8 9 0 0 1396", r"repeats .*AVA.txt:2"),
])
def test_rejects_malformed_rows_with_line_number(tmp_path, bad_row, message):
    path = write(tmp_path, VALID + bad_row + "\n")
    with pytest.raises(ValueError, match=message) as error:
        read_ava_txt(path)
    assert f"{path}:5" in str(error.value)                           # the blank line 3 still counts


def test_missing_or_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_ava_txt(tmp_path / "absent.txt")
    with pytest.raises(ValueError, match="no AVA rows"):
        read_ava_txt(write(tmp_path, "\n\n"))
    bad_json = write(tmp_path, json.dumps([{"image_id": "1", "label": [1, 2, 3]}]), "split.json")
    with pytest.raises(ValueError, match=r"split.json\[0\].*10 integer vote counts"):
        read_ava_json(bad_json)


def test_distribution_and_mean_score():
    votes = torch.tensor([[0, 0, 0, 0, 2, 2, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0, 0, 3]])
    distribution = vote_distribution(votes)
    assert torch.allclose(distribution.sum(1), torch.ones(2))
    assert torch.allclose(mean_score(distribution), torch.tensor([5.5, (1 + 30) / 4]))
    with pytest.raises(ValueError, match="sums to zero"):
        vote_distribution(torch.zeros(1, 10))
    with pytest.raises(ValueError, match="10 bins"):
        vote_distribution(torch.ones(1, 9))


def test_shared_label_files_and_standard_split(shared_data):
    subsets = shared_data / "ava-samples" / "ava_label_subsets"
    test = read_ava_json(subsets / "idealo_ava_labels_test.json")
    assert len(test) == 25_551
    assert test[0] == AVARecord(image_id="231893", votes=(2, 8, 19, 36, 76, 52, 16, 9, 3, 2))
    rows = read_ava_txt(subsets / "qiushiyang_small_test.txt")
    raw = [line.split() for line in (subsets / "qiushiyang_small_test.txt").read_text().splitlines() if line.strip()]
    assert len(rows) == len(raw) == 4_000
    assert rows[0].image_id == raw[0][1] and list(rows[0].votes) == [int(v) for v in raw[0][2:12]]
    train, held_out = split_by_ids(rows, (r.image_id for r in test))
    in_test = {r.image_id for r in test}
    assert len(held_out) == sum(fields[1] in in_test for fields in raw)
    assert len(held_out) == 373 and len(train) + len(held_out) == len(rows)
    assert not {r.image_id for r in train} & in_test
    by_id = {r.image_id: r.votes for r in test}
    assert all(by_id[r.image_id] == r.votes for r in held_out)      # both sources agree on the votes


def test_image_dataset_over_samples(shared_data):
    ava = shared_data / "ava-samples"
    labels = read_ava_json(ava / "ava_label_subsets" / "idealo_ava_labels_test.json")
    transform = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor()])
    with pytest.raises(FileNotFoundError, match="missing=.skip."):
        AVADataset(labels, ava / "idealo_ava_samples", transform)
    dataset = AVADataset(labels, ava / "idealo_ava_samples", transform, missing="skip")
    assert [r.image_id for r in dataset.records] == ["42040"]       # the only sample image with test labels
    image, distribution = dataset[0]
    assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
    expected = next(r for r in labels if r.image_id == "42040")
    assert torch.allclose(distribution, torch.tensor(expected.votes, dtype=torch.float32) / sum(expected.votes))
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        AVADataset(labels, ava / "absent", transform)
