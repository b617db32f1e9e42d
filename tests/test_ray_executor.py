"""Shadow runs executed by Ray on a real local cluster: same results as a local run, only missing
chunks submitted, failures reported by chunk range, an interrupted run keeps its sealed chunks."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from bnprivacy.config import Config
from bnprivacy.data import load_dataset
from bnprivacy.runs import chunks, disk, local
from bnprivacy.runs import ray as ray_executor
from bnprivacy.runs.shadow import shadow_run
from bnprivacy.runs.spec import RunSpec, run_folder

REPO = Path(__file__).resolve().parents[1]
CFG = Config(norm="batch", width=8, epochs=2, batch_size=32, train_size=128, device="cpu")
SPEC = RunSpec(CFG, n_models=4)


@pytest.fixture(scope="session")
def cluster():
    """One local Ray cluster for the whole test session (starting one takes seconds)."""
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data():
    return load_dataset(CFG)


@pytest.fixture
def submitted(monkeypatch):
    """The chunks the driver submits, in submission order."""
    real = ray_executor.submit_chunk

    def spy(task, spec, data_ref, masks_ref, models, options):
        calls.append(list(models))
        ref = real(task, spec, data_ref, masks_ref, models, options)
        calls.refs[tuple(models)] = ref
        return ref

    calls = SubmittedChunks()
    monkeypatch.setattr(ray_executor, "submit_chunk", spy)
    return calls


class SubmittedChunks(list):
    """The models of every submitted chunk; ``refs`` maps them to the task's object reference."""

    def __init__(self):
        super().__init__()
        self.refs = {}


def local_run(data, isolated_store, monkeypatch, name="local"):
    monkeypatch.setenv("BNPRIVACY_RESULTS", str(isolated_store / name))
    return shadow_run(SPEC, data, chunk_size=2, progress=False)


def assert_identical(a, b):
    """Bit for bit: masks, every weight and buffer, logits, and the training histories."""
    assert torch.equal(a.masks, b.masks)
    for model in range(SPEC.n_models):
        sa, sb = a.state_dict(model), b.state_dict(model)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a.logits_pool, b.logits_pool) and torch.equal(a.logits_test, b.logits_test)
    cols = ["model", "epoch", "train_loss", "train_acc", "test_acc"]
    assert a.history[cols].equals(b.history[cols])


def leftover_locks(run_folder: Path) -> list[Path]:
    return sorted(run_folder.glob("*.lock"))


def test_a_ray_run_equals_the_local_run_exactly(cluster, data, isolated_store, monkeypatch, submitted):
    reference = local_run(data, isolated_store, monkeypatch)
    monkeypatch.setenv("BNPRIVACY_RESULTS", str(isolated_store / "ray"))
    on_ray = shadow_run(SPEC, data, chunk_size=2, progress=False, executor="ray")
    assert sorted(submitted) == [[0, 1], [2, 3]]
    assert_identical(on_ray, reference)
    assert leftover_locks(run_folder(SPEC)) == []


def test_a_partly_sealed_run_submits_only_its_missing_chunks(cluster, data, isolated_store, monkeypatch,
                                                            submitted):
    reference = local_run(data, isolated_store, monkeypatch)
    monkeypatch.setenv("BNPRIVACY_RESULTS", str(isolated_store / "partial"))
    assert shadow_run(SPEC, data, chunk_size=2, shard="0/2", progress=False) is None  # seals models 0-1
    resumed = shadow_run(SPEC, data, chunk_size=2, progress=False, executor="ray")
    assert submitted == [[2, 3]]
    assert_identical(resumed, reference)


def test_a_failing_task_is_reported_with_its_chunk_range_and_the_sealed_chunks_stay(
        cluster, data, isolated_store, monkeypatch, submitted):
    real = ray_executor.train_chunk_files

    def fails_on_models_2_and_3(spec, data, masks, models, **options):  # runs on a Ray worker
        if list(models) == [2, 3]:
            raise ValueError("simulated failure on a worker")
        return real(spec, data, masks, models, **options)

    monkeypatch.setattr(ray_executor, "train_chunk_files", fails_on_models_2_and_3)
    with pytest.raises(ray_executor.ChunksFailed, match="models 2-3 of .*: ValueError: simulated failure on a worker"):
        shadow_run(SPEC, data, chunk_size=2, progress=False, executor="ray", max_retries=1)
    folder = run_folder(SPEC)
    assert disk.is_complete(folder / "models-00000-00001", required=chunks.CHUNK_FILES)
    assert not (folder / "models-00002-00003").exists()
    assert leftover_locks(folder) == []

    monkeypatch.setattr(ray_executor, "train_chunk_files", real)
    submitted.clear()
    finished = shadow_run(SPEC, data, chunk_size=2, progress=False, executor="ray")
    assert submitted == [[2, 3]]
    assert_identical(finished, local_run(data, isolated_store, monkeypatch))


