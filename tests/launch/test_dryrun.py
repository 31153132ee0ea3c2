"""`muse-rec launch --dryrun`: the profile decides the scheduler; Slurm and Kubernetes jobs as submitted."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.conftest import REPO, subprocess_env, venv_bin


def launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([venv_bin("muse-rec"), "launch", *args], capture_output=True, text=True, cwd=REPO,
                          env=subprocess_env(), timeout=120)


def test_multi_node_profile_prints_a_slurm_batch_job():
    out = launch("--profile", "multi-node", "--dryrun", "--set", "train.seed=7")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "local_cwd" not in text and "sbatch --parsable" in text
    # TorchX's Slurm scheduler: one heterogeneous group per node, each one srun task = one torchrun agent.
    assert text.count("#SBATCH hetjob") == 3
    assert text.count("--partition=gpu") == 4 and text.count("--time=24:00:00") == 4
    assert text.count("--gpus-per-task=8") == 4 and text.count("--job-name=trainer-") == 4 and text.count("--cpus-per-task=96") == 4
    assert "--nnodes 4 --nproc_per_node 8" in text
    assert "SLURM_JOB_NODELIST_HET_GROUP_0" in text  # rendezvous on the first node
    assert "-m muse_rec.cli train --spec specs/taobao_mm_full/muse.yaml --set train.seed=7" in text
    assert "PET_MAX_RESTARTS=2" in text  # the profile's max_restarts reaches torchrun


def test_kubernetes_profile_prints_a_volcano_job():
    out = launch("--profile", "k8s-multi-node", "--dryrun")
    assert out.returncode == 0, out.stderr
    body = out.stdout.split("\n", 1)[1]  # first line: our header comment
    job = yaml.safe_load(body)
    assert job["apiVersion"] == "batch.volcano.sh/v1alpha1" and job["kind"] == "Job"
    assert job["spec"]["schedulerName"] == "volcano" and job["spec"]["queue"] == "default"
    tasks = job["spec"]["tasks"]
    assert [t["name"] for t in tasks] == ["trainer-0", "trainer-1", "trainer-2", "trainer-3"]
    for task in tasks:
        (container,) = task["template"]["spec"]["containers"]
        assert container["image"] == "registry.example.com/muse-rec:0.1.0"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        cmd = " ".join(container["command"])
        assert "--nnodes 4 --nproc_per_node 8" in cmd and "-m muse_rec.cli train" in cmd
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PET_MAX_RESTARTS"] == "2"
    assert "local_cwd" not in out.stdout


def test_local_profile_dryrun_and_scheduler_arg_override(tmp_path):
    # The run directories go under tmp_path: the profiles' own (runs/demo/muse, runs/taobao_mm_p90/muse) are
    # the user's, and a local launch refuses a used one (README's `muse-rec launch --profile cpu-demo` makes it).
    into = ("--set", f"output_dir={tmp_path}/runs/{{name}}")
    out = launch("--profile", "cpu-demo", "--dryrun", *into)
    assert out.returncode == 0, out.stderr
    assert "local_cwd, 1 node(s) x 2 process(es)" in out.stdout and "--nproc_per_node 2" in out.stdout
    out = launch("--profile", "gpu-node", "--dryrun", *into)
    assert out.returncode == 0, out.stderr
    assert "local_cwd, 1 node(s) x 8 process(es)" in out.stdout and "--nproc_per_node 8" in out.stdout
    # TorchX pretty-prints the local request, wrapping long strings: compare without whitespace.
    assert "-mmuse_rec.clitrain--specspecs/taobao_mm_p90/muse.yaml" in "".join(out.stdout.replace("'", "").replace('"', "").split())
    out = launch("--profile", "multi-node", "--dryrun", "--scheduler-arg", "partition=debug")
    assert out.returncode == 0 and out.stdout.count("--partition=debug") == 4


def test_bad_launch_requests_exit_2_with_one_line(tmp_path):
    into = ["--set", f"output_dir={tmp_path}/runs/{{name}}"]  # not the user's runs/demo/muse, which may be in use
    cases = [
        (["--profile", "nope", "--dryrun"], "no profile 'nope'"),
        # Named as the user gave it: "profiles.multi-node.scheduler_args.account" sent them to torchx.yaml, which
        # holds no such key.
        (["--profile", "multi-node", "--dryrun", "--scheduler-arg", "account=x"],
         "muse-rec launch: --scheduler-arg account: not an option of the slurm scheduler"),
        (["--profile", "cpu-demo", "--dryrun", "--set", "train.nope=1"], "train.nope"),
        (["--profile", "cpu-demo", "--dryrun", "--spec", "specs/missing.yaml"], "specs/missing.yaml"),
        (["--profile", "cpu-demo", "--dryrun", "--rdzv-port", "99999"], "--rdzv-port 99999: must be a TCP port"),
    ]
    for args, message in cases:
        out = launch(*args, *into)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_torchx_run_keeps_working_and_warns_on_another_scheduler():
    def torchx_run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([venv_bin("torchx"), "run", "--dryrun", *args], capture_output=True, text=True,
                              cwd=REPO, env=subprocess_env(), timeout=120)

    out = torchx_run("-s", "slurm", "-cfg", "partition=gpu", "components/train.py:train", "--profile", "multi-node")
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --job-name=trainer-0" in out.stdout and "WARNING: profile" not in out.stderr
    out = torchx_run("components/train.py:train", "--profile", "multi-node")  # .torchxconfig: local_cwd
    assert out.returncode == 0, out.stderr
    assert ("profile 'multi-node' is meant for the slurm scheduler, but this `torchx run` submits to local_cwd"
            in out.stderr)


def test_bad_requests_and_a_used_run_dir_are_refused_before_submitting(tmp_path):
    """`torchx run` printed a ProfileError traceback (exit 1) for an unknown profile, and submitted a
    bad --set or a fresh run into a used run directory, which then failed on every rank (torchrun's
    traceback, exit 1). Both entry points now refuse them in one line, exit 2, before submitting."""
    from muse_rec.spec import load_spec

    used = tmp_path / "runs" / "din"
    used.mkdir(parents=True)
    into_used = f"output_dir={tmp_path}/runs/{{name}}"
    (used / "spec.yaml").write_text(yaml.safe_dump(load_spec(REPO / "specs/demo/din.yaml", [into_used]).to_dict()))

    def torchx_run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([venv_bin("torchx"), "--log_level", "WARNING", "run", "-s", "local_cwd",
                               "components/train.py:train", *args], capture_output=True, text=True, cwd=REPO,
                              env=subprocess_env(), timeout=120)

    for out, words in (
            (torchx_run("--profile", "nope"), "no profile 'nope'"),
            (torchx_run("--profile", "cpu-demo", "--set", "train.bogus=1"), "train.bogus: unknown key"),
            (torchx_run("--profile", "cpu-demo", "--spec", "specs/demo/din.yaml", "--set", into_used),
             f"{used}: already holds a run (spec.yaml); continue it with --resume True, or choose another"),
            (launch("--profile", "cpu-demo", "--spec", "specs/demo/din.yaml", "--set", into_used),
             f"{used}: already holds a run (spec.yaml); continue it with --resume, or choose another output_dir")):
        assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
        assert words in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert sorted(p.name for p in used.iterdir()) == ["spec.yaml"]
    # --resume continues the run there: not refused (dry run: nothing submitted).
    out = launch("--profile", "cpu-demo", "--spec", "specs/demo/din.yaml", "--set", into_used, "--resume", "--dryrun")
    assert out.returncode == 0, out.stderr


def test_a_profile_with_a_port_out_of_range_is_named(tmp_path):
    from muse_rec.launch_profiles import ProfileError, load_profiles

    profiles = yaml.safe_load((REPO / "torchx.yaml").read_text())
    profiles["profiles"]["cpu-demo"]["rdzv_port"] = 70000
    path = tmp_path / "torchx.yaml"
    path.write_text(yaml.safe_dump(profiles))
    try:
        load_profiles(str(path))
    except ProfileError as e:
        assert "cpu-demo.rdzv_port: must be a TCP port in [1, 65535], got 70000" in str(e)
    else:
        raise AssertionError("a port above 65535 was accepted")


def test_a_profile_wider_than_a_plan_is_refused(tmp_path):
    """procs_per_node 10^20 was submitted ("1 node(s) x 100000000000000000000 process(es)") and torchrun hung
    without a word; every rank plans the whole world's sharding, which `plan` bounds at MAX_PLAN_RANKS."""
    from muse_rec.distributed import MAX_PLAN_RANKS

    profiles = yaml.safe_load((REPO / "torchx.yaml").read_text())
    path = tmp_path / "torchx.yaml"
    for nodes, procs in ((1, 10**20), (MAX_PLAN_RANKS, 2)):
        profiles["profiles"]["cpu-demo"].update(nodes=nodes, procs_per_node=procs)
        path.write_text(yaml.safe_dump(profiles))
        out = launch("--profile", "cpu-demo", "--profiles-file", str(path), "--set", f"output_dir={tmp_path}/runs/x")
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, (out.returncode, out.stderr[-3000:])
        assert (f"{path}: profiles.cpu-demo: nodes x procs_per_node = {nodes * procs:,} ranks, more than the "
                f"{MAX_PLAN_RANKS:,}") in out.stderr, out.stderr
    profiles["profiles"]["cpu-demo"].update(nodes=MAX_PLAN_RANKS // 8, procs_per_node=8)  # the bound itself: fine
    path.write_text(yaml.safe_dump(profiles))
    from muse_rec.launch_profiles import load_profiles

    assert load_profiles(str(path))["cpu-demo"].world_size == MAX_PLAN_RANKS


def test_a_malformed_profiles_file_is_one_line_naming_the_key(tmp_path):
    path = tmp_path / "torchx.yaml"
    path.write_text("profiles: [\n")
    out = launch("--profile", "cpu-demo", "--dryrun", "--profiles-file", str(path))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert f"{path}: not valid YAML" in out.stderr
    profiles = yaml.safe_load((REPO / "torchx.yaml").read_text())
    profiles["profiles"]["cpu-demo"]["env"] = {"OMP_NUM_THREADS": [1, 2]}
    path.write_text(yaml.safe_dump(profiles))
    out = launch("--profile", "cpu-demo", "--dryrun", "--profiles-file", str(path))
    assert out.returncode == 2 and "profiles.cpu-demo.env.OMP_NUM_THREADS: expected a scalar" in out.stderr, out.stderr


def test_a_profile_env_the_os_refuses_is_named_before_anything_starts(tmp_path):
    """A name with '=' or a NUL character in a profile's env passed every check and, at the launch, was
    subprocess's 'illegal environment variable name' / 'embedded null byte' ValueError traceback (exit 1)."""
    profiles = yaml.safe_load((REPO / "torchx.yaml").read_text())
    path = tmp_path / "torchx.yaml"
    for env in ({"OMP=NUM": "1"}, {"OMP_NUM_THREADS": "1\0"}, {"BAD\0NAME": "1"}):
        profiles["profiles"]["cpu-demo"]["env"] = env
        path.write_text(yaml.safe_dump(profiles))
        out = launch("--profile", "cpu-demo", "--profiles-file", str(path), "--set", f"output_dir={tmp_path}/runs/x",
                     "--set", f"data.prepared={tmp_path}/absent")
        assert out.returncode == 2 and "Traceback" not in out.stderr, (out.returncode, out.stderr[-3000:])
        assert f"{path}: profiles.cpu-demo.env.{next(iter(env))!r}: not an environment variable" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "runs").exists()


