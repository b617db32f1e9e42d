"""Recorded settings: written atomically with complete provenance, read back by the same rules as
live rows, and a broken folder stops the verdict with an error that names it."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from bnprivacy import book, headlines, record
from bnprivacy.analysis import verdict as verdict_steps
from bnprivacy.protocol.comparisons import Comparison

REPO = Path(__file__).resolve().parents[1]


def _rows():
    c = Comparison("matched fit", "none", 10, 40, 0.05, 0.0125, 0.991, 0.996, 0.977, 0.968, True, True, True, "",
                   pairs=((10, 40),))
    rows = [headlines.headline_row("canary memorization", "matched fit", 0.67, 0.81, -0.14, -0.23, -0.05, "t",
                                   "BN memorizes more", comparison=c, robustness="BN lower at all 1 pairs",
                                   margin=0.05, df=4)]
    return pd.DataFrame([dict(r, chapter="02_canaries", dataset="cifar10", arch="cnn", profile="x") for r in rows])


def _curves():
    return pd.DataFrame({"chapter": "02_canaries", "measure": "canary memorization", "norm": ["batch"] * 2 + ["none"] * 2,
                         "budget": [10, 10, 40, 40], "seed": [0, 1, 0, 1], "value": [0.6, 0.7, 0.8, 0.82],
                         "test_acc": 0.97, "train_acc": 0.99})


def _provenance(name="cifar10-cnn"):
    return {"name": name, "commit": "0123456789abcdef", "dirty": False, "changed_files": [], "command": "make record",
            "profile": "cifar", "parameters": {}, "overrides": {}, "versions": record.versions(),
            "hardware": "CPU x86_64", "chapter_seconds": {"02_canaries": 1.0}, "date": "2026-11-29T20:00:00+00:00",
            "learning_rates": None}


# A learning-rate table as chapter 01 records it (headlines.record_learning_rates).
RATES = [{"norm": "batch", "multiplier": 4.0, "lr": 0.2, "agc_clip": None, "val_acc": 0.97, "chosen": True},
         {"norm": "batch", "multiplier": 1.0, "lr": 0.05, "agc_clip": None, "val_acc": 0.95, "chosen": False},
         {"norm": "nf", "multiplier": 4.0, "lr": 0.2, "agc_clip": 0.02, "val_acc": 0.96, "chosen": True}]


def test_a_written_setting_reads_back_with_readings_and_its_provenance_label(tmp_path):
    folder = record.write_setting(tmp_path / "recorded" / "cifar10-cnn", _rows(), _curves(), _provenance())
    assert sorted(p.name for p in folder.iterdir()) == sorted(record.FILES)
    (setting,) = record.load_all(tmp_path)
    assert setting.headlines.reading.tolist() == ["BN lower"]
    assert setting.label() == ("recorded on 2026-11-29, CPU x86\\_64, commit 0123456789; rerun with ` make record `")
    (section,) = verdict_steps.recorded_sections([setting])
    assert "cifar10 / cnn" in section.heading and "BN lower in every fair comparison" in section.conclusion
    assert verdict_steps.PREVIOUS_PROTOCOL not in section.heading
    curve = section.curves["canary memorization"]
    assert curve.set_index(["norm", "budget"]).loc[("batch", 10), "mean"] == pytest.approx(0.65)


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "curves.csv").unlink(), r"missing \['curves.csv'\]"),
    (lambda f: (f / "headlines.json").write_text("{not json"), "malformed"),
    (lambda f: (f / "provenance.json").write_text(json.dumps({"name": "x"})), "provenance.json lacks"),
    (lambda f: (f / "headlines.json").write_text(_rows().drop(columns=["comparable"]).to_json(orient="records")),
     r"row 0 field 'comparable' is missing"),
    # A forged or damaged row is never read as evidence (issue 23): each stops the verdict, named.
    (lambda f: _edit_row(f, comparable="false"), r"row 0 field 'comparable' is str 'false'; expected true or false"),
    (lambda f: _edit_row(f, lo=0.5, hi=-0.5), r"the interval \[lo, hi\] = \[0.5, -0.5\] does not hold"),
    (lambda f: _edit_row(f, hi=float("inf")), r"row 0 field 'hi' is inf, not a finite number"),
    (lambda f: _edit_row(f, lo="-0.2"), r"row 0 field 'lo' is str '-0.2', not a number"),
    (lambda f: _edit_row(f, diff=None, lo=None, hi=None), r"read as evidence .* but diff, lo or hi is missing"),
    (lambda f: _edit_row(f, setting="<b>matched</b>"), r"row 0 field 'setting' is str"),
    (lambda f: _edit_row(f, measure="x" * 3000), r"row 0 field 'measure' is not one line"),
    (lambda f: (f / "provenance.json").write_text(json.dumps([1, 2])), r"provenance.json holds list"),
    (lambda f: _edit_provenance(f, date=20261129), r"provenance.json field 'date' is int 20261129; expected str"),
    (lambda f: _edit_provenance(f, parameters="x"), r"provenance.json field 'parameters' is str"),
    (lambda f: (f / "headlines.json").write_text("[" * 100_000 + "]" * 100_000), r"nested too deeply"),
    (lambda f: (f / "curves.csv").write_text("chapter,measure,norm,budget,seed,value,test_acc,train_acc\n"
                                             "02_canaries,m,batch,10,0,high,0.9,0.9\n"), r"column 'value' holds"),
])
def test_a_broken_folder_is_an_error_that_names_it(tmp_path, damage, message):
    folder = record.write_setting(tmp_path / "recorded" / "broken", _rows(), _curves(), _provenance("broken"))
    damage(folder)
    with pytest.raises(record.RecordedError, match=f"recorded setting {folder}: .*{message}"):
        record.load_all(tmp_path)


def _edit_row(folder, **fields):
    rows = json.loads((folder / "headlines.json").read_text())
    rows[0].update(fields)
    (folder / "headlines.json").write_text(json.dumps(rows))


def _edit_provenance(folder, **fields):
    provenance = json.loads((folder / "provenance.json").read_text())
    provenance.update(fields)
    (folder / "provenance.json").write_text(json.dumps(provenance))


def test_recorded_text_reaches_the_page_as_text_never_as_markup(tmp_path):
    script = "<img src=x onerror=alert(1)>"
    provenance = dict(_provenance(), command=f"make record ` {script} `", hardware=script)
    rows = _rows().assign(reason=script, measure=f"m {script} [a](javascript:alert(1))", runs=script)
    record.write_setting(tmp_path / "recorded" / "forged", rows, _curves().assign(measure=rows.measure[0]), provenance)
    (section,) = verdict_steps.recorded_sections(record.load_all(tmp_path))
    from markdown_it import MarkdownIt

    page = MarkdownIt("commonmark").render(section.heading + "\n\n" + section.conclusion)
    assert "<img" not in page and "href" not in page  # no element, no link: the text as written
    assert "&lt;img src=x onerror=alert" in page  # shown as written
    table = verdict_steps.styled(section.table).to_html()
    assert "<img" not in table and "&lt;img src=x onerror=alert(1)&gt;" in table
    sentence = verdict_steps.overall_sentence({script: section.rows})
    assert "<img" not in MarkdownIt("commonmark").render(sentence)


def test_a_failed_rerecording_keeps_the_old_recording(tmp_path, monkeypatch):
    folder = record.write_setting(tmp_path / "recorded" / "kept", _rows(), _curves(), _provenance("kept"))
    before = (folder / "headlines.json").read_text()
    real_rename = Path.rename

    def failing_rename(self, target):
        if self.name == ".kept.tmp":
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError):
        record.write_setting(folder, _rows().assign(batch=0.5), _curves(), _provenance("kept"))
    assert (folder / "headlines.json").read_text() == before
    monkeypatch.setattr(Path, "rename", real_rename)
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        record.write_setting(folder, _rows(), _curves(), _provenance("kept"))
    assert (folder / "headlines.json").read_text() == before and not (folder.parent / ".kept.tmp").exists()
    monkeypatch.undo()
    record.write_setting(folder, _rows().assign(measure="new"), _curves(), _provenance("kept"))
    assert record.load_all(tmp_path)[0].headlines.measure.tolist() == ["new"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["kept"]


def test_names_and_provenance_are_checked_before_anything_is_written(tmp_path):
    for bad in ("../x", ".hidden", "", "a/b"):
        with pytest.raises(ValueError, match="is not allowed"):
            record.check_name(bad)
    with pytest.raises(ValueError, match="provenance lacks"):
        record.write_setting(tmp_path / "recorded" / "x", _rows(), _curves(), {"name": "x"})
    assert not (tmp_path / "recorded").exists()


def test_every_folder_shipped_in_the_repository_parses_with_complete_provenance():
    for setting in record.load_all(REPO):
        p = setting.provenance
        assert set(record.PROVENANCE_FIELDS) <= set(p)
        # Shipped evidence comes from committed code: a dirty recording is for local use only.
        assert not p["dirty"] and len(p["commit"]) == 40, f"{setting.name} was recorded from a dirty tree"
        timed_chapters = set(p["chapter_seconds"])  # which chapters provenance covers, not their times
        assert set(record.RECORDED_CHAPTERS[:4]) <= timed_chapters <= set(record.RECORDED_CHAPTERS)
        assert p["command"].startswith("python -m bnprivacy record") and p["hardware"]
        compared = setting.headlines[setting.headlines.setting != "simulation"]
        assert compared["comparable"].notna().all() and compared["reading"].str.len().gt(0).all()
        # The protocol's chapters (01-04) draw a curve per measure; chapter 06 compares single settings.
        protocol_rows = compared[compared.chapter != "06_dp_mitigation"]
        assert set(setting.curves.measure) >= set(protocol_rows.measure), f"{setting.name}: a measure without curves"


def test_the_chapters_of_a_recording_are_parsed_and_checked_before_anything_runs(tmp_path):
    assert record.parse_chapters(" 01_training, 02_canaries,") == ("01_training", "02_canaries")
    for bad in ("", " , ", "01_training,01_training"):
        with pytest.raises(ValueError, match="names no chapter or one twice"):
            record.parse_chapters(bad)
    for bad in ("07_verdict", "08_nothing"):
        with pytest.raises(ValueError, match="not chapters a recording can execute; choose among"):
            record.record(REPO, "quick", "x", chapters=(bad,))
    assert not (REPO / "recorded" / "x").exists()


@pytest.mark.slow
def test_make_record_writes_a_folder_from_executed_chapters(book_copy, isolated_store):
    root = book_copy
    with pytest.raises(ValueError, match=r"-p epochs: not a parameter of 01_training"):
        record.record(root, "smoke", "tiny", {"epochs": 3}, chapters=("01_training",))
    with pytest.raises(ValueError, match=r"n_models=6 per run in 01_training; a recording needs at least 16"):
        record.record(root, "smoke", "tiny", {"seeds": 2}, chapters=("01_training",))
    assert not (root / "recorded").exists()
    folder = record.record(root, "smoke", "tiny", {"seeds": 2, "n_models": 16}, chapters=("01_training", "02_canaries"),
                           command="make record PROFILE=smoke NAME=tiny")
    (setting,) = record.load_all(root)
    assert setting.provenance["commit"].startswith("unknown") and setting.provenance["dirty"] is True
    # provenance names a wall time for every recorded chapter (which chapters, not how long they took)
    timed_chapters = set(setting.provenance["chapter_seconds"])
    assert timed_chapters == {"01_training", "02_canaries"}
    assert set(setting.headlines.chapter) == {"01_training", "02_canaries"}
    assert set(setting.curves.measure) >= {"test accuracy (%)", "canary memorization"}
    assert folder == root / "recorded" / "tiny" and not any(p.name.startswith(".") for p in folder.parent.iterdir())
    assert book.chapter_names(root)  # the copy is a whole book
    # The models' recorded training cost is carried over unchanged (a stored value, not a timing)
    # when a second recording loads the runs from the store.
    stored_cost = setting.provenance["training_seconds"]
    assert stored_cost and "its shadow models trained for" in setting.label()
    record.record(root, "smoke", "tiny", {"seeds": 2, "n_models": 16}, chapters=("01_training",))
    reloaded_cost = record.load_all(root)[0].provenance["training_seconds"]
    assert reloaded_cost == stored_cost
    # No live row is comparable under smoke (its models never fit): the verdict says so in a sentence
    # and its exercise has nothing to correct, where it once raised ZeroDivisionError (issue 23).
    assert not headlines.adjust(headlines.load("smoke", ["01_training"])).comparable.any()
    notebook = json.loads(book.execute_chapter(root, "07_verdict", "smoke").read_text())
    assert "No row is comparable under this profile" in json.dumps(notebook)


def test_settings_recorded_before_margins_still_load_and_say_so():
    sections = verdict_steps.recorded_sections(record.load_all(REPO))
    for section in sections:
        if headlines.from_previous_protocol(section.rows):
            assert verdict_steps.PREVIOUS_PROTOCOL in section.heading
            # one row per comparison: matched fit and matched accuracy on the same runs are merged
            keys = section.rows[["chapter", "measure", "reference", "runs"]].astype(str).agg("|".join, axis=1)
            assert not keys[section.rows.runs.astype(bool)].duplicated().any()
            assert set(section.rows.reading.map(verdict_steps._kind)) <= {
                *verdict_steps.READING_ORDER} - {verdict_steps.EQUIVALENT_KIND}


def _fit_curves(none_in_accuracy):
    """Chapter 01's accuracy curve: BN fits at both budgets, none reaches ``none_in_accuracy`` (per budget)."""
    rows = [("batch", b, s, 0.995) for b in (16, 24) for s in (0, 1, 2)]
    rows += [("none", b, s, none_in_accuracy[b]) for b in (16, 24) for s in (0, 1, 2)]
    return pd.DataFrame([{"chapter": "01_training", "measure": "test accuracy (%)", "norm": n, "budget": b, "seed": s,
                          "value": 50.0, "test_acc": 0.5, "train_acc": acc} for n, b, s, acc in rows])


