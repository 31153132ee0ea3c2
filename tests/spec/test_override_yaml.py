"""A --set value is YAML read as a spec file's text is (`muse_rec.spec.yaml_text.parse_yaml`)."""
from __future__ import annotations

import pytest

from muse_rec.spec import SpecError, load_spec


@pytest.fixture
def spec_file(tmp_path):
    (tmp_path / "s.yaml").write_text("name: x\n")
    return tmp_path / "s.yaml"


@pytest.mark.parametrize("override, key", [("train={seed: 1, seed: 2}", "seed"),
                                           ("data.vocab_sizes={item: 5, item: 7}", "item"),
                                           ("model={gsu: {top_k: 5}, gsu: {kind: category}}", "gsu")])
def test_a_key_given_twice_in_an_override_is_refused(spec_file, override, key):
    """The second value silently won (seed 2, 7 item rows, the first gsu mapping dropped), where a spec
    file holding the same mapping is refused."""
    with pytest.raises(SpecError, match=rf"^override '{override}': value is not valid YAML \(duplicate key '{key}'"):
        load_spec(spec_file, [override])


def test_an_override_mapping_merges_as_before(spec_file):
    s = load_spec(spec_file, ["train={seed: 3, epochs: 2}", "model.gsu={top_k: 7}"])
    assert (s.train.seed, s.train.epochs, s.train.batch_size, s.model.gsu.top_k) == (3, 2, 1000, 7)
