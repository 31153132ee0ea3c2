"""A parent that `extends:` names through a symbolic link loop is named as one, as `--spec` names it."""
from __future__ import annotations

import pytest

from muse_rec.spec import SpecError, load_spec


def test_extends_through_a_link_loop_says_so(tmp_path):
    """It was 'extends: a.yaml: spec file not found', with a.yaml there (a link to b.yaml, a link to a.yaml)."""
    (tmp_path / "a.yaml").symlink_to("b.yaml")
    (tmp_path / "b.yaml").symlink_to("a.yaml")
    (tmp_path / "s.yaml").write_text("extends: a.yaml\nname: x\n")
    with pytest.raises(SpecError, match=rf"^{tmp_path}/s.yaml: extends: {tmp_path}/a.yaml: a symbolic link loop"):
        load_spec(tmp_path / "s.yaml")


def test_a_missing_parent_is_still_not_found(tmp_path):
    (tmp_path / "s.yaml").write_text("extends: gone.yaml\nname: x\n")
    with pytest.raises(SpecError, match=r"extends: .*gone.yaml: spec file not found$"):
        load_spec(tmp_path / "s.yaml")