def test_a_recording_whose_reference_never_fits_says_which_norm_and_what_it_reached():
    lines = record.fit_lines(_fit_curves({16: 0.9, 24: 0.985}), 0.99)
    assert lines[0] == "batch fits its pool at [16, 24] epochs (mean IN accuracy 0.995 at 16, 0.995 at 24)"
    assert lines[1].startswith("none never fits its pool within the ladder [16, 24]: mean IN accuracy 0.900 at 16, "
                               "0.985 at 24 epochs, below 0.99")


def test_the_fit_report_reads_the_threshold_the_setting_was_recorded_with(tmp_path):
    provenance = dict(_provenance(), parameters={"01_training": {"fit_threshold": 0.99}}, overrides={"fit_threshold": 0.98})
    folder = record.write_setting(tmp_path / "recorded" / "x", _rows(), _fit_curves({16: 0.9, 24: 0.985}), provenance)
    assert record.fit_report(folder)[1] == ("none fits its pool at [24] epochs "
                                            "(mean IN accuracy 0.900 at 16, 0.985 at 24)")
    assert record.fit_lines(_curves(), 0.99) == [
        "no chapter 01 accuracy curve was recorded: the fit of each norm is unknown"]


# Characters that make recorded text show otherwise than what it holds (a "rerun with" command
# reading differently from the one a reader copies): bidi override, C1 control, zero-width space
# and joiner, byte-order mark.
HIDDEN = {"U+202E": "\u202e", "U+009B": "\u009b", "U+200B": "\u200b", "U+200D": "\u200d", "U+FEFF": "\ufeff"}


