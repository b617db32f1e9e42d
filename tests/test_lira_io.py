"""Export and import of shadow runs in the LiRA reference code's layout (no training: stub runs)."""

import contextlib
import json
import os
import shutil
import threading
import types
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from bnprivacy.ensemble import balanced_masks
from bnprivacy.lira_io import LiraMetadata, export_lira, import_lira, lira_metadata


def stub_run(n_models=4, samples=20, classes=3, seed=0, query_mode="eval"):
    """The attributes of a ShadowRun that the export reads, with random logits."""
    generator = torch.Generator().manual_seed(seed)
    return types.SimpleNamespace(
        masks=balanced_masks(n_models, samples, seed=seed + 1000),
        logits_pool=torch.randn(n_models, 2, samples, classes, generator=generator),
        y_pool=torch.randint(0, classes, (samples,), generator=generator),
        history=pd.DataFrame({"epoch": [3, 7]}), query_mode=query_mode)


def reference_folder(root, seeds, samples=20, classes=3):
    """A folder as the reference train.py (without --expid) and inference.py write it: no metadata."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(root / "y_train.npy", rng.integers(0, classes, samples))
    for seed in seeds:
        (root / f"experiment-{seed}" / "logits").mkdir(parents=True)
        np.save(root / f"experiment-{seed}" / "keep.npy", np.full(samples, seed % 2 == 0))
        np.save(root / f"experiment-{seed}" / "logits" / "0000000100.npy",
                np.full((samples, 1, 2, classes), seed, np.float32))
    return root


def test_round_trip_records_the_query_mode(tmp_path):
    run = stub_run(query_mode="train")
    root = export_lira(run, tmp_path / "exp")
    assert lira_metadata(root) == LiraMetadata(query_mode="train", n_models=4, epoch=7)
    assert json.loads((root / "bnprivacy.json").read_text())["format"] == 1
    back = import_lira(root, query_mode="train")
    assert torch.equal(back.masks, run.masks) and torch.equal(back.labels, run.y_pool)
    assert torch.allclose(back.logits, run.logits_pool)


def test_a_query_mode_mismatch_is_refused_naming_both(tmp_path):
    root = export_lira(stub_run(query_mode="eval"), tmp_path / "exp")
    with pytest.raises(ValueError, match=r"query_mode='train' but .*bnprivacy.json records 'eval'"):
        import_lira(root, query_mode="train")
    with pytest.raises(ValueError, match=r"query_mode='batch'; expected 'eval', 'train' or None"):
        import_lira(root, query_mode="batch")


def test_export_needs_a_query_mode_and_refuses_one_that_contradicts_the_run(tmp_path):
    run = stub_run()
    del run.query_mode
    with pytest.raises(ValueError, match="pass query_mode='eval'"):
        export_lira(run, tmp_path / "a")
    assert lira_metadata(export_lira(run, tmp_path / "a", query_mode="train")).query_mode == "train"
    with pytest.raises(ValueError, match=r"query_mode='train' but the run was queried with 'eval'"):
        export_lira(stub_run(), tmp_path / "b", query_mode="train")


def test_reference_folders_named_by_seed_import_in_seed_order_without_metadata(tmp_path):
    root = reference_folder(tmp_path, seeds=[907, 12, 3051])
    assert lira_metadata(root) is None
    back = import_lira(root, query_mode="eval")  # no metadata: the mode cannot be checked
    assert back.logits[:, 0, 0, 0].tolist() == [12, 907, 3051]
    assert back.masks[:, 0].tolist() == [True, False, False]


def test_mixed_styles_are_ordered_by_number_and_a_clash_is_refused(tmp_path):
    root = reference_folder(tmp_path, seeds=[5, 3])
    shutil.copytree(root / "experiment-5", root / "experiment-0_2")  # a complete run of N=2 ...
    shutil.copytree(root / "experiment-3", root / "experiment-1_2")  # ... beside the seeded models
    assert import_lira(root).logits[:, 0, 0, 0].tolist() == [5, 3, 3, 5]
    shutil.copytree(root / "experiment-5", root / "experiment-1")
    with pytest.raises(ValueError, match=r"same model: experiment-1 and experiment-1_2"):
        import_lira(root)


def test_folders_of_different_n_are_refused(tmp_path):
    root = reference_folder(tmp_path, seeds=[0])
    shutil.move(root / "experiment-0", root / "experiment-0_2")
    shutil.copytree(root / "experiment-0_2", root / "experiment-1_3")
    with pytest.raises(ValueError, match=r"different N \(N=2: experiment-0_2; N=3: experiment-1_3\)"):
        import_lira(root)


def test_odd_experiment_folders_are_named_in_a_warning(tmp_path):
    root = reference_folder(tmp_path, seeds=[0, 1])
    (root / "experiment-old").mkdir()
    (root / "experiments_backup").mkdir()
    (root / "notes").mkdir()  # unrelated: neither warned about nor read
    (root / "README.txt").write_text("unrelated")
    with pytest.warns(UserWarning, match=r"skipped 2 folder\(s\).*experiment-old, experiments_backup"):
        assert import_lira(root).n_models == 2


def test_a_clean_folder_imports_without_warnings(tmp_path):
    root = export_lira(stub_run(), tmp_path / "exp")
    (root / "notes").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import_lira(root)


def test_incomplete_experiment_folders_are_all_named(tmp_path):
    root = reference_folder(tmp_path, seeds=[0, 1, 2])
    (root / "experiment-0" / "keep.npy").unlink()
    shutil.rmtree(root / "experiment-2" / "logits")
    with pytest.raises(ValueError, match=r"2 experiment folder\(s\) .* lack keep.npy or logits/\*.npy: "
                                         r"experiment-0, experiment-2"):
        import_lira(root)


def test_export_into_a_used_folder_is_refused_with_a_way_out(tmp_path):
    root = export_lira(stub_run(), tmp_path / "exp")
    with pytest.raises(ValueError, match=r"already holds a LiRA layout \(bnprivacy.json, experiment-0_4, .*\); "
                                         r"pass replace=True .* or export into another folder"):
        export_lira(stub_run(), root)
    reference = reference_folder(tmp_path / "theirs", seeds=[])
    with pytest.raises(ValueError, match=r"already holds a LiRA layout \(y_train.npy\)"):
        export_lira(stub_run(), reference)


def test_replace_exports_exactly_the_new_models_and_keeps_unrelated_files(tmp_path):
    root = export_lira(stub_run(n_models=6, seed=1), tmp_path / "exp")
    (root / "notes.txt").write_text("mine")
    (root / "plots").mkdir()
    new = stub_run(n_models=4, seed=2)
    new.history = pd.DataFrame({"epoch": [9]})  # another epoch: an old logits file must not survive
    export_lira(new, root, replace=True)
    back = import_lira(root)
    assert back.n_models == 4 and torch.equal(back.masks, new.masks)
    assert torch.allclose(back.logits, new.logits_pool)
    assert sorted(p.name for p in (root / "experiment-0_4" / "logits").iterdir()) == ["0000000009.npy"]
    assert (root / "notes.txt").read_text() == "mine" and (root / "plots").is_dir()
    assert lira_metadata(root) == LiraMetadata(query_mode="eval", n_models=4, epoch=9)


def test_replace_removes_a_link_never_its_target(tmp_path):
    elsewhere = reference_folder(tmp_path / "elsewhere", seeds=[4])
    root = tmp_path / "exp"
    root.mkdir()
    (root / "experiment-4").symlink_to(elsewhere / "experiment-4")
    export_lira(stub_run(), root, replace=True)
    assert not (root / "experiment-4").exists() and (elsewhere / "experiment-4" / "keep.npy").is_file()


def test_a_folder_changed_after_export_no_longer_matches_its_metadata(tmp_path):
    root = export_lira(stub_run(), tmp_path / "exp")
    shutil.copytree(root / "experiment-3_4", root / "experiment-7")
    with pytest.raises(ValueError, match=r"records 4 models but .* holds 5 experiment folders"):
        import_lira(root)
    shutil.rmtree(root / "experiment-7")
    logits = root / "experiment-1_4" / "logits"
    shutil.copy(logits / "0000000007.npy", logits / "0000000008.npy")
    with pytest.raises(ValueError, match=r"records epoch 7 but the last logits file of experiment-1_4 is not"):
        import_lira(root)


@pytest.mark.parametrize("content, message", [
    ("{not json", r"bnprivacy.json is not valid JSON"),
    ("[1, 2]", r"bnprivacy.json holds list; expected an object with exactly the keys"),
    ('{"format": 1, "query_mode": "eval", "n_models": 4}', r"bnprivacy.json holds \['format', 'n_models', "),
    ('{"format": 1, "query_mode": "eval", "n_models": "4", "epoch": 7}', r"bnprivacy.json: n_models is '4'"),
    ('{"format": 1, "query_mode": "eval", "n_models": true, "epoch": 7}', r"bnprivacy.json: n_models is True"),
    ('{"format": 2, "query_mode": "eval", "n_models": 4, "epoch": 7}', r"bnprivacy.json has format 2"),
    ('{"format": 1, "query_mode": "batch", "n_models": 4, "epoch": 7}', r"bnprivacy.json: query_mode is 'batch'"),
    ('{"format": 1, "query_mode": "eval", "n_models": 0, "epoch": 7}', r"bnprivacy.json: n_models 0"),
])
def test_malformed_metadata_is_refused_naming_the_file(tmp_path, content, message):
    root = export_lira(stub_run(), tmp_path / "exp")
    (root / "bnprivacy.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        import_lira(root)


def test_the_last_logits_file_is_chosen_by_epoch_number_not_by_name(tmp_path):
    root = reference_folder(tmp_path, seeds=[0, 1])  # logits/0000000100.npy holds the seed
    np.save(root / "experiment-0" / "logits" / "99.npy", np.full((20, 1, 2, 3), -1, np.float32))
    np.save(root / "experiment-1" / "logits" / "0000000099.npy", np.full((20, 1, 2, 3), -1, np.float32))
    assert import_lira(root).logits[:, 0, 0, 0].tolist() == [0, 1]  # epoch 100 in both, though "99" > "0..."


def test_two_logits_files_of_one_epoch_are_refused_naming_both(tmp_path):
    root = reference_folder(tmp_path, seeds=[0, 1])
    np.save(root / "experiment-1" / "logits" / "100.npy", np.full((20, 1, 2, 3), -1, np.float32))
    with pytest.raises(ValueError, match=r"several logits files for the same epoch: "
                                         r"experiment-1/logits/0000000100.npy and experiment-1/logits/100.npy"):
        import_lira(root)


def test_folders_whose_numbers_differ_only_in_padding_are_refused_naming_both(tmp_path):
    root = reference_folder(tmp_path, seeds=[1, 2])
    shutil.copytree(root / "experiment-1", root / "experiment-01")
    with pytest.raises(ValueError, match=r"same model: experiment-01 and experiment-1"):
        import_lira(root)


def test_logits_files_not_named_by_an_epoch_are_skipped_with_a_warning(tmp_path):
    root = reference_folder(tmp_path, seeds=[0, 1])
    np.save(root / "experiment-1" / "logits" / "final.npy", np.full((20, 1, 2, 3), -1, np.float32))
    with pytest.warns(UserWarning, match=r"skipped 1 logits file\(s\) .* experiment-1/logits/final.npy"):
        assert import_lira(root).logits[:, 0, 0, 0].tolist() == [0, 1]


@pytest.mark.parametrize("value, dtype, shown", [
    (np.nan, np.float32, "nan"), (np.inf, np.float32, "inf"), (-np.inf, np.float16, "-inf"),
    (1e300, np.float64, "1e[+]300"),  # finite in float64, inf in the float32 the attacks use
])
def test_non_finite_logits_are_refused_naming_the_file_and_the_first_bad_position(tmp_path, value, dtype, shown):
    root = exported(tmp_path)
    file = root / "experiment-2_4" / "logits" / "0000000007.npy"
    logits = np.load(file).astype(dtype)
    logits[5, 0, 1, 2] = logits[9, 0, 0, 0] = value
    np.save(file, logits)
    with pytest.raises(ValueError, match=rf"experiment-2_4/logits/0000000007.npy holds {shown} at "
                                         r"\[sample, 0, query, class\] = \[5, 0, 1, 2\], not a finite float32 "
                                         r"\(2 such value\(s\) in all\)"):
        import_lira(root)


def test_complex_logits_are_refused_naming_the_file_and_the_first_complex_value(tmp_path):
    root = exported(tmp_path)
    file = root / "experiment-1_4" / "logits" / "0000000007.npy"
    logits = np.load(file).astype(np.complex64)
    logits[3, 0, 0, 1] += 2j
    np.save(file, logits)
    with pytest.raises(ValueError, match=r"experiment-1_4/logits/0000000007.npy holds complex numbers \(complex64, "
                                         r"first .*2j\) at \[sample, 0, query, class\] = \[3, 0, 0, 1\]\)"):
        import_lira(root)


def exported(tmp_path):
    """An export of a stub run (epoch 7) into ``tmp_path / "exp"``."""
    return export_lira(stub_run(), tmp_path / "exp")


# --- partial exports and bounded loading ---------------------------------------------------------

def test_a_partial_export_is_refused_naming_the_missing_models(tmp_path):
    run = stub_run()
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "experiment-2_4").write_text("in the way")  # export_lira fails at model 2
    with pytest.raises(OSError):
        export_lira(run, tmp_path / "exp")
    assert lira_metadata(tmp_path / "exp") is None  # written last, so it never was
    with pytest.raises(ValueError, match=r"exp holds 2 of the N=4 experiment-K_4 folders and lacks K = 2, 3; "
                                         r"the export or training stopped part-way: re-export the run .*or copy "
                                         r"the missing folders in"):
        import_lira(tmp_path / "exp")


def test_a_long_list_of_missing_models_is_abbreviated_and_seeded_folders_are_not_counted(tmp_path):
    root = reference_folder(tmp_path / "theirs", seeds=[0])
    for k in (0, 1, 2):
        shutil.copytree(root / "experiment-0", root / f"experiment-{k}_16")
    shutil.rmtree(root / "experiment-0")
    with pytest.raises(ValueError, match=r"holds 3 of the N=16 .* lacks K = 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 "
                                         r"and 3 more;"):
        import_lira(root)
    shutil.copytree(root / "experiment-0_16", root / "experiment-16_16")
    with pytest.raises(ValueError, match=r"experiment-K_16 folders numbered past N-1=15: experiment-16_16"):
        import_lira(root)
    seeded = reference_folder(tmp_path / "seeded", seeds=[4, 9, 30])  # no count promised: 3 models
    assert import_lira(seeded).n_models == 3


def npy_header_only(path, shape, descr, data_bytes):
    """An .npy file whose header declares ``shape`` of ``descr``, followed by ``data_bytes`` zeros."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": descr, "fortran_order": False, "shape": shape})
        handle.write(bytes(data_bytes))


