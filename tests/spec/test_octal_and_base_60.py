"""Numbers YAML 1.1 reads in another base than the decimal they look like (010 = 8, 1:30 = 90) are kept as
text: an integer key refuses them naming the key, a string key takes them as written."""
from __future__ import annotations

import pytest

from muse_rec.launch_profiles import load_profiles
from muse_rec.spec import SpecError, load_spec


@pytest.mark.parametrize("line, key, text", [("train: {seed: 010}", "train.seed", "010"),
                                             ("train: {batch_size: 1:30}", "train.batch_size", "1:30"),
                                             ("data: {seq_len: -0100}", "data.seq_len", "-0100")])
def test_an_octal_or_base_60_integer_is_refused_naming_the_key(tmp_path, line, key, text):
    """`seed: 010` trained seed 8, `batch_size: 1:30` a batch of 90 (exit 0)."""
    (tmp_path / "s.yaml").write_text(f"name: x\n{line}\n")
    with pytest.raises(SpecError, match=rf"^{tmp_path}/s.yaml: {key}: expected an integer in decimal digits, "
                                        rf"without a leading 0 or ':' .*, got '{text}'$"):
        load_spec(tmp_path / "s.yaml")


def test_the_same_through_an_override(tmp_path):
    (tmp_path / "s.yaml").write_text("name: x\n")
    with pytest.raises(SpecError, match=r"^--set train.seed=010: train.seed: expected an integer in decimal digits"):
        load_spec(tmp_path / "s.yaml", ["train.seed=010"])


def test_decimal_numbers_read_as_before(tmp_path):
    (tmp_path / "s.yaml").write_text("name: x\ntrain: {seed: 10, epochs: 0x2, batch_size: 1_000, dense_optimizer: "
                                     "{name: adamw, lr: 010.5e-3, weight_decay: 0}}\ndata: {seq_len: 0700.0}\n")
    with pytest.raises(SpecError, match="data.seq_len: expected an integer, got 700.0"):
        load_spec(tmp_path / "s.yaml")
    s = load_spec(tmp_path / "s.yaml", ["data.seq_len=700"])
    assert (s.train.seed, s.train.epochs, s.train.batch_size, s.train.dense_optimizer.lr) == (10, 2, 1000, 0.0105)


def test_a_string_key_gets_the_text_as_written(tmp_path):
    """`name: 0123` was refused as 'expected a string, got 83'; an unquoted Slurm time 24:00:00 in a launch
    profile was the number 86400."""
    (tmp_path / "s.yaml").write_text("name: 0123\nmodel: {method: '1:30'}\n")
    assert load_spec(tmp_path / "s.yaml", ["model.method=12:00"]).name == "0123"
    assert load_spec(tmp_path / "s.yaml", ["model.method=12:00"]).model.method == "12:00"
    (tmp_path / "torchx.yaml").write_text("profiles:\n  p:\n    scheduler: slurm\n    nodes: 1\n    procs_per_node: 1\n"
                                          "    spec: s.yaml\n    scheduler_args: {time: 24:00:00}\n")
    assert load_profiles(tmp_path / "torchx.yaml")["p"].scheduler_args["time"] == "24:00:00"