def _write_curves(folder, **columns):
    (folder / "curves.csv").write_text(_curves().assign(**columns).to_csv(index=False), encoding="utf-8")


PLACES = {
    "headline row": (lambda f, c: _edit_row(f, measure=f"canary{c}"), "headlines.json: row 0 field 'measure'"),
    "curves.csv": (lambda f, c: _write_curves(f, norm=f"batch{c}"), "curves.csv row 0 column 'norm'"),
    "provenance": (lambda f, c: _edit_provenance(f, command=f"make record{c}"), "provenance.json field 'command'"),
    "nested provenance": (lambda f, c: _edit_provenance(f, parameters={"02_canaries": {"margin": f"0.05{c}"}}),
                          "provenance.json field 'parameters' field '02_canaries' field 'margin'"),
}


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("code", HIDDEN)
def test_recorded_text_with_a_control_or_invisible_character_stops_the_verdict_naming_it(tmp_path, place, code):
    folder = record.write_setting(tmp_path / "recorded" / "hidden", _rows(), _curves(), _provenance("hidden"))
    damage, where = PLACES[place]
    damage(folder, HIDDEN[code])
    message = f"recorded setting {folder}: a file is malformed ({where} is not one line of visible text: "
    with pytest.raises(record.RecordedError, match=re.escape(message) + rf"character \d+ is {re.escape(code)} "):
        record.load_all(tmp_path)