def test_ctrl_c_cancels_the_outstanding_tasks_and_keeps_the_sealed_chunks(cluster, data, monkeypatch, submitted):
    real_train, real_write = ray_executor.train_chunk_files, ray_executor.write_chunk_files

    def models_2_and_3_take_long(spec, data, masks, models, **options):  # runs on a Ray worker
        if list(models) == [2, 3]:
            import time
            time.sleep(600)
        return real_train(spec, data, masks, models, **options)

    def ctrl_c_after_the_first_chunk(chunk, files):
        real_write(chunk, files)
        raise KeyboardInterrupt("simulated Ctrl-C")

    monkeypatch.setattr(ray_executor, "train_chunk_files", models_2_and_3_take_long)
    monkeypatch.setattr(ray_executor, "write_chunk_files", ctrl_c_after_the_first_chunk)
    with pytest.raises(KeyboardInterrupt):  # two 1-CPU tasks run side by side; models 0-1 finish first
        shadow_run(SPEC, data, chunk_size=2, progress=False, executor="ray", cpus_per_task=1)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(submitted.refs[(2, 3)], timeout=120)  # a guard: a task left running would sleep 600 s
    folder = run_folder(SPEC)
    assert disk.is_complete(folder / "models-00000-00001", required=chunks.CHUNK_FILES)
    assert not (folder / "models-00002-00003").exists() and leftover_locks(folder) == []

    monkeypatch.setattr(ray_executor, "train_chunk_files", real_train)
    monkeypatch.setattr(ray_executor, "write_chunk_files", real_write)
    submitted.clear()
    shadow_run(SPEC, data, chunk_size=2, progress=False, executor="ray")
    assert submitted == [[2, 3]]


# Seconds a stand-in task waits for the Ctrl-C that cancels it before failing on its own: a bound,
# so that a Ctrl-C that never arrives fails the test in minutes with a clear error, never a hang.
CTRL_C_BOUND_SECONDS = 120


