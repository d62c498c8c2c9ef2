"""Bad configs end at the CLI with exit 2 and one line naming the field, before Redis or Ray
start; an external Redis password reaches no config.yaml, log or pickled actor argument."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from relayrl.cluster.embedded_redis import EmbeddedRedis
from relayrl.cluster.preflight import check_buffer
from relayrl.cluster.redis_buffer import RedisStreamBuffer
from relayrl.cluster.redis_password import RedisPassword
from relayrl.config_loader import load_config
from relayrl.errors import JobConfigError
from relayrl.ports import free_port

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"
SECRET = "s3cret-Pa55word"


def train(
    tmp_path: Path, *overrides: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`relayrl train` in a child with a private Ray temp dir, so a Ray start would show."""
    child_env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "raytmp"), **(env or {})}
    child_env.pop("RAY_ADDRESS", None)
    args = [arg for override in overrides for arg in ("--set", override)]
    # The timeout bounds a check that would otherwise retry forever (a closed Redis port).
    return subprocess.run(
        [sys.executable, "-m", "relayrl.cli", "train", str(QUICKSTART), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env,
        cwd=tmp_path,
    )


def assert_refused(result: subprocess.CompletedProcess[str], tmp_path: Path, field: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("relayrl: ") and field in lines[0], lines[0]
    # Nothing started: no Ray session, no embedded Redis data.
    assert not (tmp_path / "raytmp").exists()
    assert not list(tmp_path.rglob("appendonly*"))
    return lines[0]


def closed_loopback_port() -> int:
    port = free_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def test_loss_target_that_cannot_be_imported(tmp_path: Path) -> None:
    result = train(
        tmp_path,
        "learner.algorithm.loss.name=custom",
        "learner.algorithm.loss.target=no_such_package.losses:make",
        f"output.dir={tmp_path}/run",
    )
    line = assert_refused(result, tmp_path, "learner.algorithm.loss.target")
    assert "no_such_package" in line


def test_loss_target_of_the_wrong_kind_or_failing_at_import(tmp_path: Path) -> None:
    (tmp_path / "broken_loss.py").write_text("def make(:\n")
    for target, expected in (
        ("os:getcwd", "not a PolicyLoss"),
        ("json:loads", "rejects its params"),
        ("broken_loss:make", "SyntaxError"),
    ):
        result = train(
            tmp_path,
            "learner.algorithm.loss.name=custom",
            f"learner.algorithm.loss.target={target}",
            f"output.dir={tmp_path}/run",
            env={"PYTHONPATH": str(tmp_path)},
        )
        assert expected in assert_refused(result, tmp_path, "learner.algorithm.loss.target")


def test_env_target_that_raises_at_import_or_is_no_env(tmp_path: Path) -> None:
    (tmp_path / "boom_env.py").write_text("raise RuntimeError('boom at import')\n")
    for target, expected in (
        ("boom_env:Env", "RuntimeError: boom at import"),
        ("json:loads", "not an EnvSpec or an Env class"),
    ):
        result = train(
            tmp_path, f"env.name={target}", f"output.dir={tmp_path}/run",
            env={"PYTHONPATH": str(tmp_path)},
        )  # fmt: skip
        assert expected in assert_refused(result, tmp_path, "env.name")


def test_output_dir_that_is_a_file(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    line = assert_refused(train(tmp_path, f"output.dir={taken}"), tmp_path, "output.dir")
    assert "is a file" in line
    below = assert_refused(train(tmp_path, f"output.dir={taken}/run"), tmp_path, "output.dir")
    assert "not a writable folder" in below
    assert taken.read_text() == "not a folder"


def test_buffer_url_that_is_not_a_url(tmp_path: Path) -> None:
    for url in ("not a url", "http://localhost:6379", "redis://localhost:99999/0"):
        result = train(tmp_path, f"buffer.url={url}", f"output.dir={tmp_path}/run")
        assert_refused(result, tmp_path, "buffer.url")


def test_buffer_url_on_a_closed_port_gives_up_after_connect_timeout(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{closed_loopback_port()}/0"
    result = train(
        tmp_path, f"buffer.url={url}", "buffer.connect_timeout_s=1", f"output.dir={tmp_path}/run"
    )
    line = assert_refused(result, tmp_path, "buffer.url")
    assert "no Redis answered within 1s" in line


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("learner.lr=.inf", "learner.lr"),
        ("learner.lr=nan", "learner.lr"),
        ("learner.betas=[0.9, .nan]", "learner.betas.1"),
        ("learner.algorithm.kl.coef=inf", "learner.algorithm.kl.coef"),
        ("env.params.reward_weights.correct=-.inf", "env.params.reward_weights.correct"),
        ("buffer.connect_timeout_s=.inf", "buffer.connect_timeout_s"),
        ("env.params.reward_weights.format=inf", "env.params.reward_weights.format"),
    ],
)
def test_nan_and_infinity_are_refused(tmp_path: Path, override: str, field: str) -> None:
    line = assert_refused(train(tmp_path, override), tmp_path, field)
    assert "finite" in line or "NaN and infinity" in line


LAX_ENV = """
from pydantic import BaseModel


class Params(BaseModel):
    weight: float = 1.0


class LaxEnv:
    params_model = Params

    @staticmethod
    def make_tasks(params):
        return None
"""


def test_nan_text_in_plugin_env_params_is_refused_after_the_env_parses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relayrl.cluster.preflight import check_env

    (tmp_path / "lax_env.py").write_text(LAX_ENV)
    monkeypatch.syspath_prepend(str(tmp_path))
    check_env(load_config(None, ["env.name=lax_env:LaxEnv", "env.params.weight=0.5"]))
    # "nan" reaches the env as text, and this env's own params model accepts it as NaN.
    with pytest.raises(JobConfigError, match=r"^env\.params\.weight: NaN and infinity"):
        check_env(load_config(None, ["env.name=lax_env:LaxEnv", "env.params.weight=nan"]))


@pytest.fixture
def guarded_redis(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "redis", password=SECRET).start()
    yield server
    server.stop()


def test_password_from_env_or_file_reaches_redis_and_no_pickle(
    guarded_redis: EmbeddedRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = f"redis://127.0.0.1:{guarded_redis.port}/0"
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(SECRET + "\n")
    monkeypatch.setenv("TEST_REDIS_PASSWORD", SECRET)
    for source in (
        "buffer.password_env=TEST_REDIS_PASSWORD",
        f"buffer.password_file={secret_file}",
    ):
        config = load_config(None, [f"buffer.url={bare}", source])
        check_buffer(config)
        buffer = RedisStreamBuffer(
            bare, "secret:stream", password=RedisPassword.from_config(config.buffer)
        )
        payload = pickle.dumps(buffer.with_consumer("worker-1"))
        assert SECRET.encode() not in payload
        assert pickle.loads(payload).client.ping()

    with pytest.raises(JobConfigError, match=r"^buffer\.url: Redis at .* refused the login"):
        check_buffer(load_config(None, [f"buffer.url={bare}"]))
    monkeypatch.setenv("TEST_REDIS_PASSWORD", "wrong")
    with pytest.raises(JobConfigError, match=r"^buffer\.password_env: .*refused the login"):
        check_buffer(
            load_config(None, [f"buffer.url={bare}", "buffer.password_env=TEST_REDIS_PASSWORD"])
        )
    monkeypatch.delenv("TEST_REDIS_PASSWORD")
    with pytest.raises(
        JobConfigError, match=r"^buffer\.password_env: .*TEST_REDIS_PASSWORD is unset"
    ):
        check_buffer(
            load_config(None, [f"buffer.url={bare}", "buffer.password_env=TEST_REDIS_PASSWORD"])
        )
    with pytest.raises(JobConfigError, match=r"^buffer\.password_file .*cannot read it"):
        check_buffer(
            load_config(None, [f"buffer.url={bare}", f"buffer.password_file={tmp_path}/none"])
        )


@pytest.mark.parametrize("where", ["url", "env"])
def test_password_never_lands_in_config_yaml_or_the_log(
    guarded_redis: EmbeddedRedis, tmp_path: Path, where: str
) -> None:
    """The job gets past preflight and writes config.yaml, then stops at a missing model,
    before Redis or Ray start."""
    bare = f"redis://127.0.0.1:{guarded_redis.port}/0"
    if where == "url":
        source = [f"buffer.url=redis://:{SECRET}@127.0.0.1:{guarded_redis.port}/0"]
    else:
        source = [f"buffer.url={bare}", "buffer.password_env=TEST_REDIS_PASSWORD"]
    result = train(
        tmp_path, *source, f"model.path={tmp_path}/no-model", f"output.dir={tmp_path}/run",
        env={"TEST_REDIS_PASSWORD": SECRET},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "model.path" in result.stderr or "no-model" in result.stderr
    written = (tmp_path / "run" / "config.yaml").read_text()
    assert SECRET not in written and SECRET not in result.stderr + result.stdout
    buffer = yaml.safe_load(written)["buffer"]
    if where == "url":
        assert buffer["url"] == f"redis://:***@127.0.0.1:{guarded_redis.port}/0"
        assert "buffer.password_env" in result.stderr  # the warning points at the fix
    else:
        assert buffer["url"] == bare and buffer["password_env"] == "TEST_REDIS_PASSWORD"
