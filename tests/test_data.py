"""Every shipped data file loads with the row counts and label sets its README states;
broken files give one-line errors with file and row (strict) or are counted (lenient)."""

import re
from collections import Counter
from pathlib import Path

import pytest

from crpo_ray import schemas
from crpo_ray.data import DataError, class_counts, fix_mojibake, load_source
from crpo_ray.data import imhi, mental_r1
from conftest import DATA, SHARED_DATA

BROKEN = Path(__file__).parent / "fixtures" / "broken-mental-r1"
ROOTS = [DATA] + ([SHARED_DATA] if SHARED_DATA.is_dir() else [])


def imhi_readme_counts(readme: Path):
    """{(dataset, split): Counter(label -> n)} from the README's "Label counts" section."""
    text = readme.read_text(encoding="utf-8").split("Label counts after normalization")[1]
    text = text.split("The gold label is")[0]
    test_part, train_part = text.split("train:", 1)
    test_part = test_part.split("test:", 1)[1]
    out = {}
    for part, is_test in ((test_part, True), (train_part, False)):
        for chunk in " ".join(part.split()).split("|"):
            head, rest = chunk.strip().split(" ", 1)
            name, split = (head, "test") if is_test else head.rsplit("_", 1)
            pairs = [p.strip().rsplit(" ", 1) for p in rest.split(",")]
            out[(name, split)] = Counter({label: int(n) for label, n in pairs})
    return out


def mental_r1_readme(readme: Path):
    """(complete file -> Counter), (sample file -> rows), (dataset -> label set) from the README."""
    text = readme.read_text(encoding="utf-8")
    complete, samples = {}, {}
    for path, rows, labels in re.findall(r"^\| (\S+_clean\.csv) \| (\d+) \| (.+?) \|$", text, re.M):
        complete[path] = (int(rows), Counter({l.rsplit(" ", 1)[0]: int(l.rsplit(" ", 1)[1]) for l in labels.split(", ")}))
    for path, rows in re.findall(r"^\| (\S+\.sample\.csv) \| (\d+) \|", text, re.M):
        samples[path] = int(rows)
    label_sets = {m[0]: [x.strip() for x in m[1].split(" / ")] for m in re.findall(r"^- (\S+): (.+?)(?: \(.*)?$", text, re.M)}
    return complete, samples, label_sets


@pytest.mark.parametrize("root", ROOTS, ids=[str(r) for r in ROOTS])
def test_imhi_counts_match_readme(root):
    expected = imhi_readme_counts(root / "imhi" / "README.md")
    assert len(expected) == 16  # 8 test files + 8 train/val files
    for (name, split), counts in expected.items():
        table, report = load_source("imhi", str(root / "imhi"), split, [name])
        assert Counter(table.column("label").to_pylist()) == counts, (name, split)
        assert report.unmapped == 0 and report.skipped == 0
        assert set(counts) <= set(imhi.LABEL_SETS[name])
        assert table.num_rows == sum(counts.values())


@pytest.mark.parametrize("root", ROOTS, ids=[str(r) for r in ROOTS])
def test_mental_r1_counts_match_readme(root):
    complete, samples, label_sets = mental_r1_readme(root / "mental-r1" / "README.md")
    assert len(complete) == 7 and len(samples) == 8 and len(label_sets) == 8
    assert label_sets == mental_r1.LABEL_SETS
    seen = 0
    for split in ("train", "val", "test"):
        table, report = load_source("mental_r1", str(root / "mental-r1"), split)
        assert report.unmapped == 0 and report.skipped == 0
        for f in report.files:
            rel = "/".join(Path(f.path).parts[-2:])
            rows = table.filter(__import__("pyarrow").compute.equal(table["dataset"], f.dataset))
            if rel in complete:
                n, counts = complete[rel]
                assert not f.is_sample
                assert Counter(rows.column("label").to_pylist()) == counts, rel
            else:
                n = samples[rel]
                assert f.is_sample
            assert rows.num_rows == n == f.loaded, rel
            assert set(rows.column("label").to_pylist()) <= set(label_sets[f.dataset])
            seen += 1
    assert seen == len(complete) + len(samples)


def test_examples_schema_and_ids():
    table, _ = load_source("mental_r1", str(DATA / "mental-r1"), "test", ["LID"])
    schemas.validate(table, schemas.EXAMPLES)
    row = table.slice(0, 1).to_pylist()[0]
    assert row["example_id"] == "mental_r1:LID:test:1" and row["label_set"] == ["[1-2]", "[2-3]", "[3-4]", "[4-5]"]
    assert row["instruction"].startswith("Determine the intensity of loneliness")
    # text kept byte for byte: CRLF inside LID's fields is preserved
    assert any("\r\n" in t for t in table.column("text").to_pylist())