def test_a_sigint_while_chunks_train_cancels_their_tasks_and_frees_their_locks(cluster, data, monkeypatch,
                                                                               submitted, tmp_path):
    started = tmp_path / "started"
    started.mkdir()

    def waits_for_ctrl_c(spec, data, masks, models, **options):  # runs on a Ray worker
        import time
        (started / f"{models[0]}").touch()
        deadline = time.monotonic() + CTRL_C_BOUND_SECONDS
        while time.monotonic() < deadline:  # short steps: a cancelled task is killed between them
            time.sleep(0.1)
        raise TimeoutError(f"no Ctrl-C cancelled this task within {CTRL_C_BOUND_SECONDS} s")

    interrupted = threading.Event()  # set once the driver reacts to the Ctrl-C (or the run ended)
    sent = []  # when each SIGINT was sent
    real_abandon = ray_executor._abandon

    def abandon(*args):
        interrupted.set()
        return real_abandon(*args)

    def press_ctrl_c_once_both_tasks_run():
        deadline = time.monotonic() + CTRL_C_BOUND_SECONDS
        while len(list(started.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(3):  # a signal that lands inside one of Ray's own calls can be lost: press again
            if interrupted.is_set():
                return
            os.kill(os.getpid(), signal.SIGINT)
            sent.append(time.monotonic())
            interrupted.wait(10)

    monkeypatch.setattr(ray_executor, "train_chunk_files", waits_for_ctrl_c)
    monkeypatch.setattr(ray_executor, "_abandon", abandon)
    # Python's own Ctrl-C handler, whatever an earlier test or library in this process installed.
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press_ctrl_c_once_both_tasks_run, daemon=True)
    presser.start()
    try:
        shadow_run(SPEC, data, chunk_size=2, progress=False, executor="ray", cpus_per_task=1, max_retries=0)
    except KeyboardInterrupt:
        pass
    except Exception as error:  # say what happened, so a failure on a loaded machine can be diagnosed
        pytest.fail(f"no KeyboardInterrupt: {type(error).__name__}: {error}; {len(sent)} SIGINT(s) sent, tasks "
                    f"started: {sorted(p.name for p in started.iterdir())}, SIGINT handler before the test: "
                    f"{previous_handler!r}")
    else:
        pytest.fail("the run finished without a KeyboardInterrupt")
    finally:
        interrupted.set()  # never a Ctrl-C after the run is over
        presser.join(timeout=60)
        signal.signal(signal.SIGINT, previous_handler)
    assert sorted(p.name for p in started.iterdir()) == ["0", "2"], "the Ctrl-C came while both tasks ran"
    for models in ([0, 1], [2, 3]):
        with pytest.raises(ray.exceptions.TaskCancelledError):
            ray.get(submitted.refs[tuple(models)], timeout=120)  # a guard: a task left running fails in 120 s
    folder = run_folder(SPEC)
    assert leftover_locks(folder) == [] and not list(folder.glob("models-*"))


def test_a_task_that_returns_no_files_fails_naming_its_chunk_and_the_others_stay(cluster, data, monkeypatch):
    real = ray_executor.train_chunk_files

    def returns_nothing_for_models_2_and_3(spec, data, masks, models, **options):  # runs on a Ray worker
        return None if list(models) == [2, 3] else real(spec, data, masks, models, **options)

    monkeypatch.setattr(ray_executor, "train_chunk_files", returns_nothing_for_models_2_and_3)
    with pytest.raises(ray_executor.ChunksFailed, match=r"models 2-3 of .*: RuntimeError: the Ray task of "
                                                     r"models-00002-00003 returned None instead of the chunk's files"
                       ) as failed:  # a None is a task that succeeded, for Ray: never retried
        shadow_run(SPEC, data, chunk_size=2, progress=False, executor="ray")
    assert str(failed.value).startswith("1 chunk(s) failed"), str(failed.value)
    folder = run_folder(SPEC)
    assert disk.is_complete(folder / "models-00000-00001", required=chunks.CHUNK_FILES)
    assert not (folder / "models-00002-00003").exists() and leftover_locks(folder) == []


@pytest.mark.parametrize("files, shown", [(None, "None"), ([b"x"], "a list"), ({"states.pt": "text"}, "a dict that")])
def test_a_task_result_that_is_not_chunk_files_is_a_clear_error_naming_the_chunk(tmp_path, files, shown):
    chunk = tmp_path / "run" / "models-00002-00003"
    with pytest.raises(RuntimeError, match=f"the Ray task of models-00002-00003 returned {shown}"):
        ray_executor.write_chunk_files(chunk, files)
    assert not chunk.exists()


def test_a_cuda_run_on_a_cluster_without_gpus_is_refused_before_any_chunk_is_claimed(cluster, data):
    spec = RunSpec(CFG.replace(device="cuda"), n_models=4)
    with pytest.raises(ValueError, match="the Ray cluster has no GPU"):
        shadow_run(spec, data, chunk_size=2, progress=False, executor="ray")
    assert leftover_locks(run_folder(spec)) == []
    assert not list(run_folder(spec).glob("models-*"))


def test_a_worker_whose_code_differs_from_the_drivers_refuses_to_train(cluster, data, monkeypatch):
    monkeypatch.setattr(ray_executor, "code_digest", lambda: "0" * 64)  # the driver now claims other code
    with pytest.raises(ray_executor.ChunksFailed, match="runs bnprivacy code that differs from the driver's"):
        shadow_run(SPEC, data, chunk_size=4, progress=False, executor="ray", max_retries=0)
    assert not list(run_folder(SPEC).glob("models-*"))


def test_chunk_files_with_a_path_or_a_bad_checksum_are_refused(tmp_path):
    chunk = tmp_path / "run" / "models-00000-00001"
    with pytest.raises(RuntimeError, match="refused"):
        ray_executor.write_chunk_files(chunk, {"../escape.csv": b"x"})
    manifest = b'{"files": {"states.pt": "0000", "history.csv": "0000"}}'
    with pytest.raises(RuntimeError, match="incomplete or corrupt"):
        ray_executor.write_chunk_files(chunk, {"states.pt": b"w", "history.csv": b"h", "manifest.json": manifest})
    assert not chunk.exists() and not (tmp_path / "escape.csv").exists()


def test_without_ray_installed_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(RuntimeError, match=r"pip install 'bnprivacy\[ray\]'"):
        ray_executor.connect()


def test_a_process_joined_to_one_cluster_refuses_another_address(cluster):
    with pytest.raises(ValueError, match="already joined the Ray cluster"):
        ray_executor.connect("127.0.0.1:1")


@pytest.mark.parametrize("kwargs, message", [
    (dict(executor="slurm"), "allowed values: local, ray"),
    (dict(executor="ray", shard="1/2"), "schedules the whole run"),
    (dict(address="10.0.0.5:6379"), "add --executor ray"),
    (dict(executor="ray", address="10.0.0.5"), "HOST:PORT"),
    (dict(executor="ray", cpus_per_task=0), "cpus_per_task=0 is not allowed"),
    (dict(executor="ray", max_retries=-1), "max_retries=-1 is not allowed"),
])
def test_bad_executor_input_is_refused_before_anything_is_written(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        shadow_run(SPEC, data, chunk_size=2, progress=False, **kwargs)
    assert not run_folder(SPEC).exists()


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers; yields its (host, port)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True)
    thread.start()
    yield server.getsockname()[:2]
    server.close()
    for conn, _ in accepted:
        conn.close()


def test_the_probe_tells_a_ray_head_from_a_silent_server(cluster, silent_server, monkeypatch):
    host, port = cluster.get_runtime_context().gcs_address.rsplit(":", 1)
    ray_executor.probe_grpc((host, int(port)))  # the test cluster's GCS answers
    monkeypatch.setattr(ray_executor, "CONNECT_TIMEOUT_SECONDS", 1.0)
    with pytest.raises(OSError, match="did not answer within 1 s"):
        ray_executor.probe_grpc(silent_server)


def test_an_unreachable_address_is_one_clear_error_and_writes_nothing(isolated_store):
    env = {**os.environ, "BNPRIVACY_RESULTS": str(isolated_store / "results")}
    done = subprocess.run(
        [sys.executable, "-m", "bnprivacy", "shadow", "4", "-c", "epochs", "1", "-c", "width", "4",
         "--chunk-size", "2", "--executor", "ray", "--address", "127.0.0.1:1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # a guard against a hang
    assert done.returncode == 1
    assert "error: no Ray cluster could be reached at address='127.0.0.1:1'" in done.stderr
    assert "ray start --head" in done.stderr and "Traceback" not in done.stderr
    assert not (isolated_store / "results").exists()


def test_an_unreachable_ray_address_in_the_environment_is_one_clear_error_in_seconds(isolated_store):
    # Issue 38: RAY_ADDRESS=127.0.0.1:1 printed reconnect warnings for minutes (only --address was probed).
    env = {**os.environ, "BNPRIVACY_RESULTS": str(isolated_store / "results"), "RAY_ADDRESS": "127.0.0.1:1"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bnprivacy", "shadow", "4", "-c", "epochs", "1", "-c", "width", "4",
         "--chunk-size", "2", "--executor", "ray"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # a guard against a hang
    assert done.returncode == 1, done.stderr
    assert "error: no Ray cluster could be reached at RAY_ADDRESS='127.0.0.1:1' (from the environment)" in done.stderr
    assert "unset RAY_ADDRESS" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 60
    assert not (isolated_store / "results").exists()


@pytest.mark.parametrize("value", ["10.0.0.5", "10.0.0.5:99999", "head:port"])
def test_a_malformed_ray_address_in_the_environment_is_refused_before_anything_is_written(data, monkeypatch, value):
    monkeypatch.setenv("RAY_ADDRESS", value)
    with pytest.raises(ValueError, match=rf"RAY_ADDRESS='{value}' \(from the environment\) is not allowed"):
        shadow_run(SPEC, data, chunk_size=2, progress=False, executor="ray")
    assert not run_folder(SPEC).exists()


def test_a_dp_run_on_ray_equals_the_local_dp_run_with_its_privacy_accounting(cluster, isolated_store, monkeypatch):
    from bnprivacy.privacy.training import DPRunSpec, dp_shadow_run, run_privacy

    cfg = Config(norm="group", width=4, epochs=2, batch_size=32, lr=0.2, train_size=128, device="cpu")
    spec, data = DPRunSpec(cfg, n_models=2, epsilon=2.0), load_dataset(cfg)
    monkeypatch.setenv("BNPRIVACY_RESULTS", str(isolated_store / "local"))
    local = dp_shadow_run(spec, data, progress=False)
    monkeypatch.setenv("BNPRIVACY_RESULTS", str(isolated_store / "ray"))
    on_ray = dp_shadow_run(spec, data, progress=False, executor="ray")
    assert torch.equal(local.logits_pool, on_ray.logits_pool) and torch.equal(local.logits_test, on_ray.logits_test)
    assert run_privacy(on_ray).equals(run_privacy(local)) and len(run_privacy(on_ray)) == 2


def test_a_family_trained_on_ray_is_found_complete_by_the_chapters(cluster, monkeypatch, submitted):
    from bnprivacy.analysis import family_steps

    p = family_steps.family_protocol(dataset="digits", arch="cnn", width=4, widths=[1.0], train_size=128, imbalance=1.0, norms=["batch", "none"],
                     canaries="noise:2", canary_references=2, n_models=2, seeds=1, budgets=[1, 2], equal_epochs=1,
                     lr=0.1, lr_grid=[1.0], agc_grid=[], fit_threshold=0.9, batch_size=32, weight_decay=5e-4, label_smoothing=0.0,
                     augment="auto",
                     probe_points=0, probe_typical=2, probe_models=1, precision="auto", device="cpu")
    assert family_steps.train_family_shard(p, chunk_size=1, executor="ray", progress=False) == (4, 4)
    assert len(submitted) == 8, "every chunk of the four runs is submitted to Ray"
    monkeypatch.setattr(local, "train_chunk", lambda *a, **k: pytest.fail("a chapter retrained a run"))
    family = family_steps.train_family(p, progress=False)
    assert len(family.sweep.sides()) == 4
