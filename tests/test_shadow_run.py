"""The results store for shadow runs: resume after a kill, corrupt files, shards, bad input."""

import shutil

import pytest
import torch

from bnprivacy.runs import chunks, disk, executor, local, shadow
from bnprivacy.config import Config
from bnprivacy.data import load_dataset
from bnprivacy.runs.shadow import shadow_run
from bnprivacy.runs.spec import RunSpec, run_folder

CFG = Config(norm="batch", width=8, epochs=2, batch_size=32, train_size=128, device="cpu")
SPEC = RunSpec(CFG, n_models=4)


@pytest.fixture(scope="module")
def data():
    return load_dataset(CFG)


def assert_same_run(a, b):
    assert torch.equal(a.masks, b.masks)
    assert torch.allclose(a.logits_pool, b.logits_pool, atol=1e-5)
    assert torch.allclose(a.logits_test, b.logits_test, atol=1e-5)
    cols = ["model", "epoch", "train_loss", "test_acc"]
    assert torch.allclose(torch.tensor(a.history[cols].values), torch.tensor(b.history[cols].values), atol=1e-5)


def test_a_run_killed_after_its_first_chunk_resumes_to_the_same_result(data, isolated_store, monkeypatch,
                                                                        chunk_spy):
    monkeypatch.setenv("BNPRIVACY_RESULTS", str(isolated_store / "uninterrupted"))
    reference = shadow_run(SPEC, data, chunk_size=2, progress=False)

    monkeypatch.setenv("BNPRIVACY_RESULTS", str(isolated_store / "killed"))
    chunk_spy.calls.clear()
    chunk_spy.kill_at = 2
    with pytest.raises(KeyboardInterrupt):
        shadow_run(SPEC, data, chunk_size=2, progress=False)

    chunk_spy.calls.clear()
    chunk_spy.kill_at = None
    resumed = shadow_run(SPEC, data, chunk_size=2, progress=False)
    assert chunk_spy.calls == [[2, 3]], "the finished first chunk was retrained"
    assert_same_run(resumed, reference)


