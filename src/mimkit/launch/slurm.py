"""Slurm through ``submitit``, as facebookresearch/mae's ``submitit_pretrain.py``.

``--slurm nodes=2,gpus_per_node=8,partition=X,time=72:00:00`` submits the same
``mimkit <command> ...`` as a job of one task per GPU. Each task takes its rank from the
Slurm environment (submitit's ``JobEnvironment``) as the ``MASTER_ADDR``/``MASTER_PORT``/
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables torchrun would set, then runs
``mimkit.cli.main(argv)``. On preemption or time-out Slurm signals the job; submitit calls
``MimkitJob.checkpoint``, which requeues the same command with ``--resume RUN_DIR`` once
the run folder holds a checkpoint. ``cluster=local`` runs the job on this machine.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import UserError

_CLUSTERS = ("slurm", "local", "debug")


@dataclass
class SlurmSpec:
    nodes: int = 1
    gpus_per_node: int = 8
    tasks_per_node: int | None = None  # default: one per GPU (1 without GPUs)
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    partition: str | None = None
    time: int = 72 * 60  # minutes (MAE's 72 hours)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    name: str = "mimkit"
    cluster: str = "slurm"  # slurm | local (this machine, for tests) | debug (in process)

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)


def parse_spec(text: str) -> SlurmSpec:
    """``key=value,key=value`` -> SlurmSpec; an unknown key or bad value is one line."""
    spec, valid = SlurmSpec(), {f.name: f for f in fields(SlurmSpec)}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not value.strip():
            raise UserError(f"--slurm: '{item}' is not key=value (e.g. nodes=2,gpus_per_node=8)")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(valid)}"
            raise UserError(f"--slurm: unknown key '{key}' ({hint})")
        setattr(spec, key, _value(key, value.strip()))
    if spec.cluster not in _CLUSTERS:
        raise UserError(f"--slurm: cluster must be one of {', '.join(_CLUSTERS)}")
    return spec


def _value(key: str, value: str):
    if key == "time":
        return parse_time(value)
    kind = {"nodes": int, "gpus_per_node": int, "tasks_per_node": int, "cpus_per_task": int}
    kind["mem_gb"] = float
    try:
        out = kind.get(key, str)(value)
    except ValueError:
        raise UserError(f"--slurm: {key}={value} is not a number") from None
    if key in kind and out < (0 if key == "gpus_per_node" else 1):
        raise UserError(f"--slurm: {key} must be positive, got {value}")
    return out


def parse_time(text: str) -> int:
    """Slurm's time formats -> minutes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise UserError(f"--slurm: time={text} is not a Slurm time (e.g. 72:00:00 or 3-00:00:00)")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is not None:  # D-H[:M[:S]]
        h, mins, secs = a, b or 0, c or 0
    elif c is not None:  # H:M:S
        h, mins, secs = a, b, c
    else:  # M or M:S
        h, mins, secs = 0, a, b or 0
    return max(1, (days or 0) * 1440 + h * 60 + mins + (secs + 59) // 60)


# ---------------------------------------------------------------------------- the job


ENTRY = "mimkit.cli:main"  # the command a job runs, as a console-script entry point


class MimkitJob:
    """The callable submitit runs in every task (picklable: argv, the run folder and the
    entry point's name, which is resolved in the job: this module never imports the CLI
    that calls it)."""

    def __init__(self, argv: list[str], run_dir: str | Path, entry: str = ENTRY):
        self.argv, self.run_dir, self.entry = list(argv), str(run_dir), entry

    def __call__(self) -> int:
        set_dist_env()
        module, _, name = self.entry.partition(":")
        main = getattr(importlib.import_module(module), name)
        code = main(self.argv)
        if code != 0:
            raise RuntimeError(f"mimkit {self.argv[0]} ended with exit code {code}")
        return code

    def checkpoint(self):
        """submitit's preemption / time-out hook: the same command again, continuing from
        the run folder's last checkpoint when there is one."""
        from submitit.helpers import DelayedSubmission

        argv = self.argv
        if (Path(self.run_dir) / "checkpoint-last.pth").is_file():
            argv = [*_drop_flag(argv, "--resume"), "--resume", self.run_dir]
        return DelayedSubmission(type(self)(argv, self.run_dir, self.entry))


def set_dist_env() -> None:
    """The variables torchrun would set, from the Slurm (or local) job environment."""
    import submitit

    env = submitit.JobEnvironment()
    per_node = env.num_tasks // max(env.num_nodes, 1)
    # set, not defaulted: sbatch exports the submitting shell's variables, which may hold
    # a stale address from an earlier torchrun session
    os.environ["MASTER_ADDR"] = "127.0.0.1" if env.num_nodes == 1 else env.hostnames[0]
    # every task of a job derives the same port from its id (a requeued job keeps it)
    os.environ["MASTER_PORT"] = str(20000 + zlib.crc32(env.job_id.encode()) % 20000)
    os.environ.update(
        RANK=str(env.global_rank),
        WORLD_SIZE=str(env.num_tasks),
        LOCAL_RANK=str(env.local_rank),
        LOCAL_WORLD_SIZE=str(per_node),
        GROUP_RANK=str(env.node),
    )


def _drop_flag(argv: list[str], flag: str) -> list[str]:
    """argv without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


# ---------------------------------------------------------------------------- submitting


def submit(argv: list[str], spec: SlurmSpec | str, run_dir: str | Path):
    """Submit ``mimkit *argv`` (without ``--slurm``) as a job writing to ``run_dir``;
    submitit's files (pickles, per-task ``<job>_<rank>_log.out/err``) go to ``run_dir/submitit``.
    Returns the submitit job."""
    try:
        import submitit
    except ImportError:
        raise UserError("--slurm needs submitit: pip install 'mimkit[slurm]'") from None
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.cluster == "slurm" and submitit.SlurmExecutor.affinity() <= 0:
        raise UserError(
            "--slurm: no Slurm here (srun not found); submit from a login node, or add "
            "cluster=local to run the job on this machine"
        )
    run_dir = Path(run_dir).resolve()
    argv = [*_drop_flag(argv, "--slurm"), *([] if _has(argv, "--out") else ["--out", str(run_dir)])]
    executor = submitit.AutoExecutor(folder=run_dir / "submitit", cluster=spec.cluster)
    executor.update_parameters(
        name=spec.name,
        nodes=spec.nodes,
        tasks_per_node=spec.tasks,
        gpus_per_node=spec.gpus_per_node,
        cpus_per_task=spec.cpus_per_task,
        mem_gb=spec.mem_gb,
        timeout_min=spec.time,
        slurm_partition=spec.partition,
        slurm_account=spec.account,
        slurm_qos=spec.qos,
        slurm_constraint=spec.constraint,
        slurm_signal_delay_s=120,  # time to finish a checkpoint write before the kill
    )
    return executor.submit(MimkitJob(argv, run_dir))


def _has(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def maybe_submit(argv: list[str], spec: str | None, run_dir: str | Path) -> int | None:
    """The CLI's ``--slurm SPEC``: None when ``spec`` is None (run here as usual); else
    submit, print the job id and log files, and return 0 (the command's exit code)."""
    if not spec:
        return None
    job = submit(argv, spec, run_dir)
    print(f"submitted job {job.job_id}: mimkit {' '.join(argv[:1])} -> {Path(run_dir)}")
    print(f"logs: {job.paths.stdout} and {job.paths.stderr.name} (rank 0; rank r: _r_log)")
    return 0