TIB_40 = 40 * 2**40


@pytest.mark.parametrize("name, shape, descr, data_bytes, message", [
    ("y_train.npy", (TIB_40 // 8,), "<i8", 16,
     r"y_train.npy's header promises shape \(5497558138880,\) of int64 \(40.0 TiB\) but the file holds 16 bytes"),
    ("experiment-0_4/logits/0000000007.npy", (20, 1, TIB_40 // 240, 3), "<f4", 64,  # the first sets Q, K
     r"experiment-0_4/logits/0000000007.npy's header promises .* \(40.0 TiB\) but the file holds 64 bytes"),
    ("experiment-1_4/logits/0000000007.npy", (20, 1, 2, 3), "<f4", 100,  # 480 bytes promised
     r"0000000007.npy's header promises shape \(20, 1, 2, 3\) of float32 \(480 bytes\) but the file holds 100 "
     r"bytes of data; it is damaged or truncated"),
    ("experiment-1_4/logits/0000000007.npy", (20, 1, 2, 1 << 40), "<f4", 0,  # K must match the others'
     r"0000000007.npy has 2 queries and 1099511627776 classes but .*experiment-0_4 has 2 and 3"),
    ("experiment-0_4/keep.npy", (TIB_40,), "|b1", 0,
     r"experiment-0_4/keep.npy has shape \(43980465111040,\); expected one entry per pool sample, \[20\]"),
    ("experiment-0_4/keep.npy", (20,), "|O", 8,
     r"keep.npy is not a plain numeric .npy array: it holds Python objects \(object\), which only unpickling"),
])
def test_npy_headers_are_checked_before_anything_is_allocated(tmp_path, name, shape, descr, data_bytes,
                                                             message):
    root = exported(tmp_path)
    npy_header_only(root / name, shape, descr, data_bytes)
    with pytest.raises(ValueError, match=message):
        import_lira(root)


def test_labels_are_bounded_in_their_own_dtype(tmp_path):
    root = exported(tmp_path)
    labels = np.load(root / "y_train.npy").astype(np.uint64)
    labels[4] = 2**64 - 1  # -1 once cast to int64
    np.save(root / "y_train.npy", labels)
    with pytest.raises(ValueError, match=r"y_train.npy holds label 18446744073709551615 but the logits have 3 "
                                         r"classes \(labels 0 ... 2\)"):
        import_lira(root)
    np.save(root / "y_train.npy", np.full(20, -1, np.int8))
    with pytest.raises(ValueError, match=r"y_train.npy holds label -1; class indices are >= 0"):
        import_lira(root)
    np.save(root / "y_train.npy", labels.astype(bool))
    with pytest.raises(ValueError, match=r"y_train.npy holds bool of shape \(20,\); expected the pool's class"):
        import_lira(root)


def test_an_empty_pool_is_refused_naming_the_labels_file(tmp_path):
    root = reference_folder(tmp_path, seeds=[0, 1], samples=0)
    with pytest.raises(ValueError, match=r"y_train.npy holds no labels, so the pool is empty; export a run"):
        import_lira(root)


@contextlib.contextmanager
def writer_that_ends(fifo):
    """Should anyone open ``fifo`` to read it (which blocks until a writer comes), open it for
    writing and close it at once: the reader then sees an empty file and fails instead of hanging."""
    done = threading.Event()

    def end_readers():
        while not done.wait(0.02):
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading yet
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                return
    thread = threading.Thread(target=end_readers, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize("name", ["experiment-1_4/logits/0000000007.npy", "experiment-1_4/keep.npy",
                                  "bnprivacy.json"])
def test_a_fifo_is_refused_without_opening_it(tmp_path, name):
    root = exported(tmp_path)
    (root / name).unlink()
    os.mkfifo(root / name)
    with writer_that_ends(root / name), pytest.raises(
            ValueError, match=rf"{name} is a FIFO \(named pipe\), not a regular file; only regular files are read"):
        import_lira(root)


@pytest.mark.parametrize("content, message", [
    ("[" * 100_000, r"bnprivacy.json is larger than 4096 bytes"),
    ("[" * 4000, r"bnprivacy.json is not valid JSON \(nested too deeply\); re-export the run"),
])
def test_deeply_nested_or_oversized_metadata_is_refused_naming_the_file(tmp_path, content, message):
    root = exported(tmp_path)
    (root / "bnprivacy.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        import_lira(root)


def test_an_experiment_folder_that_is_a_symlink_loop_is_refused_and_an_odd_one_warned(tmp_path):
    root = reference_folder(tmp_path, seeds=[0, 1])
    os.symlink("experiment-2", root / "experiment-2")  # a link to itself
    with pytest.raises(ValueError, match=r"1 experiment folder\(s\) in .* cannot be opened: experiment-2 \("):
        import_lira(root)
    os.rename(root / "experiment-2", root / "experiment-loop")  # still a link to the now absent experiment-2
    with pytest.warns(UserWarning, match=r"skipped 1 folder\(s\) .*: experiment-loop;"):
        assert import_lira(root).n_models == 2