def test_imhi_instruction_and_text():
    table, _ = load_source("imhi", str(DATA / "imhi"), "test", ["SAD", "DR"], limit=3)
    rows = table.to_pylist()
    sad = next(r for r in rows if r["dataset"] == "SAD")
    assert sad["instruction"].startswith("Which stress cause does this post show?") and '"school"' in sad["instruction"]
    dr = next(r for r in rows if r["dataset"] == "DR")
    assert dr["instruction"].startswith("Does the poster suffers from depression?")
    assert not any(r["text"].startswith("Post:") or "Question:" in r["text"][-40:] for r in rows)


def test_mojibake_repair():
    assert fix_mojibake("I don‚Äôt know") == ("I don’t know", True)
    assert fix_mojibake("café naïve 😢 你好") == ("café naïve 😢 你好", False)
    table, report = load_source("imhi", str(DATA / "imhi"), "val", ["MultiWD"])
    assert report.files[0].mojibake_fixed > 0
    assert not any("‚Äô" in t for t in table.column("text").to_pylist())
    raw, _ = load_source("imhi", str(DATA / "imhi"), "val", ["MultiWD"], fix_text=False)
    assert any("‚Äô" in t for t in raw.column("text").to_pylist())


@pytest.mark.parametrize(
    "dataset, message",
    [
        ("MissingColumn", r"MissingColumn/test_clean\.csv: missing column\(s\) mental_prompt"),
        ("UnclosedQuote", r"UnclosedQuote/test_clean\.csv: row 2 \(line \d+\): malformed CSV"),
        ("FieldCount", r"FieldCount/test_clean\.csv: row 2 \(line 3\): expected 3 fields, got 5"),
        ("EmptyText", r"EmptyText/test_clean\.csv: row 2: empty text"),
        ("BadBytes", r"BadBytes/test_clean\.csv: row 2 \(line 3\): undecodable bytes"),
        ("Empty", r"Empty/test_clean\.csv: empty file"),
    ],
)
def test_broken_files_strict(dataset, message):
    with pytest.raises(DataError, match=message) as info:
        load_source("mental_r1", str(BROKEN), "test", [dataset], strict=True)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dataset, loaded, skipped", [
    ("UnclosedQuote", 1, 1), ("FieldCount", 2, 1), ("EmptyText", 1, 1), ("BadBytes", 1, 1),
])
def test_broken_files_lenient(dataset, loaded, skipped):
    table, report = load_source("mental_r1", str(BROKEN), "test", [dataset], strict=False)
    assert table.num_rows == loaded == report.loaded
    assert report.skipped == skipped
    assert report.lines()[0].count("skipped") == 1


def test_unmapped_labels_counted_never_guessed():
    for strict in (True, False):
        table, report = load_source("mental_r1", str(BROKEN), "test", ["UnknownLabel"], strict=strict)
        # label set from the instruction's quoted options; "no" maps to "No", "Maybe" does not map
        assert table.column("label").to_pylist() == ["Yes", "No"]
        assert report.unmapped == 1 and dict(report.files[0].unmapped_labels) == {"Maybe": 1}
        assert "unmapped labels: 1" in report.lines()[0]


def test_missing_things_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="data directory not found"):
        load_source("mental_r1", str(tmp_path / "nope"), "test")
    with pytest.raises(DataError, match="dataset directory not found"):
        load_source("mental_r1", str(DATA / "mental-r1"), "test", ["NOPE"])
    with pytest.raises(DataError, match="no train file"):
        load_source("mental_r1", str(DATA / "mental-r1"), "train", ["FIG"])
    with pytest.raises(DataError, match="unknown IMHI dataset"):
        load_source("imhi", str(DATA / "imhi"), "test", ["nope"])
    with pytest.raises(DataError, match="has no train split"):
        load_source("imhi", str(DATA / "imhi"), "train", ["CAMS"])
    with pytest.raises(DataError, match="unknown data format"):
        load_source("csv", str(DATA), "test")


def test_imhi_strict_row_error(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "DR.csv").write_text(
        'query,gpt-3.5-turbo\n"Post: fine  Question: q","yes. Reasoning: r"\n"Post:   Question: q","no. Reasoning: r"\n')
    with pytest.raises(DataError, match=r"DR\.csv: row 2: empty text"):
        load_source("imhi", str(tmp_path), "test", ["DR"])
    table, report = load_source("imhi", str(tmp_path), "test", ["DR"], strict=False)
    assert table.num_rows == 1 and report.skipped == 1


def test_class_counts_and_limit():
    table, _ = load_source("mental_r1", str(DATA / "mental-r1"), "test", ["DATD", "LID"], limit=10)
    counts = class_counts(table)
    assert sum(counts["DATD"].values()) == 10 and sum(counts["LID"].values()) == 10