@pytest.mark.parametrize("column", ["chapter", "measure", "norm", "note"])
def test_every_text_column_of_curves_follows_the_headline_text_rule(tmp_path, column):
    folder = record.write_setting(tmp_path / "recorded" / "curves", _rows(), _curves(), _provenance("curves"))
    _write_curves(folder, **{column: "x\u202ey"})
    message = f"recorded setting {folder}: a file is malformed (curves.csv row 0 column {column!r} is not one line"
    with pytest.raises(record.RecordedError, match=re.escape(message)):
        record.load_all(tmp_path)


def test_a_curves_column_name_follows_the_headline_text_rule(tmp_path):
    folder = record.write_setting(tmp_path / "recorded" / "curves", _rows(), _curves(), _provenance("curves"))
    _write_curves(folder, **{"note\u200b": 1})
    with pytest.raises(record.RecordedError, match=re.escape(r"curves.csv column name 'note\u200b' is not one line")):
        record.load_all(tmp_path)


@pytest.mark.parametrize("name", [r"a$\undefinedmacro$b", "cifar10 airbench", "x\u202ey", "-x", "x" * 65])
def test_a_recorded_folder_whose_name_record_would_refuse_is_refused_naming_it(tmp_path, name):
    record.write_setting(tmp_path / "recorded" / "good", _rows(), _curves(), _provenance("good"))
    folder = record.write_setting(tmp_path / "recorded" / name, _rows(), _curves(), _provenance())
    with pytest.raises(ValueError, match="is not allowed"):
        record.check_name(name)  # the rule of `record --name`, which the folder breaks
    message = f"recorded setting {str(folder)!r}: the folder name is refused (name={name!r} is not allowed"
    with pytest.raises(record.RecordedError, match=re.escape(message) + r".*\); rename the folder"):
        record.load_all(tmp_path)


