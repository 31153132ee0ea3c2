"""`torchx run components/train.py:train`: a refused argument is named as the component spells it."""
from __future__ import annotations

import subprocess

from tests.conftest import REPO, subprocess_env, venv_bin


def test_a_port_out_of_range_names_the_components_flag(tmp_path):
    """`--rdzv_port 99999` was refused as "--rdzv-port 99999", `muse-rec launch`'s spelling: a flag the component
    does not have (`torchx run ... --rdzv-port` is a usage error). Now the flag the user gave, exit 2."""
    out = subprocess.run([venv_bin("torchx"), "--log_level", "WARNING", "run", "--dryrun", "-s", "local_cwd",
                          "components/train.py:train", "--profile", "cpu-demo", "--rdzv_port", "99999",
                          "--set", f"output_dir={tmp_path}/runs/{{name}}"],
                         capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (out.returncode, out.stderr[-3000:])
    assert "muse_rec: --rdzv_port 99999: must be a TCP port in [1, 65535]" in out.stderr, out.stderr
