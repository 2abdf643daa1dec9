"""The worker's and beat's liveness: the heartbeat file (``workers.liveness``) and its probe (``workers.probe``).

The probe passes on a fresh file, fails on a stale or missing one while the broker answers, and passes
while the broker does not answer either (a Redis outage must not restart the fleet). The processes
themselves are in ``tests/integration/test_liveness.py``.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from celery import Celery
from celery import _state as celery_state

from autopilot import cli, config, errors
from workers import liveness, probe
from workers.up import free_port

NOW = 1_800_000_000.0


def heartbeat(tmp_path: Path, age_s: float) -> str:
    path = tmp_path / "alive"
    path.write_text("")
    os.utime(path, (NOW - age_s, NOW - age_s))
    return str(path)


def answers() -> bool:
    return False  # broker_away: the broker answers


def away() -> bool:
    return True


def test_a_fresh_heartbeat_is_live(tmp_path: Path) -> None:
    code, said = probe.verdict(heartbeat(tmp_path, 5), 120, answers, now=NOW)
    assert (code, said) == (0, "live: heartbeat 5 s old")


def test_a_stale_heartbeat_fails_while_the_broker_answers(tmp_path: Path) -> None:
    code, said = probe.verdict(heartbeat(tmp_path, 121), 120, answers, now=NOW)
    assert code == 1
    assert "121 s old" in said and "stopped making progress" in said


def test_a_heartbeat_left_far_ahead_by_a_clock_that_went_back_fails_while_the_broker_answers(tmp_path: Path) -> None:
    # A live process marks again within its interval after the jump; a hung one's mark stays an hour ahead.
    code, said = probe.verdict(heartbeat(tmp_path, -3600), 120, answers, now=NOW)
    assert code == 1 and "3600 s in the future" in said
    assert probe.verdict(heartbeat(tmp_path, -3600), 120, away, now=NOW)[0] == 0
    assert probe.verdict(heartbeat(tmp_path, -2), 120, answers, now=NOW) == (0, "live: heartbeat 0 s old")


def test_a_missing_heartbeat_fails_while_the_broker_answers(tmp_path: Path) -> None:
    code, said = probe.verdict(str(tmp_path / "none"), 120, answers, now=NOW)
    assert code == 1 and "no heartbeat file" in said


@pytest.mark.parametrize("age_s", [121, None])
def test_a_stale_or_missing_heartbeat_passes_while_the_broker_is_away(tmp_path: Path, age_s: float | None) -> None:
    path = heartbeat(tmp_path, age_s) if age_s is not None else str(tmp_path / "none")
    code, said = probe.verdict(path, 120, away, now=NOW)
    assert code == 0 and "broker does not answer" in said


def test_a_fresh_heartbeat_never_asks_the_broker(tmp_path: Path) -> None:
    def asked() -> bool:
        raise AssertionError("the broker was asked about a fresh heartbeat")

    assert probe.verdict(heartbeat(tmp_path, 0), 120, asked, now=NOW)[0] == 0


def test_a_heartbeat_that_cannot_be_read_fails(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    code, said = probe.verdict(str(tmp_path / "file" / "alive"), 120, away, now=NOW)
    assert code == 1 and "cannot read" in said


def test_a_broker_on_a_closed_port_is_away_and_no_broker_is_no_outage() -> None:
    assert probe.broker_away({"AUTOPILOT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, timeout_s=1) is True
    assert probe.broker_away({}) is False
    assert probe.broker_away({"AUTOPILOT_REDIS_URL": "sentinel://"}) is False


def test_a_broker_that_has_not_answered_within_the_timeout_in_all_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each socket has its own timeout, but a question can take many in turn (a Sentinel client asks each
    # Sentinel, then the master; a name lookup has none at all). The kubelet counts a probe past its
    # timeoutSeconds as a failure, so an outage must be answered within the probe's own bound, not after.
    import redis

    release = threading.Event()

    class Slow:
        def ping(self) -> bool:
            release.wait(30)
            return True  # answers, but long after the probe may wait

        def close(self) -> None:
            pass

    monkeypatch.setattr(redis.Redis, "from_url", lambda *args, **kwargs: Slow())
    try:
        assert probe.broker_away({"AUTOPILOT_REDIS_URL": "redis://redis.example:6379/0"}, timeout_s=0.05) is True
    finally:
        release.set()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_unexpected_error_asking_the_broker_excuses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    class Broken:
        def ping(self) -> bool:
            raise RuntimeError("a bug, not an outage")

        def close(self) -> None:
            pass

    monkeypatch.setattr(redis.Redis, "from_url", lambda *args, **kwargs: Broken())
    assert probe.broker_away({"AUTOPILOT_REDIS_URL": "redis://redis.example:6379/0"}, timeout_s=5) is False


def test_the_command_reads_its_file_and_age_from_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "alive"
    path.write_text("")
    env = {"AUTOPILOT_LIVENESS_FILE": str(path), "AUTOPILOT_LIVENESS_MAX_AGE": "1m"}
    assert probe.main([], env) == 0
    assert capsys.readouterr().out.startswith("live: heartbeat")
    old = time.time() - 3600
    os.utime(path, (old, old))
    away_env = {**env, "AUTOPILOT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    assert probe.main([], away_env) == 0  # stale, but the broker is away too
    assert probe.main(["--max-age", "2h"], env) == 0
    assert probe.main(["--file", str(tmp_path / "none")], {}) == 1  # no broker named: nothing excuses it


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        ([], {}),
        (["--max-age", "0"], {"AUTOPILOT_LIVENESS_FILE": "/tmp/x"}),
        (["--max-age", "soon"], {"AUTOPILOT_LIVENESS_FILE": "/tmp/x"}),
        ([], {"AUTOPILOT_LIVENESS_FILE": "relative/alive"}),
        (["--file", "alive"], {}),
    ],
)
def test_usage_and_setting_errors_exit_2(argv: list[str], env: dict[str, str]) -> None:
    assert probe.main(argv, env) == 2


def test_the_cli_runs_the_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPILOT_LIVENESS_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AUTOPILOT_REDIS_URL", raising=False)
    assert cli.main(["probe", "--max-age", "10s"]) == 1


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("AUTOPILOT_LIVENESS_FILE", "alive"),
        ("AUTOPILOT_LIVENESS_INTERVAL", "0"),
        ("AUTOPILOT_LIVENESS_MAX_AGE", "-5s"),
    ],
)
def test_liveness_settings_are_validated(variable: str, text: str) -> None:
    with pytest.raises(errors.BadParameter) as caught:
        config.Settings.from_env({variable: text})
    assert caught.value.field == variable


@pytest.mark.parametrize(
    "env",
    [
        {"AUTOPILOT_LIVENESS_INTERVAL": "5m"},  # past the default 2 min
        {"AUTOPILOT_LIVENESS_INTERVAL": "30s", "AUTOPILOT_LIVENESS_MAX_AGE": "30s"},
    ],
)
def test_a_max_age_not_above_the_interval_is_refused(env: dict[str, str]) -> None:
    # Between two marks the age reaches the interval: every live worker and beat would fail its probe.
    with pytest.raises(errors.BadParameter) as caught:
        config.Settings.from_env(env)
    assert caught.value.field == "AUTOPILOT_LIVENESS_MAX_AGE"
    assert config.Settings.from_env({"AUTOPILOT_LIVENESS_INTERVAL": "30s"}).liveness_max_age_s == 120


def test_touch_creates_the_file_then_moves_its_time(tmp_path: Path) -> None:
    path = str(tmp_path / "alive")
    liveness.touch(path)
    assert os.path.exists(path)
    old = time.time() - 3600
    os.utime(path, (old, old))
    liveness.touch(path)
    assert os.stat(path).st_mtime > old


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Celery:
    monkeypatch.setattr(celery_state, "_on_app_finalizers", set())
    return Celery("liveness-test", set_as_current=False)


def test_without_a_file_nothing_is_installed(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(liveness.POOL, "threads", 0)
    settings = config.Settings()
    liveness.install_worker(app, settings, 4)
    assert liveness.POOL.threads == 4  # the pool is watched without a file too: the node record says it
    liveness.install_beat(app, settings)
    assert liveness.ConsumerHeartbeat not in app.steps["consumer"]
    assert app.conf.beat_scheduler != liveness.BEAT_SCHEDULER


def test_with_a_file_the_consumer_and_beat_mark_it(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(liveness.POOL, "threads", 0)
    settings = config.Settings(liveness_file="/tmp/alive", liveness_interval_s=7.0)
    liveness.install_worker(app, settings, 2)
    liveness.install_beat(app, settings)
    assert liveness.ConsumerHeartbeat in app.steps["consumer"]
    assert app.conf.beat_scheduler == liveness.BEAT_SCHEDULER
    assert app.conf.beat_max_loop_interval == 7.0  # beat wakes to mark it, not every 5 minutes
