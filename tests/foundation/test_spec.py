"""Specs: every file in specs/ loads; malformed specs fail naming the file and the key."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from muse_rec.spec import SpecError, from_dict, load_spec, training_settings

SPECS = Path(__file__).resolve().parents[2] / "specs"
ALL_SPECS = sorted(p for p in SPECS.rglob("*.yaml"))


@pytest.mark.parametrize("path", ALL_SPECS, ids=lambda p: str(p.relative_to(SPECS)))
def test_every_spec_loads(path):
    spec = load_spec(path)
    assert spec.model.gsu.top_k <= spec.data.seq_len


def test_methods_differ_only_by_model_section():
    din, muse = load_spec(SPECS / "demo/din.yaml"), load_spec(SPECS / "demo/muse.yaml")
    assert din.train == muse.train and din.data == muse.data
    assert din.model.gsu.kind == "none" and muse.model.gsu.kind == "cosine_scl"
    assert muse.model.esu.attention == "sa_ta" and muse.model.esu.simtier


def test_extends_list_merges_in_order_and_child_wins(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {batch_size: 10, epochs: 3}\nmodel: {gsu: {top_k: 7}}\n")
    (tmp_path / "b.yaml").write_text("train: {batch_size: 20}\n")
    (tmp_path / "c.yaml").write_text("extends: [a.yaml, b.yaml]\nname: c\nmodel: {gsu: {kind: category}}\n")
    s = load_spec(tmp_path / "c.yaml", overrides=["train.epochs=5"])
    assert (s.train.batch_size, s.train.epochs, s.model.gsu.top_k, s.model.gsu.kind) == (20, 5, 7, "category")


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"model": {"gsu": {"top_k": "fifty"}}}, "model.gsu.top_k: expected an integer"),
        ({"modle": {}}, "modle: unknown key"),
        ({"model": {"esu": {"attention": "mha"}}}, "model.esu.attention: must be one of"),
        ({"model": {"gsu": {"top_k": 2000}}}, "model.gsu.top_k: must be <= data.seq_len"),
        ({"train": {"sparse_optimizer": {"lr": -1}}}, "train.sparse_optimizer.lr: must be > 0"),
        ({"train": {"dense_optimizer": {"name": "lion", "lr": 1e-3}}}, "train.dense_optimizer.name"),
        ({"train": {"sparse_optimizer": {"name": "adamm", "lr": 1e-3}}}, "train.sparse_optimizer.name: unknown 'adamm'"),
        ({"train": {"sparse_optimizer": {"name": "adam", "lr": 1e-3, "betas": [0.9, 1.0]}}},
         "train.sparse_optimizer.betas: each must be in"),
        ({"model": {"gsu": {"kind": "none"}}}, "model.esu.simtier"),
        ({"model": {"tower_hidden": []}}, "model.tower_hidden"),
        ({"train": {"batch_size": True}}, "train.batch_size: expected an integer"),
        ({"data": "x"}, "data: expected a mapping"),
        ({"model": {"parametrization": {"output_head": "three"}}}, "model.parametrization.output_head: must be one"),
        ({"model": {"parametrization": {"linear_init": "xavier"}}}, "model.parametrization.linear_init: must be one"),
        ({"model": {"parametrization": {"dice_norm_eps": 0}}}, "model.parametrization.dice_norm_eps: must be > 0"),
        ({"model": {"parametrization": {"output_head": "two_logits_dice"}}},
         "model.parametrization.output_bias: 'train_prior' needs output_head: one_logit"),
        ({"model": {"parametrization": {"output_bias": "zero"}}}, "model.parametrization.output_bias: must be one"),
        ({"model": {"parametrization": {"tower_gain": "he"}}}, "model.parametrization.tower_gain: must be one"),
        ({"model": {"parametrization": {"linear_bias": "x"}}}, "model.parametrization.linear_bias: expected a number"),
        # Each of these reached the model or the trainer before as a traceback (ZeroDivisionError,
        # KeyError, negative dimension), went through silently, or named another key.
        ({"train": {"log_every": 0}}, "train.log_every: must be > 0"),
        ({"train": {"checkpoint_every": -5}}, "train.checkpoint_every: must be >= 0"),
        ({"train": {"warn_below_clicks": -1}}, "train.warn_below_clicks: must be >= 0"),
        ({"train": {"warn_below_clicks": "many"}}, "train.warn_below_clicks: expected an integer"),
        ({"train": {"shuffle_seed": -3}}, "train.shuffle_seed: must be >= 0"),
        # torch.manual_seed's ValueError traceback once the run had started; -1 trained as 2^64 - 1.
        ({"train": {"seed": 2**64}}, "train.seed: must be in 0..18446744073709551615"),
        ({"train": {"seed": -1}}, "train.seed: must be in 0..18446744073709551615"),
        ({"train": {"eval_batch_size": 0}}, "train.eval_batch_size: must be > 0"),
        # 0 s: every rank's store connection "timed out" at once; 9e12 s overflowed c10d's nanosecond clock, the same.
        ({"train": {"collective_timeout_s": 0}}, "train.collective_timeout_s: must be in [0.001, 1e.09] seconds"),
        ({"train": {"collective_timeout_s": 9e12}}, "train.collective_timeout_s: must be in [0.001, 1e.09] seconds"),
        ({"train": {"collective_timeout_s": "ten"}}, "train.collective_timeout_s: expected a number"),
        ({"model": {"small_dim": 0}}, "model.small_dim: must be in 1..65536"),
        ({"model": {"init_std": 0}}, "model.init_std: must be > 0"),
        ({"model": {"small_features": ["item"]}}, "model.small_features: 'item' cannot take model.small_dim"),
        ({"model": {"small_features": ["nope"]}}, "model.small_features: 'nope' cannot"),
        ({"model": {"small_features": ["user_f2", "user_f2"]}}, "model.small_features: lists a table twice"),
        ({"model": {"esu": {"attention_hidden": 0}}}, "model.esu.attention_hidden: must be in 1..1048576"),
        # 2^70: torch's "Storage size calculation overflowed" traceback building the model in plan and train.
        ({"model": {"esu": {"attention_hidden": 2**70}}}, "model.esu.attention_hidden: must be in 1..1048576"),
        ({"model": {"tower_hidden": [64, 2**70]}}, "model.tower_hidden: a non-empty list of widths in 1..1048576"),
        ({"model": {"esu": {"temperature_init": -1}}}, "model.esu.temperature_init: must be > 0"),
        ({"model": {"esu": {"tier_width": 0}}}, "model.esu.tier_width: must be in [2.-24 = 5.960464477539063e-08, 2] .cosine units"),
        ({"model": {"esu": {"tier_width": 2.5}}}, "model.esu.tier_width: must be in [2.-24 = 5.960464477539063e-08, 2] .cosine units"),
        # 5e-324: 1 / tier_width is inf, an OverflowError traceback loading the spec in every command;
        # 1e-20: SimTier's int64 tier offset overflowed in the first training step.
        ({"model": {"esu": {"tier_width": 5e-324}}}, "model.esu.tier_width: must be in [2.-24 = 5.960464477539063e-08, 2]"),
        ({"model": {"esu": {"tier_width": 1e-20}}}, "model.esu.tier_width: must be in [2.-24 = 5.960464477539063e-08, 2]"),
        # 1e9 tiers: a MemoryError traceback (or the kernel's OOM kill) building the tower; any
        # tier past the one cosine 1 falls in is never filled.
        ({"model": {"esu": {"num_tiers": 23}}}, "model.esu.num_tiers: 23 tiers at tier_width 0.1: cosine 1 falls in tier 20"),
        ({"model": {"esu": {"num_tiers": 10**9}}}, "model.esu.num_tiers: 1000000000 tiers"),
        ({"model": {"esu": {"num_tiers": 43, "tier_width": 0.05}}}, "cosine 1 falls in tier 40 .* at most 42"),
        # Too few: SimTier clamped every cosine above 0 into tier 21 (0.1 and 1.0 alike), silently.
        ({"model": {"esu": {"tier_width": 0.05}}}, "model.esu.num_tiers: 22 tiers at tier_width 0.05: every cosine "
                                                   "above 0 falls in the last tier .* at least 41"),
        ({"model": {"esu": {"num_tiers": 20}}}, "model.esu.num_tiers: 20 tiers at tier_width 0.1: every cosine above "
                                                "0.8 falls in the last tier and cosine 1 needs tier 20 .* at least 21"),
        # 16M columns: `plan` and `train` ran TorchRec's enumerator for minutes with no output.
        ({"model": {"embedding_dim": 65540}}, "model.embedding_dim: must be in 1..65536"),
        ({"data": {"vocab_sizes": {"bogus": 10}}}, "data.vocab_sizes: unknown table 'bogus'"),
        ({"data": {"vocab_sizes": {"item": 0}}}, "data.vocab_sizes: {'item': 0}: rows must be in 1..8,796,093,022,207"),
        # An overflow traceback describing the tables on the meta device, before.
        ({"data": {"vocab_sizes": {"item": 10**20}}}, "data.vocab_sizes: {'item': 100000000000000000000}: rows must be in 1.."),
        # TorchRec's AssertionError traceback once the tables were sharded, before.
        ({"model": {"embedding_dim": 18}}, "model.embedding_dim: 18 must be a multiple of 4"),
        ({"model": {"small_dim": 6, "small_features": ["user_f1"]}}, "model.small_dim: 6 must be a multiple of 4"),
        # A KeyError / ValueError traceback from every command that made the run directory, before.
        ({"output_dir": "runs/{method}"}, "output_dir: 'runs/{method}': the only placeholder is {name}"),
        ({"output_dir": "runs/{name"}, "output_dir: 'runs/{name': the only placeholder is {name}"),
        ({"output_dir": "runs/{}"}, "output_dir: 'runs/{}': the only placeholder"),
        ({"output_dir": "runs/{name!r}"}, "output_dir: 'runs/{name!r}': the only placeholder"),
        # An OSError "File name too long" traceback from train and launch.
        ({"name": "a" * 256}, "output_dir: 'runs/{name}' .name 'a+...a+'.: a file name in a path is at most 255 bytes"),
        ({"output_dir": "/r/" + "é" * 128 + "/{name}"}, "output_dir: '/r/é+/{name}' .name 'muse'.: .* at most 255 bytes, 'é+...é+' is longer"),
        # `train` raised ValueError "embedded null byte" (a traceback) opening the run directory.
        ({"output_dir": "runs/a\0b"}, r"output_dir: 'runs/a\\x00b': holds a NUL character"),
    ],
)
def test_bad_specs_name_the_key(raw, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[")) as e:
        from_dict(raw, source="bad.yaml")
    assert str(e.value).startswith("bad.yaml: ")


@pytest.mark.parametrize("text, key", [("1: a\nfoo: b\n", "1"), ("train: {yes: a, foo: b}\n", "train.True"),
                                       ("~: a\nfoo: b\n", "None")])
def test_keys_that_are_not_strings_are_unknown_keys(tmp_path, text, key):
    """Two unknown keys of different types (a YAML int, bool or null beside a string) were sorted
    together: a bare TypeError, a traceback in every command reading the spec."""
    (tmp_path / "keys.yaml").write_text(text)
    with pytest.raises(SpecError, match=f"keys.yaml: {re.escape(key)}: unknown key"):
        load_spec(tmp_path / "keys.yaml")


def test_yaml_nested_too_deeply_is_refused_in_one_line(tmp_path):
    """PyYAML composes nested nodes recursively: a few thousand levels of brackets (in a file or a
    --set value) were a RecursionError traceback in every command reading the spec."""
    deep = "[" * 5000 + "]" * 5000
    (tmp_path / "deep.yaml").write_text(f"name: {deep}\n")
    with pytest.raises(SpecError, match="deep.yaml: not valid YAML: nested too deeply to parse"):
        load_spec(tmp_path / "deep.yaml")
    with pytest.raises(SpecError, match=r"override 'name=\[\[.*: value is not valid YAML \(nested too deeply to parse\)"):
        load_spec(SPECS / "methods/muse.yaml", overrides=[f"name={deep}"])


def test_a_huge_bad_value_is_quoted_in_a_line_of_bounded_length(tmp_path):
    """The error spelled the whole value out: ten-fold YAML aliases (the "billion laughs") made a
    3.6 MB error line here (at a few more levels, memory ran out first)."""
    levels = 6  # 10^6 items: megabytes spelled out, still quick to build
    anchors = ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels))
    (tmp_path / "laughs.yaml").write_text(f"name: [&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], {anchors}]\n")
    with pytest.raises(SpecError, match=r"laughs.yaml: name: expected a string, got \[\[1, 1, 1, 1, 1, 1, \.\.\.\], ") as e:
        load_spec(tmp_path / "laughs.yaml")
    assert len(str(e.value).split(" got ", 1)[1]) < 400  # was 3.6 MB


def test_a_model_without_long_term_search_takes_any_top_k():
    """DIN (gsu.kind none) reads no K: a short sequence was refused for the base spec's K = 50."""
    s = from_dict({"data": {"seq_len": 10}, "model": {"gsu": {"kind": "none"}, "esu": {"simtier": False, "attention": "none"},
                                                      "short_term": {"recent": 10}}})
    assert s.model.gsu.top_k == 50 and s.data.seq_len == 10
    with pytest.raises(SpecError, match="model.gsu.top_k: must be <= data.seq_len"):
        from_dict({"data": {"seq_len": 10}, "model": {"short_term": {"recent": 10}}})


