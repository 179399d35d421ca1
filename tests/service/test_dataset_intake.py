"""Registering datasets from hostile or careless files: an .npz is sized from its headers (a zip bomb is
never inflated), a CSV manifest may only name files inside its own folder, and every registered file is
pinned by its sha256. Through real HTTP against uvicorn, on the embedded database."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from service.core.dataset_ids import read_ids, read_samples
from service.core.db.engine import session_scope
from service.core.db.tables import Dataset, DatasetSample
from service.core.errors import ProblemError
from service.core.settings import Settings
from tests.factories import make_key
from tests.liveapp import LiveApp, prepared, serve
from workers.datasets import DatasetRef, load_registered


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveApp, str]]:
    settings = prepared(Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"), UNLEARN_QUEUE="q-ds"))  # type: ignore[call-arg]
    with session_scope(settings.resolved_database_url) as s:
        admin = make_key(s, scopes=("admin",))
    with serve(settings) as app:
        yield app, admin


def zeros_npz(path: Path, rows: int = 1300) -> int:
    """A small file whose `x` inflates to ~52 MB of zeros; returns that inflated size."""
    x = np.zeros((rows, 100, 100), dtype=np.float32)
    np.savez_compressed(
        path, x=x, y=np.arange(rows, dtype=np.int64) % 10, ids=np.array([f"s{i}" for i in range(rows)])
    )
    return x.nbytes


def test_npz_rows_are_counted_from_the_header_without_inflating_x(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    inflated = zeros_npz(path)
    assert path.stat().st_size < inflated // 100  # a compressible file: small on disk
    tracemalloc.start()
    try:
        ids, labels = read_ids("npz", path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ids) == len(labels) == 1300 and ids[:2] == ["s0", "s1"] and labels[:3] == [0, 1, 2]
    assert peak < inflated // 20, f"peak {peak} bytes: x was inflated ({inflated} bytes)"


@pytest.mark.parametrize(
    ("arrays", "says"),
    [
        ({"x": np.zeros((3, 2)), "y": np.zeros(3, dtype=np.int64)}, "missing arrays ['ids']"),
        (
            {"x": np.zeros((3, 2)), "y": np.zeros(2, dtype=np.int64), "ids": np.array(["a", "b", "c"])},
            "one row per sample (y and ids 1-D); their shapes: x [3, 2], y [2], ids [3]",
        ),
        ({"x": np.zeros((3, 2)), "y": np.zeros(3), "ids": np.array(["a", "b", "c"])}, "integer class labels"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(3, dtype=np.int64), "ids": np.arange(3)}, "unicode"),
        (
            {
                "x": np.array(["a", "b", "c"]),
                "y": np.zeros(3, dtype=np.int64),
                "ids": np.array(["a", "b", "c"]),
            },
            "numeric",
        ),
    ],
)
def test_malformed_npz_files_are_refused_by_name(tmp_path: Path, arrays: dict, says: str) -> None:
    from service.core.errors import Unprocessable

    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(Unprocessable) as err:
        read_ids("npz", path)
    assert says in err.value.detail


def test_an_x_shorter_than_its_header_says_is_refused_at_registration(tmp_path: Path) -> None:
    """A truncated x.npy registered, and every model on it then went invalid ("mmap length is greater than
    file size": a probe); an npz's x is held to what its zip entry holds, as y and ids were."""
    import zipfile

    from service.core.errors import Unprocessable

    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "x.npy", np.zeros((300, 4), dtype=np.float32))
    np.save(folder / "y.npy", np.zeros(300, dtype=np.int64))
    np.save(folder / "ids.npy", np.array([f"s{i}" for i in range(300)]))
    assert len(read_ids("npy", folder)[0]) == 300
    whole = (folder / "x.npy").read_bytes()
    (folder / "x.npy").write_bytes(whole[:-8])
    with pytest.raises(Unprocessable, match="x.npy is cut short"):
        read_ids("npy", folder)

    def member(array: np.ndarray) -> bytes:
        out = io.BytesIO()
        np.save(out, array)
        return out.getvalue()

    with zipfile.ZipFile(tmp_path / "short.npz", "w") as zf:
        zf.writestr("x.npy", whole[: len(whole) // 2])  # the header of 300 rows, half of their bytes
        zf.writestr("y.npy", member(np.zeros(300, dtype=np.int64)))
        zf.writestr("ids.npy", member(np.array([f"s{i}" for i in range(300)])))
    with pytest.raises(Unprocessable, match="array x declares more data than the archive holds"):
        read_ids("npz", tmp_path / "short.npz")


def test_an_npz_upload_that_would_inflate_is_registered_without_inflating(
    live: tuple[LiveApp, str], tmp_path: Path
) -> None:
    app, admin = live
    zeros_npz(tmp_path / "z.npz", rows=200)
    raw = (tmp_path / "z.npz").read_bytes()
    with app.client(admin) as c:
        r = c.post("/v1/datasets/upload", data={"name": "zeros"}, files={"file": ("z.npz", raw)})
    assert r.status_code == 201, r.text
    assert r.json()["num_samples"] == 200
    assert r.json()["sha256"] == hashlib.sha256(raw).hexdigest()


def test_an_npz_declaring_more_samples_than_a_dataset_may_hold_is_refused_before_its_ids_are_read(
    live: tuple[LiveApp, str], tmp_path: Path
) -> None:
    """A probe's 684 KB npz of compressed zeros declared 80 million IDs: the API held 2.4 GB for 36 s
    reading them before refusing the set. The header's row count is checked first."""
    app, admin = live
    n = app.settings.max_dataset_samples + 1
    np.savez_compressed(
        tmp_path / "many.npz", x=np.zeros((n, 1), np.uint8), y=np.zeros(n, np.int8), ids=np.zeros(n, "<U1")
    )
    raw = (tmp_path / "many.npz").read_bytes()
    assert len(raw) < 100_000
    with app.client(admin) as c:
        r = c.post("/v1/datasets/upload", data={"name": "many"}, files={"file": ("many.npz", raw)})
    assert r.status_code == 422, r.text
    assert f"declares {n:,} samples" in r.json()["detail"] and "UNLEARN_MAX_DATASET_SAMPLES" in r.text
    assert list((app.settings.dataset_dir / "uploads").iterdir()) == []


def test_an_npz_whose_x_would_not_fit_a_workers_memory_is_refused_from_its_header(tmp_path: Path) -> None:
    """A worker decompresses an npz whole and holds x beside it as float32, at a declared size where there
    is one: 12 MB of compressed zeros declaring 12 GB registered, and the first job on it took a worker's
    memory. Refused at registration, uploaded or by path, naming the limit and the kinds that are read from
    disk instead (here a 10 MB limit)."""
    data = tmp_path / "data"
    data.mkdir()
    inflated = zeros_npz(data / "big.npz")  # 52 MB as float32, ~100 KB on disk
    settings = prepared(
        Settings(  # type: ignore[call-arg]
            UNLEARN_VAR_DIR=str(tmp_path / "var"), UNLEARN_QUEUE="q-npz", UNLEARN_DATA_ROOTS=str(data),
            UNLEARN_MAX_NPZ_BYTES=str(10 * 1024**2),
        )
    )  # fmt: skip
    with session_scope(settings.resolved_database_url) as s:
        admin = make_key(s, scopes=("admin",))
    with serve(settings) as app, app.client(admin) as c:
        raw = (data / "big.npz").read_bytes()
        assert len(raw) < inflated // 100
        uploaded = c.post("/v1/datasets/upload", data={"name": "big"}, files={"file": ("big.npz", raw)})
        by_path = c.post("/v1/datasets", json={"name": "big", "kind": "npz", "uri": str(data / "big.npz")})
        small = c.post(
            "/v1/datasets", json={"name": "ok", "kind": "npz", "uri": str(zeros_npz_at(data, 100))}
        )
        images = data / "images.npz"  # 20 small images, declared to be resized to 2048x2048: 320 MiB
        names = np.array([f"i{i}" for i in range(20)])
        np.savez(images, x=np.zeros((20, 28, 28), np.uint8), y=np.zeros(20, np.int64), ids=names)
        resize = {"layout": "HW", "scale": 255, "size": [2048, 2048]}
        resized = c.post(
            "/v1/datasets", json={"name": "big", "kind": "npz", "uri": str(images), "features": resize}
        )
        listed = c.get("/v1/datasets").json()
    for r in (uploaded, by_path):
        assert r.status_code == 422, r.text
        assert "x [1300, 100, 100] (float32) would take 99 MiB" in r.text, r.text  # read, and as float32
        assert "more than the 10 MiB" in r.text, r.text
        assert "UNLEARN_MAX_NPZ_BYTES" in r.text and "npy folder" in r.text, r.text
    assert small.status_code == 201, small.text  # 8 MB read and as float32: under the limit
    assert resized.status_code == 422 and "at the declared size" in resized.text, resized.text
    assert [d["name"] for d in listed] == ["ok"]
    assert list((settings.dataset_dir / "uploads").iterdir()) == []


def test_npz_ids_and_subjects_are_decoded_a_chunk_at_a_time_not_at_the_width_of_the_longest(
    tmp_path: Path,
) -> None:
    """numpy holds every string at the width of the longest, 4 bytes a character: a probe's 3.3 MB upload
    declared 4 million IDs 200 characters wide (3.2 GB of zeros) and held the API at 1.6 GB for 20 s. The
    strings are decoded a few MB at a time: here 100,000 short IDs and subjects stored 200 wide (80 MB
    each as numpy holds them) are read in a fraction of that."""
    n = 100_000
    ids = np.array([f"s{i}" for i in range(n)], dtype="<U200")
    subjects = np.array([f"p{i % 7}" if i % 3 else "" for i in range(n)], dtype="<U200")
    path = tmp_path / "wide.npz"
    np.savez_compressed(
        path, x=np.zeros((n, 1), np.uint8), y=np.zeros(n, np.int64), ids=ids, subject_ids=subjects
    )
    width = ids.nbytes
    del ids
    tracemalloc.start()
    try:
        got = read_samples("npz", path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.sample_ids[:2] == ["s0", "s1"] and len(got.sample_ids) == n
    assert got.subject_ids is not None and got.subject_ids[:3] == [None, "p1", "p2"]
    assert peak < width // 2, f"peak {peak:,} bytes against {width:,} for the ids as numpy holds them"


def test_npz_ids_stored_wider_than_an_id_may_be_are_refused_from_the_header(tmp_path: Path) -> None:
    """A row is decoded whole: ids declared 500 million characters wide (2 GB a row, a few MB of zeros
    compressed) would have been read into the API's memory one row at a time (a review)."""
    path = tmp_path / "wide.npz"
    np.savez(
        path, x=np.zeros((2, 1), np.uint8), y=np.zeros(2, np.int64), ids=np.array(["a", "b"], dtype="<U300")
    )
    with pytest.raises(ProblemError) as refused:
        read_samples("npz", path)
    assert "sample ID(s) are stored 300 characters wide, longer than 200" in str(refused.value)


def zeros_npz_at(folder: Path, rows: int) -> Path:
    path = folder / f"zeros-{rows}.npz"
    zeros_npz(path, rows)
    return path


def test_an_unreadable_upload_is_refused_naming_the_file_sent_not_the_servers_copy(
    live: tuple[LiveApp, str],
) -> None:
    app, admin = live
    with app.client(admin) as c:
        for kind, name in (("npz", "mine.npz"), ("webdataset", "mine.tar"), ("jsonl", "mine.jsonl")):
            sent = {"file": (name, b"junk")}
            r = c.post("/v1/datasets/upload", data={"name": "junk", "kind": kind}, files=sent)
            assert r.status_code == 422, r.text
            assert f"'{name}'" in r.json()["detail"], r.text
            assert str(app.settings.dataset_dir) not in r.text and not re.search(r"[0-9a-f]{32}", r.text)
    assert list((app.settings.dataset_dir / "uploads").iterdir()) == []  # nothing half-written


def write_manifest(folder: Path, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "a.npy", np.zeros((2, 2), dtype=np.float32))
    manifest = folder / "manifest.csv"
    manifest.write_text("sample_id,path,label\n" + "".join(f"{r}\n" for r in rows))
    return manifest


def test_manifest_paths_that_leave_its_folder_are_refused_naming_the_lines(
    live: tuple[LiveApp, str],
) -> None:
    app, admin = live
    folder = app.settings.dataset_dir / "m1"
    outside = app.settings.dataset_dir / "secret.npy"
    outside.parent.mkdir(parents=True, exist_ok=True)
    np.save(outside, np.ones((2, 2), dtype=np.float32))
    folder.mkdir(parents=True)
    (folder / "link.npy").symlink_to(outside)
    manifest = write_manifest(
        folder,
        ["ok-1,a.npy,0", "up,../secret.npy,1", "abs,/etc/passwd,1", "ok-2,./a.npy,0", "sym,link.npy,1"],
    )
    with app.client(admin) as c:
        r = c.post("/v1/datasets", json={"name": "m", "kind": "csv_manifest", "uri": str(manifest)})
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["lines"] == [3, 4, 6] and body["refused_count"] == 3
        for said in ("line 3: path '../secret.npy' has a '..' component", "line 4: absolute path", "line 6"):
            assert said in body["detail"]
        assert c.get("/v1/datasets").json() == []  # nothing half-registered
        # The same folder without the bad rows registers, pinned by the manifest's hash.
        manifest.write_text("sample_id,path,label\nok-1,a.npy,0\nok-2,sub/../a.npy,0\n")
        r = c.post("/v1/datasets", json={"name": "m", "kind": "csv_manifest", "uri": str(manifest)})
        assert r.status_code == 422 and "line 3" in r.json()["detail"]  # '..' even when it stays inside
        manifest.write_text("sample_id,path,label\nok-1,a.npy,0\nok-2,./a.npy,0\n")
        r = c.post("/v1/datasets", json={"name": "m", "kind": "csv_manifest", "uri": str(manifest)})
    assert r.status_code == 201, r.text
    assert r.json()["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()


def test_a_manifest_that_starts_with_a_byte_order_mark_registers_and_loads(live: tuple[LiveApp, str]) -> None:
    """Excel writes "CSV UTF-8" with a BOM; it is not part of the first column's name."""
    app, admin = live
    folder = app.settings.dataset_dir / "bom"
    folder.mkdir(parents=True)
    manifest = write_manifest(folder, ["s-1,a.npy,0", "s-2,a.npy,1"])
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    with app.client(admin) as c:
        r = c.post("/v1/datasets", json={"name": "bom", "kind": "csv_manifest", "uri": str(manifest)})
    assert r.status_code == 201, r.text
    assert r.json()["num_samples"] == 2
    with session_scope(app.db) as s:
        stored = s.execute(
            select(DatasetSample.sample_id, DatasetSample.label)
            .where(DatasetSample.dataset_id == r.json()["id"])
            .order_by(DatasetSample.position)
        ).all()
        ref = DatasetRef.of(s.get_one(Dataset, r.json()["id"]))
    assert [tuple(row) for row in stored] == [("s-1", 0), ("s-2", 1)]
    ds = load_registered(ref, workers=0)  # what a worker reads
    assert ds.ids == ["s-1", "s-2"] and ds.y.tolist() == [0, 1]


def test_a_dataset_registered_by_path_carries_its_files_sha256(live: tuple[LiveApp, str]) -> None:
    app, admin = live
    path = app.settings.dataset_dir / "small.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((4, 2)), y=np.arange(4), ids=np.array(["a", "b", "c", "d"]))
    path.write_bytes(buf.getvalue())
    with app.client(admin) as c:
        r = c.post("/v1/datasets", json={"name": "small", "kind": "npz", "uri": str(path)})
        assert r.status_code == 201, r.text
        assert r.json()["sha256"] == hashlib.sha256(buf.getvalue()).hexdigest()
        assert c.get(f"/v1/datasets/{r.json()['id']}").json()["sha256"] == r.json()["sha256"]


def test_an_uploaded_shard_is_pinned_the_way_the_worker_checks_it(
    live: tuple[LiveApp, str], tmp_path: Path
) -> None:
    """One .tar uploaded as kind webdataset is a folder kind of one shard: registered with the sha256 of
    its (name, sha256) listing, which the worker recomputes before it reads the samples (the file's own
    sha256 would make every job on it fail as 'changed since registration')."""
    import webdataset as wds  # type: ignore[import-untyped,unused-ignore]

    from service.core.dataset_ids import dataset_sha256
    from service.core.db.tables import Dataset
    from workers.datasets import DatasetRef, load_registered

    app, admin = live
    shard = tmp_path / "shard.tar"
    with wds.TarWriter(str(shard)) as sink:
        for i in range(6):
            pixels = np.full((4, 4), i / 10, dtype=np.float32)
            sink.write({"__key__": f"k{i}", "npy": pixels, "cls": str(i % 2)})
    with app.client(admin) as c:
        r = c.post(
            "/v1/datasets/upload",
            data={"name": "one-shard", "kind": "webdataset"},
            files={"file": ("shard.tar", shard.read_bytes())},
        )
    assert r.status_code == 201, r.text
    got = r.json()
    assert (got["kind"], got["num_samples"]) == ("webdataset", 6)
    assert got["sha256"] == dataset_sha256("webdataset", got["uri"])
    assert got["sha256"] != hashlib.sha256(shard.read_bytes()).hexdigest()
    with session_scope(app.settings.resolved_database_url) as s:
        ref = DatasetRef.of(s.get_one(Dataset, got["id"]))
    ds = load_registered(ref)  # refuses the data if the pinned sha256 does not match
    assert list(ds.ids) == [f"k{i}" for i in range(6)] and ds.y.tolist() == [0, 1, 0, 1, 0, 1]
    with app.client(admin) as c:  # without a kind, the name's suffix says it (it was read as an npz)
        r = c.post(
            "/v1/datasets/upload", data={"name": "by-suffix"}, files={"file": ("s.tar", shard.read_bytes())}
        )
    assert r.status_code == 201 and r.json()["kind"] == "webdataset", r.text
    # the same bytes sent twice are one data set (each upload's digest named its random file name, so
    # the copy could be registered as the first one's test set)
    assert r.json()["sha256"] == got["sha256"]
    uploads = app.settings.dataset_dir / "uploads"
    before = sorted(uploads.iterdir())
    with app.client(admin) as c:  # a refused shard leaves nothing behind, its folder included
        r = c.post("/v1/datasets/upload", data={"name": "junk"}, files={"file": ("j.tar", b"not a tar")})
    assert r.status_code == 422, r.text
    assert sorted(uploads.iterdir()) == before


def test_a_manifest_naming_a_missing_file_is_refused_naming_the_line(live: tuple[LiveApp, str]) -> None:
    """Before, it registered, and the model built on it became invalid with a bare FileNotFoundError."""
    app, admin = live
    manifest = write_manifest(app.settings.dataset_dir / "gone", ["ok-1,a.npy,0", "gone,nothere.npy,1"])
    with app.client(admin) as c:
        r = c.post("/v1/datasets", json={"name": "m", "kind": "csv_manifest", "uri": str(manifest)})
        assert r.status_code == 422, r.text
        assert "line 3: path 'nothere.npy': no file there" in r.json()["detail"]
        # and a label that is not a whole number is named by its line too (it was a bare int() error)
        manifest.write_text("sample_id,path,label\nok-1,a.npy,0\nhalf,a.npy,1.5\n")
        r = c.post("/v1/datasets", json={"name": "m", "kind": "csv_manifest", "uri": str(manifest)})
        assert r.status_code == 422 and "line 3: label '1.5' is not a whole number" in r.json()["detail"]
        # every problem at once: the first bad label had hidden the others and every path (a probe)
        manifest.write_text("sample_id,path,label\nok-1,a.npy,0\nx,a.npy,x\n,gone.npy,-1.5\ny,a.npy,\n")
        r = c.post("/v1/datasets", json={"name": "m", "kind": "csv_manifest", "uri": str(manifest)})
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith("5 problem(s) in the manifest: line 3: label 'x' is not a whole")
        for said in ("line 4: path 'gone.npy': no file there", "line 4: empty sample_id", "line 5: label ''"):
            assert said in r.json()["detail"]
        assert r.json()["lines"] == [3, 4, 5] and r.json()["refused_count"] == 5
        assert c.get("/v1/datasets").json() == []


def folder_dataset(folder: Path, kind: str) -> None:
    """A one-sample npy folder, or a one-shard WebDataset folder."""
    folder.mkdir(parents=True)
    if kind == "npy":
        np.save(folder / "x.npy", np.zeros((1, 2), dtype=np.float32))
        np.save(folder / "y.npy", np.zeros(1, dtype=np.int64))
        np.save(folder / "ids.npy", np.array(["s-0"]))
        return
    with tarfile.open(folder / "s0.tar", "w") as tar:
        for name, data in (("s-0.cls", b"0"), ("s-0.npy", _npy_bytes(np.zeros((1, 2, 2), np.float32)))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize(("kind", "swapped"), [("npy", "x.npy"), ("webdataset", "s0.tar")])
def test_a_folder_whose_file_is_a_symlink_out_of_the_data_roots_is_refused(
    live: tuple[LiveApp, str], tmp_path: Path, kind: str, swapped: str
) -> None:
    """The folder itself is inside the roots; a symlink in it would let the worker read any file."""
    app, admin = live
    elsewhere = tmp_path / "elsewhere"
    folder_dataset(elsewhere, kind)
    inside = app.settings.dataset_dir / "ok"
    folder_dataset(inside, kind)
    with app.client(admin) as c:
        r = c.post("/v1/datasets", json={"name": "ok", "kind": kind, "uri": str(inside)})
        assert r.status_code == 201, r.text  # the same folder without a link registers
        leaky = app.settings.dataset_dir / "leaky"
        folder_dataset(leaky, kind)
        (leaky / swapped).unlink()
        (leaky / swapped).symlink_to(elsewhere / swapped)
        r = c.post("/v1/datasets", json={"name": "leaky", "kind": kind, "uri": str(leaky)})
        assert r.status_code == 422, r.text
        assert "resolves to outside the data roots" in r.json()["detail"] and swapped in r.json()["detail"]
        # refused before a file is read: a probe's outside shard had its label quoted back
        assert "label" not in r.json()["detail"]
        (leaky / swapped).unlink()  # one leading to an upload (another tenant's, maybe) registered
        upload = app.settings.dataset_dir / "uploads" / swapped
        upload.parent.mkdir(parents=True, exist_ok=True)
        upload.write_bytes((elsewhere / swapped).read_bytes())
        (leaky / swapped).symlink_to(upload)
        r = c.post("/v1/datasets", json={"name": "leaky", "kind": kind, "uri": str(leaky)})
        assert r.status_code == 422 and "resolves to an uploaded file" in r.json()["detail"], r.text
        empty = app.settings.dataset_dir / "empty"  # no shards, no x.npy: a 422, not a 500 (a review)
        empty.mkdir()
        (empty.parent / "junk.bin").write_bytes(b"junk")  # a file no folder kind reads
        for uri in (str(empty), str(empty.parent / "junk.bin")):
            r = c.post("/v1/datasets", json={"name": "empty", "kind": kind, "uri": uri})
            assert r.status_code == 422, r.text
        loop = app.settings.dataset_dir / "loop"
        loop.symlink_to(loop)  # a loop, and a name over 255 bytes: the path's problem, not a 500
        for uri in (str(loop), str(app.settings.dataset_dir / ("x" * 300))):
            r = c.post("/v1/datasets", json={"name": "bad-path", "kind": kind, "uri": uri})
            assert r.status_code == 422, r.text


def test_another_tenants_upload_cannot_be_registered_by_path(live: tuple[LiveApp, str]) -> None:
    app, admin = live
    upload = app.settings.dataset_dir / "uploads" / "someone-elses.npz"
    upload.parent.mkdir(parents=True)
    zeros_npz(upload, rows=3)
    with app.client(admin) as c:
        r = c.post("/v1/datasets", json={"name": "theirs", "kind": "npz", "uri": str(upload)})
        assert r.status_code == 422, r.text
        assert "uploaded file" in r.json()["detail"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, whose writes fail with ENOSPC")
def test_an_upload_to_a_full_volume_is_a_507_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """A probe's checkpoint upload to a full disk was a 500 that left its first 100 KB in uploads/, where
    no sweep looks. /dev/full answers every write with ENOSPC, as a full volume does."""
    from fastapi import UploadFile

    from service.api.uploads import save_upload
    from service.core.errors import InsufficientStorage

    target = tmp_path / "uploads" / "upload.npz"
    target.parent.mkdir()
    target.symlink_to("/dev/full")
    with pytest.raises(InsufficientStorage) as full:
        save_upload(UploadFile(io.BytesIO(b"x" * (3 << 20)), filename="big.npz"), target)
    assert full.value.status == 507 and "No space left on device" in full.value.detail
    assert list(target.parent.iterdir()) == [] and Path("/dev/full").exists()