def test_write_settings_hidden_temporaries_are_skipped_not_read_as_settings(tmp_path):
    record.write_setting(tmp_path / "recorded" / "kept", _rows(), _curves(), _provenance("kept"))
    (tmp_path / "recorded" / ".kept.old").mkdir()  # a swap interrupted between its renames
    assert [s.name for s in record.load_all(tmp_path)] == ["kept"]


def test_a_recording_keeps_every_norms_learning_rates_and_an_older_folder_without_them_still_reads(tmp_path):
    import math

    from bnprivacy import headlines

    table = pd.DataFrame(RATES).assign(agc_clip=lambda t: t.agc_clip.astype(float).fillna(math.nan))
    headlines.record_learning_rates("01_training", "quick", table)
    assert headlines.load_learning_rates("quick", ["01_training"]) == RATES
    assert headlines.load_learning_rates("quick", ["02_canaries"]) is None
    folder = record.write_setting(tmp_path / "recorded" / "new", _rows(), _curves(),
                                  {**_provenance("new"), "learning_rates": RATES})
    old = record.write_setting(tmp_path / "recorded" / "old", _rows(), _curves(), _provenance("old"))
    provenance = json.loads((old / "provenance.json").read_text())
    del provenance["learning_rates"]  # as recorded before issue 39
    (old / "provenance.json").write_text(json.dumps(provenance))
    new, before = record.load_all(tmp_path)
    assert new.provenance["learning_rates"] == RATES and "learning_rates" not in before.provenance
    assert "chosen learning rates: batch lr 0.2; nf lr 0.2, AGC 0.02" in new.label()
    assert "learning rates" not in before.label()
    with pytest.raises(ValueError, match="provenance lacks"):
        record.write_setting(tmp_path / "recorded" / "x", _rows(), _curves(), provenance)  # a new one must keep them


@pytest.mark.parametrize("rows, message", [
    ([], "expected a non-empty list"),
    ([{**RATES[0], "chosen": "yes"}], "field 'chosen' is str"),
    ([{**RATES[0], "lr": -1.0}], "out of range"),
    ([{**RATES[0], "val_acc": 1.5}], "out of range"),
    ([RATES[0], {**RATES[1], "chosen": True}], "norm 'batch' has 2 chosen candidates"),
    ([{k: v for k, v in RATES[0].items() if k != "norm"}], "field 'norm' is"),
])
def test_a_damaged_learning_rate_table_in_provenance_is_refused_naming_the_field(rows, message):
    with pytest.raises(ValueError, match=message):
        record.check_provenance({**_provenance(), "learning_rates": rows})