def test_output_dir_takes_name_and_literal_braces():
    assert from_dict({"name": "m1", "output_dir": "/r/{{x}}/{name}-{name}"}).run_dir == "/r/{x}/m1-m1"
    assert from_dict({"output_dir": "/r/plain"}).run_dir == "/r/plain"


def test_bad_files(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("model: {gsu: [\n")
    with pytest.raises(SpecError, match="broken.yaml: not valid YAML"):
        load_spec(tmp_path / "broken.yaml")
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(SpecError, match="'extends' cycle"):
        load_spec(tmp_path / "loop.yaml")
    with pytest.raises(SpecError, match="value is not valid YAML"):
        load_spec(SPECS / "methods/muse.yaml", overrides=["model.tower_hidden=[64,"])
    with pytest.raises(SpecError, match="expected key.path=value"):
        load_spec(SPECS / "methods/muse.yaml", overrides=["train.batch_size"])


@pytest.mark.parametrize("extends", ["''", "[a.yaml, ' ']"])
def test_an_empty_extends_path_is_named_as_such(tmp_path, extends):
    """`extends: ''` is the spec's own directory: it was refused as "extends: <dir>: cannot read (Is a directory)"."""
    (tmp_path / "a.yaml").write_text("name: a\n")
    (tmp_path / "child.yaml").write_text(f"extends: {extends}\nname: c\n")
    with pytest.raises(SpecError, match=r"child.yaml: extends: an empty path; name the spec file this one extends$"):
        load_spec(tmp_path / "child.yaml")


def test_a_parent_that_cannot_be_read_is_named_with_the_extends_naming_it(tmp_path):
    """A path too long for the filesystem was an OSError traceback (path.exists raised ENAMETOOLONG), and
    a parent that is a directory was named alone, not the file and key that extend it."""
    long_name = "a" * 5000 + ".yaml"
    with pytest.raises(SpecError, match=r"a\.yaml: cannot read \(.*File name too long"):
        load_spec(tmp_path / long_name)
    (tmp_path / "child.yaml").write_text(f"extends: {long_name}\nname: c\n")
    with pytest.raises(SpecError, match=r"child.yaml: extends: .*a\.yaml: cannot read \(.*File name too long"):
        load_spec(tmp_path / "child.yaml")
    (tmp_path / "parent").mkdir()
    (tmp_path / "child.yaml").write_text("extends: parent\nname: c\n")
    with pytest.raises(SpecError, match=r"child.yaml: extends: .*parent: cannot read \(.*Is a directory"):
        load_spec(tmp_path / "child.yaml")


def test_a_bad_key_set_by_a_parent_names_the_parent(tmp_path):
    """A parent's bad key was reported against the file given, where the user found no such line."""
    parent, child = tmp_path / "parent.yaml", tmp_path / "child.yaml"
    for text, error in (("train: {batchsize: 5}", "train.batchsize: unknown key"),
                        ("model: {gsu: {top_k: 5000}}", "model.gsu.top_k: must be <= data.seq_len")):
        parent.write_text(f"extends: {SPECS / 'demo/muse.yaml'}\n{text}\n")
        child.write_text("extends: parent.yaml\nname: child\n")
        with pytest.raises(SpecError, match=re.escape(f"{parent} (extended by {child}): {error}")):
            load_spec(child)
    # The child's own value wins and is named as the child's; an override's as the override.
    child.write_text("extends: parent.yaml\nmodel: {gsu: {top_k: 6000}}\n")
    with pytest.raises(SpecError, match=re.escape(f"{child}: model.gsu.top_k: must be <= data.seq_len")):
        load_spec(child)
    with pytest.raises(SpecError, match=re.escape("--set model.gsu.top_k=7000: model.gsu.top_k: must be <=")):
        load_spec(child, overrides=["model.gsu.top_k=7000"])
    # A file's keys are looked up along the error's key, never walked whole: an alias cycle stays one line.
    parent.write_text(f"extends: {SPECS / 'demo/muse.yaml'}\nmodel: &m {{gsu: *m}}\n")
    child.write_text("extends: parent.yaml\nname: child\n")
    with pytest.raises(SpecError, match=re.escape(f"{parent} (extended by {child}): model.gsu.gsu: unknown key")):
        load_spec(child)


def test_a_check_across_keys_broken_by_an_override_names_the_override():
    """`--set data.seq_len=10` on specs/demo/muse.yaml was refused as "specs/demo/../methods/../base.yaml
    (extended by specs/demo/muse.yaml): model.gsu.top_k: must be <= data.seq_len (10)": the check across
    keys names the files' top_k, whose line is fine; the override is what broke it. Now the override is
    named, as for a key it sets itself. Where the files alone conflict, the file is still named."""
    muse, twin = SPECS / "demo/muse.yaml", SPECS / "demo/twin.yaml"
    for spec, overrides, broke, error in (
            (muse, ["train.seed=3", "data.seq_len=10", "name=x"], "data.seq_len=10",
             "model.gsu.top_k: must be <= data.seq_len (10)"),
            (twin, ["model.esu.attention=sa_ta"], "model.esu.attention=sa_ta", "model.gsu.kind: 'attention' (TWIN)"),
            (muse, ["model.parametrization.output_head=two_logits_dice"],
             "model.parametrization.output_head=two_logits_dice", "model.parametrization.output_bias: 'train_prior'")):
        with pytest.raises(SpecError, match=re.escape(f"--set {broke}: {error}")):
            load_spec(spec, overrides=overrides)


def test_empty_specs_and_empty_key_parts_are_refused(tmp_path):
    """An empty or comment-only file (truncated, or the wrong one) trained the schema's defaults, exit 0."""
    for text in ("", "# only a comment\n", "{}\n"):
        (tmp_path / "empty.yaml").write_text(text)
        with pytest.raises(SpecError, match=r"empty.yaml: empty spec \(no keys\)"):
            load_spec(tmp_path / "empty.yaml")
    (tmp_path / "child.yaml").write_text("extends: empty.yaml\ntrain: {seed: 3}\n")
    with pytest.raises(SpecError, match=r"empty.yaml: empty spec"):  # a parent too
        load_spec(tmp_path / "child.yaml")
    for bad in ("=3", "train..seed=1", ".seed=1"):  # "=3" said ": unknown key"
        with pytest.raises(SpecError, match=f"override '{re.escape(bad)}': expected key.path=value, with a name"):
            load_spec(SPECS / "methods/muse.yaml", overrides=[bad])
    (tmp_path / "listdata.yaml").write_text("extends: " + str(SPECS / "methods/muse.yaml") + "\ndata: [1, 2]\n")
    with pytest.raises(SpecError, match=r"override 'data.prepared=x': data is not a mapping in .*listdata.yaml"):
        load_spec(tmp_path / "listdata.yaml", overrides=["data.prepared=x"])


def test_a_mapping_override_merges_key_by_key_as_extends_does(tmp_path):
    """`--set 'train.dense_optimizer={name: sgd}'` replaced the section: the spec's lr and weight
    decay fell back to the schema's defaults, unlike the same mapping in a file that extends it."""
    spec = SPECS / "demo/muse.yaml"
    base = load_spec(spec).train.dense_optimizer
    by_set = load_spec(spec, overrides=["train.dense_optimizer={name: sgd}"]).train.dense_optimizer
    (tmp_path / "child.yaml").write_text(f"extends: {spec}\ntrain: {{dense_optimizer: {{name: sgd}}}}\n")
    by_file = load_spec(tmp_path / "child.yaml").train.dense_optimizer
    assert by_set == by_file and by_set.name == "sgd"
    assert (by_set.lr, by_set.weight_decay) == (base.lr, base.weight_decay) != (2e-4, 0.0)
    # A non-mapping value still replaces: a list is one value.
    assert load_spec(spec, overrides=["model.tower_hidden=[8]"]).model.tower_hidden == [8]


def test_yaml_merge_keys_work_and_duplicate_keys_are_still_refused(tmp_path):
    """`<<: *anchor` failed with "could not determine a constructor for the tag ...merge"."""
    (tmp_path / "merge.yaml").write_text(
        f"extends: {SPECS / 'demo/muse.yaml'}\n"
        "train:\n  sparse_optimizer: &opt {name: exact_row_wise_adagrad, lr: 0.03}\n"
        "  dense_optimizer: {<<: *opt, name: adamw, lr: 0.002}\n")
    t = load_spec(tmp_path / "merge.yaml").train
    assert (t.sparse_optimizer.lr, t.dense_optimizer.name, t.dense_optimizer.lr) == (0.03, "adamw", 0.002)
    (tmp_path / "dup.yaml").write_text("train: {seed: 1, seed: 2}\n")
    with pytest.raises(SpecError, match="duplicate key 'seed'"):
        load_spec(tmp_path / "dup.yaml")
    # A list or a mapping as a key (`? [a, b]`): the duplicate check's `key in seen` raised a bare
    # TypeError (a traceback in every command reading a spec); now PyYAML's own one-line refusal.
    for text in ("name: x\n? [a, b]\n: 2\n", "name: x\na: {? {x: 1} : 2}\n"):
        (tmp_path / "key.yaml").write_text(text)
        with pytest.raises(SpecError, match="not valid YAML: .*found unhashable key"):
            load_spec(tmp_path / "key.yaml")


def test_scientific_notation_learning_rates():
    # YAML 1.1 reads `2e-3` as a string; the spec accepts it as the number users mean.
    s = from_dict({"train": {"dense_optimizer": {"name": "adamw", "lr": "2e-3"}}})
    assert s.train.dense_optimizer.lr == 2e-3
    for text, value in (("2E-3", 2e-3), ("+.5e-3", 5e-4), ("1.", 1.0), ("-0.25", -0.25), ("7", 7.0)):
        s = from_dict({"model": {"parametrization": {"linear_bias": text}}})
        assert s.model.parametrization.linear_bias == value, text


@pytest.mark.parametrize("text", ["1_0", " 2e-3", "2e-3 ", "\u0661\u0660", "0x10", "1e", "e-3", ".", " inf"])
def test_number_text_is_ascii_decimal(text):
    # Python's float() read '1_0' as 10.0, padded text and Arabic-Indic digits as numbers: a quoted
    # value a user would not call a number trained with one.
    with pytest.raises(SpecError, match=r"model.parametrization.linear_bias: expected a number"):
        from_dict({"model": {"parametrization": {"linear_bias": text}}})


def test_literal_choices_are_the_spec_fields_own_values():
    from muse_rec.modules.simtier import SIMTIER_INITS, SimTier
    from muse_rec.spec import ParametrizationSpec, literal_choices

    assert literal_choices(ParametrizationSpec, "simtier_init") == ("uniform", "constant") == SIMTIER_INITS
    # A module built without a spec refuses a value the spec would refuse, and only those.
    with pytest.raises(ValueError, match="simtier_init"):
        SimTier(init="ones")
    for name in ("linear_bias", "no_such_field"):  # Optional[float]; not a field
        with pytest.raises(TypeError, match=f"ParametrizationSpec.{name} is not a Literal"):
            literal_choices(ParametrizationSpec, name)


def test_spec_table_names_are_the_models():
    """`ID_TABLES` is a literal (loading a spec imports no torch): it must be the model's list and
    the vocabularies `muse-rec prepare` writes."""
    from muse_rec.data.prepare import VOCAB_NAMES
    from muse_rec.models.sparse_arch import REQUIRED_TABLES
    from muse_rec.spec import ID_TABLES, SMALL_DIM_TABLES

    assert list(ID_TABLES) == REQUIRED_TABLES == VOCAB_NAMES
    assert set(ID_TABLES) - set(SMALL_DIM_TABLES) == {"item", "category"}


def test_the_collective_timeout_is_no_training_setting():
    """`train.collective_timeout_s` says how long a rank waits for the others, not what is trained: a resume
    with another one (a cluster's slower checkpoint store, a hang to catch sooner) is not refused."""
    spec = SPECS / "demo" / "muse.yaml"
    assert load_spec(spec, ["train.collective_timeout_s=60"]).train.collective_timeout_s == 60
    assert (training_settings(load_spec(spec).to_dict())
            == training_settings(load_spec(spec, ["train.collective_timeout_s=60"]).to_dict()))