def test_a_resume_that_every_rank_would_refuse_is_refused_before_submitting(tmp_path):
    """`muse-rec launch --resume` submitted a resume with other training settings, or into a run
    directory in use, and every rank refused it amid torchrun's tracebacks (exit 1). Now one line,
    exit 2, before submitting, as `muse-rec train` words it; the directory is left as it was."""
    from muse_rec.dirlock import DirLock
    from muse_rec.spec import load_spec

    run = tmp_path / "runs" / "din"
    run.mkdir(parents=True)
    into = f"output_dir={tmp_path}/runs/{{name}}"
    (run / "spec.yaml").write_text(yaml.safe_dump(load_spec(REPO / "specs/demo/din.yaml", [into]).to_dict()))
    (run / "run.json").write_text('{"run_id": "r1"}')
    before = sorted(p.name for p in run.iterdir())
    common = ("--profile", "cpu-demo", "--spec", "specs/demo/din.yaml", "--set", into, "--resume", "--dryrun")
    out = launch(*common, "--set", "train.dense_optimizer.lr=0.005")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "--resume with other training settings" in out.stderr and "train.dense_optimizer.lr" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    with DirLock.acquire(run, holder="a test"):
        out = launch(*common)
    assert out.returncode == 2 and f"{run}: in use by" in out.stderr and len(out.stderr.strip().splitlines()) == 1, \
        out.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir() if p.name != ".lock") == before  # (the test's own lock file)
    out = launch(*common)  # the same settings, free: submitted (a dry run prints the job)
    assert out.returncode == 0, out.stderr[-3000:]
    (tmp_path / "runs" / "other").mkdir()
    (tmp_path / "runs" / "other" / "notes.txt").write_text("not a run")
    out = launch("--profile", "cpu-demo", "--spec", "specs/demo/din.yaml", "--set", into, "--set", "name=other",
                 "--resume", "--dryrun")
    assert out.returncode == 2 and "holds no run to continue" in out.stderr, out.stderr[-3000:]


