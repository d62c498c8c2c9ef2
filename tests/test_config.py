from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from relayrl.config import JobConfig
from relayrl.config_loader import load_config
from relayrl.errors import JobConfigError, RelayrlError, UserError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relayrl.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_examples_validate(example: str) -> None:
    load_config(EXAMPLES / example)


def test_overrides_are_typed_and_nested() -> None:
    config = load_config(
        EXAMPLES / "quickstart.yaml",
        ["trainer.steps=7", "learner.lr=3e-4", "env.params.operators=['*']"],
    )
    assert config.trainer.steps == 7
    assert config.learner.lr == pytest.approx(3e-4)
    assert config.env.params["operators"] == ["*"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("learner.lrr=1", "learner.lrr: unknown field"),
        ("learner.lr=fast", "learner.lr: Input should be a valid number"),
        ("trainer.steps=0", "trainer.steps: Input should be greater than or equal to 1"),
        ("rollout.engine=tgi", "rollout.engine: Input should be 'transformers' or 'vllm'"),
        ("learner.algorithm.loss.name=nope", "learner.algorithm.loss"),
        ("learner.zero_stage=5", "learner.zero_stage"),
    ],
)
def test_bad_field_exits_2_with_one_line_naming_it(override: str, expected: str) -> None:
    result = run_cli("train", str(EXAMPLES / "quickstart.yaml"), "--set", override)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_env_params_exit_2_before_anything_starts(tmp_path: Path) -> None:
    result = run_cli(
        "train", str(EXAMPLES / "quickstart.yaml"), "--set", "env.params.max_operand=-5",
        "--set", f"output.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 2
    assert "env.params" in result.stderr and "min_operand" in result.stderr


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(JobConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer: {steps: 3\n")
    with pytest.raises(JobConfigError, match="not valid YAML at line"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(JobConfigError, match="mapping"):
        load_config(listed)
    with pytest.raises(JobConfigError, match=r"key\.sub=value"):
        load_config(None, ["novalue"])
    with pytest.raises(JobConfigError, match="not a section"):
        load_config(None, ["trainer.steps=3", "trainer.steps.x=1"])


def test_buffer_too_small_for_backlog_is_rejected() -> None:
    with pytest.raises(JobConfigError, match=r"buffer: .*maxlen|maxlen"):
        load_config(None, ["buffer.maxlen=1000", "trainer.prompts_per_step=500"])


NCCL_READY = [
    "rollout.engine=vllm",
    "rollout.gpus_per_worker=2",
    "rollout.vllm.tensor_parallel_size=2",
    "rollout.weight_update=interrupt",
    "rollout.weight_transport=nccl",
    "learner.gpus_per_rank=1",
]


def test_gpu_placement_and_weight_transport_are_checked_together() -> None:
    config = load_config(None, NCCL_READY)
    assert config.rollout.vllm.tensor_parallel_size == 2
    with pytest.raises(JobConfigError, match=r"nccl needs learner\.gpus_per_rank: 1;"):
        load_config(None, [*NCCL_READY, "learner.gpus_per_rank=0"])
    with pytest.raises(JobConfigError) as refused:
        load_config(None, ["rollout.weight_transport=nccl"])
    for needed in ("rollout.engine: vllm", "gpus_per_worker", "gpus_per_rank", "interrupt"):
        assert needed in str(refused.value)
    with pytest.raises(JobConfigError, match=r"below rollout\.vllm\.tensor_parallel_size 2"):
        load_config(None, [*NCCL_READY, "rollout.gpus_per_worker=1"])
    with pytest.raises(JobConfigError, match="transformers engine samples on CPU"):
        load_config(None, ["rollout.gpus_per_worker=1"])
    with pytest.raises(JobConfigError, match=r"max_model_len 512 is below .*max_total_tokens 2048"):
        load_config(None, [*NCCL_READY, "rollout.vllm.max_model_len=512"])
    with pytest.raises(JobConfigError, match=r"rollout\.vllm\.tp: unknown field"):
        load_config(None, ["rollout.vllm.tp=2"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPUs")
def test_gpus_a_local_ray_lacks_exit_2_instead_of_waiting(tmp_path: Path) -> None:
    result = run_cli(
        "train", str(EXAMPLES / "quickstart.yaml"), "--set", "rollout.engine=vllm",
        "--set", "rollout.gpus_per_worker=1", "--set", f"output.dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "asks for 2 GPUs" in result.stderr and "has 0" in result.stderr


def test_buffer_url_password_is_redacted_from_every_dump() -> None:
    config = load_config(None, ["buffer.url=redis://user:p%40ss@redis.example:6379/2"])
    assert config.buffer.url == "redis://user:p%40ss@redis.example:6379/2"  # used to connect
    dumped = config.model_dump(mode="json")["buffer"]["url"]
    assert dumped == "redis://user:***@redis.example:6379/2"
    assert "p%40ss" not in config.model_dump_json()
    tls = load_config(None, ["buffer.url=rediss://redis.example:6380/0?ssl_ca_certs=/ca.pem"])
    assert tls.model_dump()["buffer"]["url"] == tls.buffer.url


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["buffer.password_env=PW"], "buffer.password_env is set but buffer.url is not"),
        (
            ["buffer.url=redis://:pw@h:6379/0", "buffer.password_env=PW"],
            "buffer.url (password part) and buffer.password_env both give a Redis password",
        ),
        (
            ["buffer.url=redis://h:6379/0", "buffer.password_env=PW", "buffer.password_file=/f"],
            "buffer.password_env and buffer.password_file both give",
        ),
        (["buffer.url=redis://:pw@h:port/0"], "buffer.url: 'redis://:***@h:port/0' is not a valid"),
        (["buffer.url=unix://"], "names no socket path"),
        (["buffer.url=redis://:6379/0"], "names no host"),
    ],
)
def test_buffer_url_and_password_sources_are_checked(overrides: list[str], expected: str) -> None:
    with pytest.raises(JobConfigError) as refused:
        load_config(None, overrides)
    assert expected in str(refused.value)
    assert ":pw@" not in str(refused.value)


def test_output_dir_substitutes_only_the_job_name() -> None:
    assert load_config(None, ["name=j1", "output.dir='runs/{name}/a'"]).output_dir == "runs/j1/a"
    with pytest.raises(JobConfigError, match=r"output\.dir: .*only \{name\} may be substituted"):
        load_config(None, ["output.dir='runs/{job}'"])


def test_the_schema_documents_every_field_of_every_section() -> None:
    result = run_cli("config", "--schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    models = [schema, *schema["$defs"].values()]
    fields = {
        f"{model.get('title')}.{name}": spec
        for model in models
        for name, spec in model.get("properties", {}).items()
    }
    assert "RolloutConfig.max_concurrent_groups" in fields and "KLConfig.coef" in fields
    assert [name for name, spec in fields.items() if not spec.get("description")] == []
    assert fields["LearnerConfig.zero_stage"]["enum"] == ["auto", 0, 1, 2, 3]  # Literals survive


@pytest.mark.parametrize(
    ("overrides", "zero_stage", "micro_batch_tokens"),
    [
        ([], 0, 512),  # one CPU rank: nothing to shard, small micro-batches
        (["learner.num_ranks=2"], 2, 512),
        (["learner.gpus_per_rank=1"], 0, 4096),
        (["learner.zero_stage=1", "learner.micro_batch_tokens=64"], 1, 64),
    ],
)
def test_auto_learner_settings_resolve_by_rank_count_and_device(
    overrides: list[str], zero_stage: int, micro_batch_tokens: int
) -> None:
    learner = load_config(None, overrides).learner
    assert learner.resolved_zero_stage == zero_stage
    assert learner.resolved_micro_batch_tokens == micro_batch_tokens


def test_show_prints_the_resolved_config_with_defaults_and_overrides() -> None:
    result = run_cli(
        "config", "--show", str(EXAMPLES / "quickstart.yaml"), "--set", "trainer.steps=3",
        "--set", "buffer.url=redis://:secret@h:6379/0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["trainer"]["steps"] == 3
    assert shown["learner"]["algorithm"]["loss"]["eps_low"] == 0.2  # a default the file omits
    assert "secret" not in result.stdout
    expected = load_config(EXAMPLES / "quickstart.yaml", ["trainer.steps=3"])
    del shown["buffer"]["url"]
    assert JobConfig.model_validate(shown) == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--show", str(EXAMPLES / "quickstart.yaml"), "--set", "trainer.stps=3"), "trainer.stps"),
        (("--show", "no-such.yaml"), "cannot read config"),
        ((), "give --schema, or --show CONFIG"),
        (("--schema", "--set", "trainer.steps=3"), "--schema takes no config"),
    ],
)
def test_config_command_refuses_with_one_line_and_exit_2(
    args: tuple[str, ...], expected: str
) -> None:
    result = run_cli("config", *args)
    assert result.returncode == 2
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_derived_values_are_properties_of_the_config() -> None:
    config = load_config(
        None,
        [
            "rollout.cpus_per_worker=2.5",
            "learner.cpus_per_rank=0.5",
            "trainer.prompts_per_step=6",
            "rollout.vllm.weight_bucket_mib=3",
            "rollout.vllm.cpu_kv_cache_gib=0.5",
            "learner.batch_timeout_s=10",
            "rollout.vllm.weight_sync_timeout_s=5",
            "output.dir=/runs/x",
        ],
    )
    assert config.rollout.torch_thread_count == 2  # whole cores of 2.5 CPUs
    assert config.learner.torch_thread_count == 1  # at least one
    assert config.concurrent_groups == 6  # auto: one learner batch
    assert config.rollout.vllm.weight_bucket_bytes == 3 << 20
    assert config.rollout.vllm.cpu_kv_cache_bytes == 1 << 29
    assert config.weight_wait_s == 15.0
    assert config.checkpoint_dir == Path("/runs/x/checkpoints")
    assert config.local_cpus == 7  # 0.5 + 2 * 2.5 rounded up, plus one for the driver
    assert config.trainer.rollout_seed(0) == 0 != config.trainer.rollout_seed(3)
    fixed = load_config(
        None, ["rollout.torch_threads=3", "rollout.max_concurrent_groups=2", "ray.num_cpus=9"]
    )
    assert (fixed.rollout.torch_thread_count, fixed.concurrent_groups) == (3, 2)
    assert fixed.local_cpus == 9


def test_every_user_error_is_one_kind_and_the_cli_maps_it_to_exit_2(tmp_path: Path) -> None:
    from relayrl.envs.registry import EnvConfigError
    from relayrl.models import ModelNotFoundError

    assert issubclass(JobConfigError, UserError) and issubclass(UserError, RelayrlError)
    assert issubclass(ModelNotFoundError, JobConfigError)
    assert issubclass(EnvConfigError, JobConfigError)
    result = run_cli(
        "train", str(EXAMPLES / "quickstart.yaml"), "--set", f"model.path={tmp_path / 'none'}",
        "--set", f"output.dir={tmp_path / 'out'}",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