def test_a_finished_run_loads_without_training(data, monkeypatch):
    first = shadow_run(SPEC, data, chunk_size=4, progress=False)
    monkeypatch.setattr(local, "train_chunk", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = shadow_run(SPEC, data, chunk_size=4, progress=False)
    assert_same_run(first, again)
    assert first.final_accuracy().shape[0] == 4
    assert list(first.final_accuracy().columns) == ["epochs", "train_acc", "test_acc"]
    assert set(first.state_dict(3)) == set(first.state_dict(0))


def test_a_corrupt_chunk_is_redone_not_used(data):
    first = shadow_run(SPEC, data, chunk_size=2, progress=False)
    chunk = run_folder(SPEC) / "models-00002-00003"
    (chunk / "states.pt").write_bytes(b"garbage")
    assert not disk.is_complete(chunk)
    redone = shadow_run(SPEC, data, chunk_size=2, progress=False)
    assert disk.is_complete(chunk)
    assert_same_run(first, redone)


@pytest.mark.parametrize("stray", ["models-00000-00001.bak", "models-00000-00001 (copy)", "models-2-3",
                                   "models-00003-00002", "models-00000-00001-old"])
def test_a_stray_copy_of_a_chunk_folder_is_named_in_a_warning_and_ignored(data, monkeypatch, stray):
    # Issue 38: one `cp -a models-00000-00001 models-00000-00001.bak` broke every run of its key with
    # "invalid literal for int() with base 10: '00001.bak'".
    first = shadow_run(SPEC, data, chunk_size=2, progress=False)
    shutil.copytree(first.folder / "models-00000-00001", first.folder / stray)
    (first.folder / "models-notes.txt").write_text("a file, not a folder: also not a chunk")
    monkeypatch.setattr(local, "train_chunk", lambda *a, **k: pytest.fail("retrained a finished run"))
    with pytest.warns(UserWarning, match=rf"{stray.replace('(', '.').replace(')', '.')} is not a chunk of this run"):
        again = shadow_run(SPEC, data, chunk_size=2, progress=False)
    assert_same_run(first, again)
    assert set(again.state_dict(1)) == set(first.state_dict(1))
    with pytest.raises(ValueError, match="is not a chunk folder"):
        chunks.chunk_range(first.folder / stray)


def test_a_corrupt_signal_file_is_recomputed(data):
    first = shadow_run(SPEC, data, chunk_size=4, progress=False)
    signals = run_folder(SPEC) / "models-00000-00003" / "signals-eval-q2.pt"
    signals.write_bytes(signals.read_bytes()[:100])
    assert_same_run(first, shadow_run(SPEC, data, chunk_size=4, progress=False))


def test_shards_trained_apart_merge_into_the_whole_run(data, isolated_store, monkeypatch):
    monkeypatch.setenv("BNPRIVACY_RESULTS", str(isolated_store / "whole"))
    whole = shadow_run(SPEC, data, chunk_size=1, progress=False)
    parts = []
    for i in range(2):
        monkeypatch.setenv("BNPRIVACY_RESULTS", str(isolated_store / f"machine{i}"))
        assert shadow_run(SPEC, data, chunk_size=1, shard=f"{i}/2", progress=False) is None
        parts.append(run_folder(SPEC))
    merged = isolated_store / "merged"
    monkeypatch.setenv("BNPRIVACY_RESULTS", str(merged))
    for part in parts:
        shutil.copytree(part, run_folder(SPEC), dirs_exist_ok=True)
    monkeypatch.setattr(local, "train_chunk", lambda *a, **k: pytest.fail("merged run retrained"))
    assert_same_run(shadow_run(SPEC, data, chunk_size=1, progress=False), whole)


@pytest.mark.parametrize("make, message", [
    (lambda: RunSpec(CFG, n_models=0), "n_models=0"),
    (lambda: RunSpec(CFG, n_models=3), "even n_models"),
    (lambda: RunSpec(CFG, n_models=4, mask="fraction", fraction=1.5), "fraction=1.5"),
    (lambda: RunSpec(CFG, n_models=4, mask="poisson"), "mask='poisson'"),
    (lambda: executor.parse_shard("2/2"), "shard='2/2'"),
    (lambda: executor.parse_shard("first"), "shard='first'"),
])
def test_bad_run_input_is_explained(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_pool_smaller_than_a_batch_fails_before_training(isolated_store):
    spec = RunSpec(CFG.replace(train_size=40, batch_size=32), n_models=4)
    with pytest.raises(ValueError, match="fewer than one batch"):
        shadow_run(spec, progress=False)
    assert not list(run_folder(spec).glob("models-*"))


def test_probed_runs_record_gradients_of_every_canary_for_the_probed_models(isolated_store):
    cfg = CFG.replace(canaries="noise:3,mislabeled:2")
    data = load_dataset(cfg)
    spec = RunSpec(cfg, n_models=4, probe_every=2, probe_typical=4, probe_models=1)
    run = shadow_run(spec, data, chunk_size=2, progress=False)
    probes = run.probe_history
    assert set(probes["model"]) == {0}
    assert len(set(probes["sample"])) == 5 + 4
    assert (probes["own"] > 0).all() and (probes["loo"] > 0).all()
    assert list(probes["member"]) == [bool(run.masks[0, s]) for s in probes["sample"]]
    assert RunSpec(cfg, n_models=4).key() != spec.key()
    with pytest.raises(ValueError, match="probe_every=-1"):
        RunSpec(cfg, n_models=4, probe_every=-1)
    with pytest.raises(ValueError, match="probe typical=-2"):
        RunSpec(cfg, n_models=4, probe_every=1, probe_typical=-2)


# --- concurrent processes, chunk sizes, manifests (issue 15) ----------------------------------------

RUN_IN_ANOTHER_PROCESS = """
import sys, torch
from bnprivacy.config import Config
from bnprivacy.runs.shadow import shadow_run
from bnprivacy.runs.spec import RunSpec
cfg = Config(norm="batch", width=8, epochs=2, batch_size=32, train_size=128, device="cpu")
run = shadow_run(RunSpec(cfg, n_models=4), chunk_size=1, progress=False)
torch.save(run.logits_pool, sys.argv[1])
"""


def test_two_processes_on_one_run_share_its_chunks_and_agree(data, isolated_store, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "BNPRIVACY_RESULTS": str(isolated_store / "results"), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", RUN_IN_ANOTHER_PROCESS, str(tmp_path / f"{i}.pt")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    first, second = (torch.load(tmp_path / f"{i}.pt", weights_only=True) for i in range(2))
    assert torch.equal(first, second)
    folder = run_folder(SPEC)
    assert len(list(folder.glob("models-*"))) == 4 and not list(folder.glob("*.lock"))


def test_a_chunk_held_by_a_live_process_is_waited_for_and_taken_over_when_it_dies(data, monkeypatch):
    import subprocess
    import sys
    import threading

    monkeypatch.setattr(chunks, "CHUNK_POLL_SECONDS", 0.05)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    folder = run_folder(SPEC)
    folder.mkdir(parents=True)
    lock = folder / "models-00000-00001.lock"
    lock.write_text(f'{{"pid": {holder.pid}, "host": "{__import__("socket").gethostname()}"}}')
    result = {}
    worker = threading.Thread(target=lambda: result.update(run=shadow_run(SPEC, data, chunk_size=2, progress=False)))
    worker.start()
    worker.join(timeout=20)
    assert worker.is_alive() and disk.is_complete(folder / "models-00002-00003", required=chunks.CHUNK_FILES)
    assert not (folder / "models-00000-00001").exists()  # left to its holder
    holder.kill()
    holder.wait()
    worker.join(timeout=120)
    assert result["run"] is not None and not lock.exists()


def test_shards_with_different_chunk_sizes_are_refused(data):
    assert shadow_run(SPEC, data, chunk_size=2, shard="0/2", progress=False) is None
    with pytest.raises(ValueError, match="trains in chunks of 2 models; pass --chunk-size 2"):
        shadow_run(SPEC, data, chunk_size=3, shard="1/2", progress=False)
    assert shadow_run(SPEC, data, chunk_size=2, shard="1/2", progress=False) is not None
    assert shadow_run(SPEC, data, chunk_size=3, progress=False) is not None  # complete: loads at any size


def test_a_manifest_that_lists_no_files_or_not_the_weights_is_not_complete(data, tmp_path):
    folder = tmp_path / "chunk"
    folder.mkdir()
    disk.seal(folder, [])
    assert not disk.is_complete(folder)
    (folder / "history.csv").write_text("model\n0\n")
    disk.seal(folder, ["history.csv"])
    assert disk.is_complete(folder) and not disk.is_complete(folder, required=chunks.CHUNK_FILES)


def test_masks_are_checked_before_the_run_folder_is_written(data):
    spec = RunSpec(CFG.replace(batch_size=100), n_models=4)  # 64 IN samples per model < one batch
    with pytest.raises(ValueError):
        shadow_run(spec, data, progress=False)
    assert not run_folder(spec).exists()


def test_training_seconds_sum_every_epoch_of_every_chunk_and_survive_loading(data, monkeypatch):
    # Arithmetic on the per-epoch values the histories stored, not a timing of this test.
    import pandas as pd

    run = shadow_run(SPEC, data, chunk_size=2, progress=False)
    chunks = [pd.read_csv(c) for c in sorted(run_folder(SPEC).glob("models-*/history.csv"))]
    recorded_sum = sum(c.query("model == model.min()").seconds.sum() for c in chunks)
    recorded_last_epochs = sum(c.seconds.max() for c in chunks)  # the first, wrong rule
    total = shadow.training_seconds(run)
    assert len(chunks) == 2 and total == pytest.approx(recorded_sum) and total != pytest.approx(recorded_last_epochs)
    monkeypatch.setattr(local, "train_chunk", lambda *a, **k: pytest.fail("a finished run retrained"))
    reloaded_total = shadow.training_seconds(shadow_run(SPEC, data, chunk_size=2, progress=False))
    assert reloaded_total == total


def test_a_large_test_split_is_queried_on_a_fixed_population_subset(data, monkeypatch):
    whole = shadow_run(SPEC, data, chunk_size=4, progress=False)
    assert whole.logits_test.shape[2] == len(data.y_test) == 500  # no larger than the cap: all of it
    monkeypatch.setattr(chunks, "POPULATION_SAMPLES", 120)
    subset = shadow_run(SPEC, data, chunk_size=4, progress=False)
    index = chunks.population_index(len(data.y_test))
    assert len(index) == 120 and torch.equal(index, chunks.population_index(500))  # fixed across runs
    assert (run_folder(SPEC) / "models-00000-00003" / "signals-eval-q2-z120.pt").is_file()
    assert torch.allclose(subset.logits_test, whole.logits_test[:, :, index], atol=1e-5)
    assert torch.equal(subset.y_test, data.y_test.cpu()[index])
    # accuracy on the whole split still comes from training's last epoch, untouched by the subset
    assert subset.final_accuracy().equals(whole.final_accuracy())


def test_a_run_refuses_data_other_than_the_pool_it_was_trained_on(data):
    seed_one = RunSpec(CFG.replace(seed=1), n_models=4)  # as a family's seed-1 run: the seed-0 pool
    first = shadow_run(seed_one, data, chunk_size=4, progress=False)
    assert_same_run(first, shadow_run(seed_one, data, chunk_size=4, progress=False))
    own_seed_pool = load_dataset(seed_one.config)
    assert own_seed_pool.pool_key != data.pool_key
    with pytest.raises(ValueError, match="trained on another pool.*pass the data of that config"):
        shadow_run(seed_one, own_seed_pool, chunk_size=4, progress=False)