def test_a_refused_resume_offers_only_flags_the_launching_command_has(tmp_path):
    """A `--resume` with other training settings was refused, by `muse-rec launch` and by `torchx run`,
    with "train them as a new run (another output_dir, or --overwrite)": neither command has an
    --overwrite (`muse-rec launch --overwrite` is a usage error). Now the way out it names is one they
    have; `muse-rec train`, which has --overwrite, still offers it."""
    from muse_rec.launch import preflight
    from muse_rec.launch_profiles import get_profile
    from muse_rec.spec import load_spec
    from muse_rec.training.run_dir import RunDirError
    from muse_rec.training.run_record import RunError, check_resume_settings

    run = tmp_path / "runs" / "din"
    run.mkdir(parents=True)
    into = f"output_dir={tmp_path}/runs/{{name}}"
    (run / "spec.yaml").write_text(yaml.safe_dump(load_spec(REPO / "specs/demo/din.yaml", [into]).to_dict()))
    (run / "run.json").write_text('{"run_id": "r1"}')
    other_lr = [into, "train.dense_optimizer.lr=0.005"]
    with pytest.raises(RunDirError, match="--resume with other training settings") as refused:
        preflight(get_profile("cpu-demo"), "local_cwd", str(REPO / "specs/demo/din.yaml"), other_lr, resume=True)
    assert "another output_dir)" in str(refused.value) and "--overwrite" not in str(refused.value)
    with pytest.raises(RunError, match=r"\(another output_dir, or --overwrite\)"):
        check_resume_settings(run / "spec.yaml", load_spec(REPO / "specs/demo/din.yaml", other_lr))


