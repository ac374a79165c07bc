"""Project store: projects, tags, images, duplicates, importers/writers, limits, crash safety."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from edgevision.errors import (
    ImportFormatError,
    ProjectExistsError,
    ProjectNotFoundError,
    TagError,
    UsageError,
)
from edgevision.store import project as project_module
from edgevision.store.project import Project


def _img(path: Path, color: tuple[int, int, int] = (10, 20, 30), size: tuple[int, int] = (32, 24), fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def _tree(root: Path, spec: dict[str, int]) -> Path:
    """root/<tag>/<i>.png with distinct colours so no two files are duplicates."""
    n = 0
    for tag, count in spec.items():
        for i in range(count):
            n += 1
            _img(root / tag / f"{i}.png", (n * 7 % 256, n * 13 % 256, n * 29 % 256))
    return root


def test_create_open_list_delete(home: Path) -> None:
    p = Project.create("flowers", "multilabel", "general-compact-s1", description="d")
    assert (p.name, p.type, p.domain) == ("flowers", "multilabel", "general-compact-s1")
    assert p.path == home / "projects" / "flowers"
    assert [q.name for q in Project.list()] == ["flowers"]
    assert Project.open("flowers").description == "d"
    with pytest.raises(ProjectExistsError):
        Project.create("flowers")
    p.delete()
    assert Project.list() == []
    with pytest.raises(ProjectNotFoundError, match="flowers"):
        Project.open("flowers")


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden", "x" * 65, "with space"])
def test_bad_project_names_are_refused(home: Path, name: str) -> None:
    with pytest.raises(UsageError):
        Project.create(name)
    assert not (home / "projects").exists() or not any((home / "projects").iterdir())


def test_bad_type_and_domain(home: Path) -> None:
    with pytest.raises(UsageError, match="multiclass"):
        Project.create("p", "classify")
    with pytest.raises(UsageError, match="did you mean 'general-compact'"):
        Project.create("p", domain="general-compat")


def test_tags_create_rename_delete_and_negative(home: Path) -> None:
    p = Project.create("p")
    p.create_tag("cat")
    with pytest.raises(TagError, match="already exists"):
        p.create_tag("CAT")
    neg = p.create_tag("negative")
    assert (neg.name, neg.kind) == ("Negative", "negative")
    p.rename_tag("cat", "kitten")
    assert [t.name for t in p.tags()] == ["kitten", "Negative"]
    with pytest.raises(TagError, match="reserved"):
        p.rename_tag("Negative", "none")
    for bad in ["", " pad", "a/b", "..", "x\ny", "a;b"]:
        with pytest.raises(TagError):
            p.create_tag(bad)
    p.delete_tag("kitten")
    with pytest.raises(TagError, match="no tag 'kitten'"):
        p.get_tag("kitten")


def test_add_images_duplicates_list_retag_remove(home: Path, tmp_path: Path) -> None:
    p = Project.create("p")
    a = _img(tmp_path / "a.png", (1, 2, 3))
    b = _img(tmp_path / "b.jpg", (200, 100, 50), fmt="JPEG")
    copy = tmp_path / "copy-of-a.png"
    copy.write_bytes(a.read_bytes())
    report = p.add_images([a, copy], ["cat"])
    assert len(report.added) == 1 and report.duplicates == [(str(copy), report.added[0])]
    report = p.add_images([b])
    assert len(report.added) == 1
    assert [r.original_name for r in p.images(tag="cat")] == ["a.png"]
    [untagged] = p.images(untagged=True)
    assert untagged.original_name == "b.jpg" and untagged.format == "JPEG"
    assert untagged.path.is_file() and untagged.path.name.startswith(untagged.sha256)
    p.set_image_tags(untagged.id, ["dog"])
    assert p.get_image(untagged.id[:8]).tags == ("dog",)
    with pytest.raises(TagError, match="exactly one tag"):
        p.set_image_tags(untagged.id, ["dog", "cat"])
    assert p.remove_images([untagged.id]) == 1
    assert not untagged.path.exists() and p.image_count() == 1


def test_multiclass_and_negative_rules_on_import(home: Path, tmp_path: Path) -> None:
    p = Project.create("p")
    report = p.add_images([_img(tmp_path / "x.png")], ["a", "b"])
    assert not report.added and "exactly one tag" in report.skipped[0][1]
    m = Project.create("m", "multilabel")
    report = m.add_images([_img(tmp_path / "y.png")], ["Negative", "a"])
    assert not report.added and "cannot be combined" in report.skipped[0][1]
    assert len(m.add_images([tmp_path / "y.png"], ["a", "b"]).added) == 1


def _bad_files(root: Path) -> dict[str, str]:
    """Files the importer must skip, with a word its reason must contain."""
    (root / "cat").mkdir(parents=True, exist_ok=True)
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "cat" / "text.jpg").write_text("not an image")
    good = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(good, format="PNG")
    (root / "cat" / "truncated.png").write_bytes(good.getvalue()[:300])
    Image.new("RGB", (8, 8)).save(root / "cat" / "picture.tiff", format="TIFF")
    (root / "cat" / "renamed-tiff.png").write_bytes((root / "cat" / "picture.tiff").read_bytes())
    Image.new("L", (10_300, 500)).save(root / "cat" / "too-wide.png")
    Image.new("L", (260, 10)).save(root / "cat" / "sliver.png")
    (root / "notes.txt").write_text("x")
    return {"empty.png": "empty", "text.jpg": "readable", "truncated.png": "decode", "picture.tiff": "extension",
            "renamed-tiff.png": "TIFF", "too-wide.png": "10240", "sliver.png": "aspect", "notes.txt": "tag folder"}


def test_folder_import_reports_bad_files_by_name_and_keeps_the_rest(home: Path, tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"cat": 3, "dog": 2})
    expected = _bad_files(root)
    p = Project.create("p")
    report = p.import_folder(root)
    assert len(report.added) == 5 and sorted(report.tags_created) == ["cat", "dog"]
    reasons = {Path(path).name: reason for path, reason in report.skipped}
    assert set(reasons) == set(expected)
    for name, word in expected.items():
        assert word.lower() in reasons[name].lower(), (name, reasons[name])
    assert {t.name: t.image_count for t in p.tags()} == {"cat": 3, "dog": 2}


def test_folder_import_needs_tag_folders(home: Path, tmp_path: Path) -> None:
    _img(tmp_path / "flat" / "a.png")
    with pytest.raises(ImportFormatError, match="no tag folders"):
        Project.create("p").import_folder(tmp_path / "flat")


def test_csv_import_paths_tags_and_tricks(home: Path, tmp_path: Path) -> None:
    data = tmp_path / "set"
    _img(data / "img" / "1.png", (1, 1, 1))
    _img(data / "img" / "2.png", (2, 2, 2))
    _img(data / "img" / "3.png", (3, 3, 3))
    _img(tmp_path / "outside.png", (4, 4, 4))
    (data / "list.csv").write_text(
        "path,tags\n"
        "img/1.png,red;round\n"
        "img/2.png,red\n"
        "img/3.png,\n"
        "../outside.png,red\n"
        "img/missing.png,red\n"
        "img/1.png,a,b\n"
    )
    p = Project.create("m", "multilabel")
    report = p.import_csv(data / "list.csv")
    assert len(report.added) == 3
    skipped = dict(report.skipped)
    assert "leaves the CSV's folder" in skipped[f"{data / 'list.csv'}:5"]
    assert "not found" in skipped[f"{data / 'list.csv'}:6"]
    assert "columns" in skipped[f"{data / 'list.csv'}:7"]
    tags = {r.original_name: r.tags for r in p.images()}
    assert tags == {"1.png": ("red", "round"), "2.png": ("red",), "3.png": ()}


def test_export_csv_and_folder_round_trip(home: Path, tmp_path: Path) -> None:
    src = Project.create("src", "multilabel")
    _img(tmp_path / "a.png", (1, 2, 3))
    _img(tmp_path / "b.png", (3, 2, 1))
    src.add_images([tmp_path / "a.png"], ["x", "y"])
    src.add_images([tmp_path / "b.png"], ["y"])
    csv_path = src.export_csv(tmp_path / "out-csv")
    dst = Project.create("dst", "multilabel")
    assert len(dst.import_csv(csv_path).added) == 2
    assert sorted((r.sha256, r.tags) for r in dst.images()) == sorted((r.sha256, r.tags) for r in src.images())
    folder = src.export_folder(tmp_path / "out-folder")
    assert sorted(p.parent.name for p in folder.rglob("*.png")) == ["x", "y", "y"]


def test_interrupted_import_leaves_nothing(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "data", {"cat": 3, "dog": 3})
    p = Project.create("p")
    real = project_module._write_atomic
    calls = {"n": 0}

    def flaky(path: Path, data: bytes) -> bool:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(project_module, "_write_atomic", flaky)
    with pytest.raises(KeyboardInterrupt):
        p.import_folder(root)
    assert p.image_count() == 0 and p.tags() == []
    assert [f for f in (p.path / "images").rglob("*") if f.is_file()] == []
    monkeypatch.setattr(project_module, "_write_atomic", real)
    assert len(p.import_folder(root).added) == 6


def test_files_left_by_a_crash_are_removed_on_open(home: Path, tmp_path: Path) -> None:
    p = Project.create("p")
    p.add_images([_img(tmp_path / "keep.png")], ["a"])
    orphan = p.path / "images" / "ff" / ("f" * 64 + ".png")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half")
    (p.path / ".import-in-progress").touch()
    p.close()
    q = Project.open("p")
    assert not orphan.exists() and q.images()[0].path.exists()


def test_store_is_sqlite_wal(home: Path) -> None:
    p = Project.create("p")
    mode = p._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
