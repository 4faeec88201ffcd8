import json
import logging
import sysconfig
from pathlib import Path

import pytest

from polymodal.data.text.corpus import in_val_split, read_documents, stdlib_docstrings

LONG = "x" * 50  # pads docstrings past the default min_chars=40


def _write_module(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def fake_stdlib(tmp_path, monkeypatch):
    """A tiny stdlib tree: good modules, skipped trees, and unparsable files."""
    root = tmp_path / "lib"
    for i in range(30):
        _write_module(
            root,
            f"pkg{i}/mod.py",
            f'"""module pkg{i}.mod {LONG}"""\n'
            f"class C:\n    '''\n    class of pkg{i}.mod\n        indented {LONG}\n    '''\n"
            f"    async def m(self):\n        '''method of pkg{i}.mod {LONG}'''\n"
            f"def short():\n    '''too short'''\n",
        )
    _write_module(root, "pkg0/__init__.py", f'"""module pkg0 {LONG}"""\n')
    for skipped in ("test", "tests", "idlelib", "site-packages", "lib2to3", "pkg1/test"):
        _write_module(root, f"{skipped}/hidden.py", f'"""skipped tree {LONG}"""\n')
    _write_module(root, "broken.py", '"""unterminated\n')
    (root / "latin1.py").write_bytes(b'"""caf\xe9 ' + LONG.encode() + b'"""\n')
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"stdlib": str(root)})
    return root


def test_fake_stdlib_extraction_skips_trees_and_broken_files_and_cleans(fake_stdlib):
    docs = stdlib_docstrings("all")
    assert not any("skipped tree" in d or "caf" in d or "unterminated" in d for d in docs)
    assert not any(d == "too short" for d in docs)
    assert f"module pkg0 {LONG}" in docs
    # 30 modules x (module, class, method) + pkg0/__init__
    assert len(docs) == 91
    assert f"class of pkg7.mod\n    indented {LONG}" in docs  # inspect.cleandoc applied
    assert stdlib_docstrings("all", min_chars=1000) == []


def test_fake_stdlib_split_is_by_module(fake_stdlib):
    train, val = stdlib_docstrings("train", 0.3), stdlib_docstrings("val", 0.3)
    assert sorted(train + val) == sorted(stdlib_docstrings("all"))
    for i in range(30):
        name = f"pkg{i}.mod"
        in_train = [d for d in train if f"{name} " in d or f"{name}\n" in d]
        in_val = [d for d in val if f"{name} " in d or f"{name}\n" in d]
        expected_val = in_val_split(name, 0.3)
        assert (len(in_val), len(in_train)) == ((3, 0) if expected_val else (0, 3))
    assert train and val


def test_real_stdlib_docstrings_many_deterministic_disjoint():
    everything = stdlib_docstrings("all")
    assert len(everything) > 1000
    assert stdlib_docstrings("all") == everything
    train, val = stdlib_docstrings("train"), stdlib_docstrings("val")
    assert len(train) + len(val) == len(everything)
    assert sorted(train + val) == sorted(everything)
    assert 0.02 < len(val) / len(everything) < 0.3
    assert all(len(d) >= 40 for d in everything)


def test_stdlib_docstrings_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        stdlib_docstrings("test")
    with pytest.raises(ValueError, match="val_fraction"):
        stdlib_docstrings("train", val_fraction=1.5)


def test_in_val_split_fraction_roughly_holds():
    names = [f"module_{i}" for i in range(4000)]
    share = sum(in_val_split(n, 0.25) for n in names) / len(names)
    assert 0.22 < share < 0.28
    assert not any(in_val_split(n, 0.0) for n in names)


def test_read_documents_txt_jsonl_dirs_and_globs(tmp_path):
    (tmp_path / "b.txt").write_text("second file\nwith two lines", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first file", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    lines = [json.dumps({"text": "json doc 1"}), "", json.dumps({"body": "x", "text": "json doc 2"})]
    (tmp_path / "sub" / "c.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "sub" / "ignored.csv").write_text("not read", encoding="utf-8")

    assert read_documents([tmp_path]) == [
        "first file",
        "second file\nwith two lines",
        "json doc 1",
        "json doc 2",
    ]
    assert read_documents([str(tmp_path / "*.txt")]) == ["first file", "second file\nwith two lines"]
    assert read_documents([tmp_path / "sub" / "c.jsonl", tmp_path / "a.txt"]) == [
        "json doc 1",
        "json doc 2",
        "first file",
    ]


def test_read_documents_custom_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"content": "hello"}) + "\n", encoding="utf-8")
    assert read_documents([path], text_field="content") == ["hello"]


def test_read_documents_counts_and_reports_skips(tmp_path, caplog):
    good = tmp_path / "good.jsonl"
    good.write_bytes(
        b'{"text": "ok 1"}\n'
        b"{not json\n"  # line 2: malformed
        b'{"other": "no text"}\n'  # line 3: missing field
        b'{"text": 5}\n'  # line 4: not a string
        b'{"text": "bad \xff byte"}\n'  # line 5: not UTF-8
        b"[1, 2]\n"  # line 6: not an object
        b'{"text": "ok 2"}\n'
    )
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9")
    with caplog.at_level(logging.WARNING, logger="polymodal.data.text.corpus"):
        docs = read_documents([good, tmp_path / "latin.txt"])
    assert docs == ["ok 1", "ok 2"]
    (message,) = [r.getMessage() for r in caplog.records]
    assert "skipped 6" in message
    assert "1 malformed JSON" in message and "2 non-UTF-8" in message and "3 no string field 'text'" in message
    assert f"{good}:2" in message


def test_read_documents_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_documents([tmp_path / "missing.txt"])
    with pytest.raises(FileNotFoundError, match="nomatch"):
        read_documents([str(tmp_path / "nomatch*.jsonl")])
    (tmp_path / "data.csv").write_text("a,b", encoding="utf-8")
    with pytest.raises(ValueError, match="suffix '.csv'"):
        read_documents([tmp_path / "data.csv"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no usable documents.*1 malformed JSON"):
        read_documents([bad])
    with pytest.raises(TypeError, match="single path"):
        read_documents(str(bad))