def test_a_resume_on_ranks_that_cannot_continue_the_epoch_is_refused_before_submitting(tmp_path, prepared):
    """A checkpoint saved 3 steps into an epoch by 1 rank (3 global batches done) cannot go on evenly
    on the profile's 2 ranks: `muse-rec launch --resume` submitted it, and each rank refused it amid
    torchrun's tracebacks (exit 1). Now one line, exit 2, before submitting, from the checkpoint's
    position.json and the data's meta.json; 4 batches done, or a run already at its max_steps (an
    evaluation-only resume), are submitted; so is one that stopped in an epoch that a lowered
    train.epochs no longer trains (it was refused as if that epoch had to go on)."""
    from muse_rec.spec import load_spec

    run = tmp_path / "runs" / "din"
    into = [f"output_dir={tmp_path}/runs/{{name}}", f"data.prepared={prepared}", "train.batch_size=64"]
    (run / "checkpoints").mkdir(parents=True)
    (run / "spec.yaml").write_text(yaml.safe_dump(load_spec(REPO / "specs/demo/din.yaml", into).to_dict()))
    (run / "run.json").write_text('{"run_id": "r1"}')
    ck = run / "checkpoints" / "step-00000003"
    ck.mkdir()

    def position(batches: int, epoch: int = 0) -> None:
        ck.joinpath("position.json").write_text(json.dumps(
            {"step": batches, "epoch": epoch, "batch_in_epoch": batches, "world_size": 1, "batch_size": 64,
             "run_id": "r1"}))

    common = ["--profile", "cpu-demo", "--spec", "specs/demo/din.yaml", "--resume", "--dryrun"]
    for ov in into:
        common += ["--set", ov]
    position(3)
    out = launch(*common)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert f"{ck}: it was saved by 1 rank(s) 3 step(s) into an epoch" in out.stderr, out.stderr
    assert "2 ranks cannot continue evenly" in out.stderr, out.stderr
    assert launch(*common, "--set", "train.max_steps=3").returncode == 0  # nothing left to train: evaluates
    position(3, epoch=1)  # 3 steps into the second epoch of a 2-epoch run
    out = launch(*common, "--set", "train.epochs=2")
    assert out.returncode == 2 and "2 ranks cannot continue evenly" in out.stderr, out.stderr[-3000:]
    out = launch(*common, "--set", "train.epochs=1")  # that epoch is no longer trained: evaluates
    assert out.returncode == 0, out.stderr[-3000:]
    position(4)
    out = launch(*common)
    assert out.returncode == 0, out.stderr[-3000:]
