"""Parameter values are data (issue 23): no code from a -p value or a profile key, no silent
YAML comment, numbers inside lists, and profiles checked against the chapters' parameters."""

import base64
from pathlib import Path

import pytest

from bnprivacy import book
from bnprivacy.__main__ import main
from bnprivacy.values import ValueRefused, as_plain, check_literal, parse_value, read_yaml

REPO = Path(__file__).resolve().parents[1]

# papermill writes an unknown type as '"' + str(value) + '"': the bytes' repr keeps a '"', so this
# value closed the string and ran the statement after it.
PAYLOAD = b'"; open("PWNED", "w").write("x"); "'


@pytest.fixture
def book_here(book_copy, tmp_path, monkeypatch):
    """A copy of the book as the working folder, with its own results folder."""
    monkeypatch.chdir(book_copy)
    monkeypatch.setenv("BNPRIVACY_RESULTS", str(tmp_path / "results"))
    return book_copy


def test_a_binary_value_is_refused_before_the_chapter_runs_and_nothing_is_executed(book_here, capsys):
    value = "!!binary " + base64.b64encode(PAYLOAD).decode()
    assert main(["chapter", "05_theory", "--profile", "smoke", "-p", "dataset", value]) == 1
    err = capsys.readouterr().err
    assert "-p dataset: the YAML type !!binary is not allowed" in err and "Traceback" not in err
    assert not (book_here / "PWNED").exists() and not (book_here / "_build" / "stage").exists()


@pytest.mark.parametrize("text", ["!!binary aGVsbG8=", "!!timestamp 2024-01-01", "!!set {a, b}",
                                  "!!python/object/apply:os.system [ls]", "[1, !!binary aGk=]", "{1: a}"])
def test_only_text_numbers_booleans_null_lists_and_maps_are_values(text):
    with pytest.raises(ValueRefused, match="-p x: "):
        parse_value(text, "-p x")


def test_injected_parameters_are_checked_to_be_literals_of_exactly_the_values():
    tricky = {"a": 'x"y\n\\z\u00e9', "b": [1.5, float("nan"), float("-inf")], "c": {"k": None}, "d": True, "e": 3}
    check_literal(tricky)
    check_literal(as_plain({"t": (1, 2)}))
    for bad in ({"a": PAYLOAD}, {"t": (1, 2)}, {"s": {1, 2}}, {"m": {1: "a"}}):
        with pytest.raises(ValueRefused):
            check_literal(bad)


def test_a_hash_in_a_plain_value_is_part_of_it_and_in_a_list_it_is_refused():
    assert book.parse_overrides([("dataset", "imagefolder:/data/set #2")]) == {"dataset": "imagefolder:/data/set #2"}
    assert parse_value("#2", "-p x") == "#2"
    assert parse_value('"a #2"', "-p x") == "a #2"
    assert parse_value("[a#1, b]", "-p x") == ["a#1", "b"]  # no space before '#': not a comment in YAML either
    with pytest.raises(ValueRefused, match="start of a comment.*quote the item"):
        parse_value("[a, b] #c", "-p x")


def test_numbers_are_numbers_inside_lists_too_and_text_stays_text():
    assert parse_value("[1e-1, 1e0]", "-p lr_grid") == [0.1, 1.0]
    assert parse_value("[batch, none]", "-p norms") == ["batch", "none"]
    assert [parse_value(t, "x") for t in ("5", "010", "-2E-5", ".5", "inf", "-.inf")] == [5, 10, -2e-5, 0.5,
                                                                                       float("inf"), float("-inf")]
    assert [parse_value(t, "x") for t in ("yes", "no", "on", "2024-01-01", "1:20", "0x1f", "e5")] == \
        ["yes", "no", "on", "2024-01-01", "1:20", "0x1f", "e5"]
    assert parse_value("true", "x") is True and parse_value("null", "x") is None


def test_aliases_cannot_blow_a_short_value_up():
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8))
    with pytest.raises(ValueRefused, match="nested deeper|more than"):
        read_yaml(text, "profiles")


def _profiles(root: Path, text: str) -> None:
    (root / "book" / "profiles.yml").write_text(text)


@pytest.mark.parametrize("text, message", [
    ("quick: {05_theory: {epochs: 1, '__import__(\"os\")': 1}}",
     "profile 'quick', 05_theory: __import__(\"os\") is not a parameter of 05_theory; allowed names"),
    ("quick: {05_theory: {epoch: 1}}", "profile 'quick', 05_theory: epoch is not a parameter of 05_theory"),
    ("quick: {_all: {devic: cpu}}", "profile 'quick', _all: devic is not a parameter of any chapter"),
    ("quick: {99_nope: {epochs: 1}}", "profile 'quick' has the key '99_nope', which is not a chapter"),
    ("- quick\n- full\n", "holds a list; expected a map of profile names"),
    ("quick\n", "holds a text; expected a map of profile names"),
    ("quick: [1, 2]\n", "profile 'quick' holds a list; expected a map of chapter names"),
    ("quick: {_all: [device, cpu]}", "profile 'quick', _all: holds a list; expected a map of parameter names"),
    ("quick: {05_theory: {dataset: !!binary aGk=}}", "the YAML type !!binary is not allowed"),
])
def test_a_profile_with_an_unknown_key_or_a_wrong_structure_is_one_error_naming_it(book_here, capsys, text,
                                                                                    message):
    _profiles(book_here, text)
    assert main(["chapter", "07_verdict", "--profile", "quick"]) == 1
    err = capsys.readouterr().err
    assert "book/profiles.yml" in err and message in err and "Traceback" not in err


def test_the_books_own_profiles_are_valid():
    profiles = book.load_profiles(REPO)
    assert {"smoke", "quick", "cifar", "full"} <= set(profiles)


def test_a_results_folder_that_cannot_be_written_stops_a_chapter_in_one_line(book_here, monkeypatch, capsys):
    blocker = book_here / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("BNPRIVACY_RESULTS", str(blocker / "results"))
    assert main(["chapter", "07_verdict", "--profile", "smoke"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write into") and "BNPRIVACY_RESULTS" in err and err.count("\n") == 1
