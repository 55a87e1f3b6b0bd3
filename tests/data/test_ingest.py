"""Ingest: every item accounted for, safe decoding, manifests, versions and fingerprints."""

from __future__ import annotations

import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

import imagehash
import numpy as np
import polars as pl
import pytest
from PIL import Image

from conveyor.data import imageio
from conveyor.data.ingest import (
    MANIFEST_SCHEMA,
    QUARANTINE_SCHEMA,
    IngestError,
    IngestResult,
    ingest,
    parse_timestamp,
    source_fingerprint,
)
from helpers import imagefactory as F
from helpers.specs import ingest_spec as make_spec


def read(res: IngestResult) -> tuple[pl.DataFrame, pl.DataFrame]:
    return pl.read_parquet(res.manifest_path), pl.read_parquet(res.quarantine_path)


def reasons_by_name(q: pl.DataFrame, key: str = "path") -> dict[str, str]:
    return {Path(p).name: r for p, r in zip(q[key].to_list(), q["reason"].to_list())}


# ---- the bad kinds ---------------------------------------------------------------------------


def test_every_bad_kind_in_one_folder_is_quarantined_with_its_reason(tmp_path):
    root = tmp_path / "data"
    F.write_image(root / "cat" / "good1.png", seed=1)
    F.write_image(root / "cat" / "deeper" / "good2.jpg", seed=2)
    F.write_image(root / "dog" / "good3.png", seed=3)
    F.write_zero_byte(root / "cat" / "empty.png")
    F.write_truncated_png(root / "cat" / "truncated.png")
    F.write_random_bytes(root / "dog" / "random.png")
    F.write_text(root / "dog" / "notes.txt")
    F.write_png_header_only(root / "dog" / "bomb.png", 100_000, 100_000)  # PIL's own bomb error
    F.write_image(root / "dog" / "big_for_spec.png", size=(60, 60), seed=4)  # over max_pixels below
    F.write_image(root / "cat" / "tiny.png", size=(4, 30), seed=5)
    F.write_image(root / "cat" / "wide.png", size=(300, 10), seed=6)  # over max_side below
    outside = F.write_image(tmp_path / "outside" / "secret.png", seed=7)
    os.symlink(outside, root / "cat" / "escape.png")
    F.write_image(root / "cat" / ".hidden.png", seed=8)  # dot-files are not items
    (root / "README.txt").write_text("top-level files are not items")

    spec = make_spec(tmp_path, "data", min_side=8, max_side=200, max_pixels=3000)
    res = ingest(spec, tmp_path / "out")
    m, q = read(res)

    expected = {
        "empty.png": "zero_byte",
        "truncated.png": "corrupt",
        "random.png": "not_an_image",
        "notes.txt": "not_an_image",
        "bomb.png": "decompression_bomb",
        "big_for_spec.png": "decompression_bomb",
        "tiny.png": "too_small",
        "wide.png": "too_large",
        "escape.png": "path_escapes_root",
    }
    assert reasons_by_name(q) == expected
    assert sorted(m["id"].to_list()) == ["cat/deeper/good2.jpg", "cat/good1.png", "dog/good3.png"]
    assert res.received == 12 and res.accepted == 3 and res.quarantined == 9
    assert res.accepted + res.quarantined == res.received
    assert res.quarantine_reasons == {r: list(expected.values()).count(r) for r in set(expected.values())}
    # every message names the file, and the folder rows have no row number
    for path, detail in zip(q["path"].to_list(), q["detail"].to_list()):
        assert Path(path).name in detail, detail
    assert q["row"].null_count() == q.height
    assert set(q["field"].to_list()) == {"path"}
    bomb = q.filter(pl.col("path").str.ends_with("big_for_spec.png"))["detail"][0]
    assert "60x60" in bomb and "3,000" in bomb  # the declared size and the limit


def test_manifest_row_problems_are_quarantined_with_row_and_field(tmp_path):
    root = tmp_path / "data"
    F.write_image(root / "a.png", seed=1)
    F.write_image(root / "b.png", seed=2)
    F.write_image(root / "c.png", seed=3)
    F.write_image(root / "d.png", seed=5)
    F.write_image(tmp_path / "outside.png", seed=4)
    rows = [
        ("a.png", "cat", "2026-01-01T10:00:00Z"),  # 1 ok
        ("b.png", "zebra", ""),  # 2 unknown label
        ("c.png", "", ""),  # 3 missing label
        ("a.png", "cat", ""),  # 4 duplicate of row 1
        ("missing.png", "cat", ""),  # 5 missing file
        ("../outside.png", "cat", ""),  # 6 escapes the root
        ("d.png", "dog", "yesterday-ish"),  # 7 bad timestamp
        ("", "cat", ""),  # 8 no path
    ]
    pl.DataFrame(rows, schema=["path", "label", "captured_at"], orient="row").write_csv(root / "m.csv")
    res = ingest(make_spec(tmp_path, "data/m.csv", classes=["cat", "dog"]), tmp_path / "out")
    m, q = read(res)
    got = {r: (reason, fld) for r, reason, fld in zip(q["row"].to_list(), q["reason"].to_list(), q["field"].to_list())}
    assert got == {
        2: ("unknown_label", "label"),
        3: ("missing_label", "label"),
        4: ("duplicate_row", "path"),
        5: ("missing_file", "path"),
        6: ("path_escapes_root", "path"),
        7: ("bad_timestamp", "captured_at"),
        8: ("missing_file", "path"),
    }
    assert m["id"].to_list() == ["a.png"]
    assert res.received == 8 == res.accepted + res.quarantined
    details = dict(zip(q["row"].to_list(), q["detail"].to_list()))
    assert "row 2" in details[2] and "zebra" in details[2] and "b.png" in details[2]
    assert "row 1" in details[4] and "row 4" in details[4]
    assert "missing.png" in details[5]
    assert "yesterday-ish" in details[7]
    assert q.filter(pl.col("row") == 6)["rel_path"][0] is None  # outside the root: no relative path


def test_symlink_inside_root_is_accepted_and_resolved(tmp_path):
    root = tmp_path / "data"
    target = F.write_image(root / "cat" / "real.png", seed=1)
    os.symlink(target, root / "cat" / "link.png")
    res = ingest(make_spec(tmp_path, "data"), tmp_path / "out")
    m, q = read(res)
    assert q.height == 0
    assert m["id"].to_list() == ["cat/link.png", "cat/real.png"]
    assert m["path"].to_list() == [str(target.resolve())] * 2
    assert m["content_hash"].n_unique() == 1


def test_folder_links_loops_and_hidden_folders(tmp_path):
    root = tmp_path / "data"
    F.write_image(root / "cat" / "sub" / "a.png", seed=1)
    F.write_image(root / "dog" / "b.png", seed=2)
    F.write_image(root / "dog" / ".cache" / "c.png", seed=3)  # hidden folder: not walked
    os.symlink(root / "cat", root / "cat" / "sub" / "loop")  # a link to an ancestor: no endless walk
    os.symlink(root / "cat" / "sub", root / "dog" / "shared")  # a link to a folder of another class
    os.symlink(root / "cat" / "nothing.png", root / "dog" / "broken.png")
    os.symlink(tmp_path, root / "dog" / "up")  # a folder outside the root
    res = ingest(make_spec(tmp_path, "data"), tmp_path / "out", progress=True)
    m, q = read(res)
    assert m["id"].to_list() == ["cat/sub/a.png", "dog/b.png", "dog/shared/a.png"]
    assert dict(zip(m["id"].to_list(), m["label"].to_list()))["dog/shared/a.png"] == "dog"
    assert reasons_by_name(q) == {"broken.png": "missing_file", "up": "path_escapes_root"}
    assert res.received == 5


def test_pil_bomb_warning_becomes_a_quarantine(tmp_path):
    root = tmp_path / "data"
    F.write_image(root / "cat" / "ok.png", seed=1)
    # between PIL's MAX_IMAGE_PIXELS and twice that, PIL only warns
    side = int((Image.MAX_IMAGE_PIXELS * 1.2) ** 0.5)
    F.write_png_header_only(root / "cat" / "warn.png", side, side)
    spec = make_spec(tmp_path, "data", max_pixels=10 * Image.MAX_IMAGE_PIXELS, max_side=100_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = ingest(spec, tmp_path / "out")
    _, q = read(res)
    assert q["reason"].to_list() == ["decompression_bomb"] and res.accepted == 1
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


# ---- decoding --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_modes_are_normalised_to_rgb_and_accepted(tmp_path, mode):
    suffix = {"CMYK": ".jpg", "I": ".tif", "F": ".tif"}.get(mode, ".png")
    path = F.write_mode(tmp_path / "data" / "x" / f"img{suffix}", mode)
    res = ingest(make_spec(tmp_path, "data"), tmp_path / "out")
    m, q = read(res)
    assert q.height == 0, q["detail"].to_list()
    assert m["mode"].to_list() == [Image.open(path).mode]
    d = imageio.decode_image(path.read_bytes(), max_pixels=10**6)
    assert d.image.mode == "RGB" and d.image.size == (20, 16)


def test_transparency_is_composited_on_white_and_16_bit_is_scaled():
    import io

    buf = io.BytesIO()
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(buf, "PNG")
    d = imageio.decode_image(buf.getvalue(), max_pixels=10**6)
    assert (np.asarray(d.image) == 255).all() and d.brightness == pytest.approx(1.0)
    buf = io.BytesIO()
    Image.new("I;16", (9, 9), 65535).save(buf, "PNG")
    d = imageio.decode_image(buf.getvalue(), max_pixels=10**6)
    assert (np.asarray(d.image) == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    F.write_jpeg_with_orientation(tmp_path / "data" / "x" / "rot6.jpg", 6, size=(40, 20))
    F.write_jpeg_with_orientation(tmp_path / "data" / "x" / "rot1.jpg", 1, size=(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 8
    F.write_image(tmp_path / "data" / "x" / "rot8.png", size=(30, 12), exif=exif)  # PNG eXIf chunk
    m, _ = read(ingest(make_spec(tmp_path, "data"), tmp_path / "out"))
    sizes = dict(zip(m["id"].to_list(), zip(m["width"].to_list(), m["height"].to_list())))
    assert sizes == {"x/rot1.jpg": (40, 20), "x/rot6.jpg": (20, 40), "x/rot8.png": (12, 30)}


def test_declared_size_is_checked_before_any_pixel_is_decoded(monkeypatch):
    import io

    buf = io.BytesIO()
    Image.fromarray(F.noise_array((50, 50))).save(buf, "PNG")

    def boom(self, *a, **k):  # load() must never be reached
        raise AssertionError("load() called on a bomb")

    monkeypatch.setattr(Image.Image, "load", boom)
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)
    with pytest.raises(imageio.DecodeError) as err:
        imageio.open_image(buf.getvalue(), max_pixels=2499)
    assert err.value.reason == "decompression_bomb"


def test_features_match_imagehash_and_plain_numpy():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(F.noise_array((w, h), seed=s))
              for s, (w, h) in enumerate([(24, 24), (64, 33), (17, 90), (300, 280), (32, 32), (8, 9)])]
    images.append(Image.fromarray(rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)))
    # images above STATS_MAX_SIDE are described by their box-reduced working copy
    work = [im if max(im.size) <= imageio.STATS_MAX_SIDE else im.reduce(-(-max(im.size) // imageio.STATS_MAX_SIDE))
            for im in images]
    assert work[3].size == (150, 140)
    for fn, ref in [("phash", imagehash.phash), ("dhash", imagehash.dhash), ("ahash", imagehash.average_hash),
                    ("whash", imagehash.whash)]:
        for size in (8, 16):
            feats = imageio.image_features(images, hash_fn=fn, hash_size=size)
            assert [f.phash for f in feats] == [str(ref(im, hash_size=size)) for im in work], (fn, size)
    feats = imageio.image_features(images)
    for im, f in zip(work, feats):
        g = np.asarray(im.convert("L"), dtype=np.float64) / 255
        lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
        hsv_s = np.asarray(im.convert("HSV"))[..., 1].mean() / 255
        assert f.brightness == pytest.approx(g.mean(), abs=1e-6)
        assert f.contrast == pytest.approx(g.std(), abs=1e-6)
        assert f.sharpness == pytest.approx(lap.var(), rel=1e-5, abs=1e-9)
        assert f.saturation == pytest.approx(hsv_s, abs=0.01)


def test_hue_is_the_dominant_colour_on_the_wheel():
    def solid(*rgb, size=(12, 10)):
        return Image.new("RGB", size, rgb)

    half = np.zeros((10, 12, 3), dtype=np.uint8)
    half[:, :6] = (255, 0, 0)
    half[:, 6:] = (0, 255, 0)
    images = [solid(255, 0, 0), solid(0, 255, 0), solid(0, 0, 255), solid(128, 128, 128), solid(255, 255, 0),
              solid(200, 40, 40), Image.fromarray(half)]
    hues = [f.hue for f in imageio.image_features(images)]
    assert hues[:4] == pytest.approx([0.0, 1 / 3, 2 / 3, 0.0], abs=1e-9)
    assert hues[4] == pytest.approx(1 / 6, abs=1e-9)  # yellow
    assert hues[5] == pytest.approx(0.0, abs=1e-9)  # a dull red is still red
    assert hues[6] == pytest.approx(1 / 6, abs=1e-9)  # half red, half green: their mean direction
    # a magenta-ish image lies just below 1 on the wheel, not at a negative angle
    assert 0.8 < imageio.image_features([solid(255, 0, 128)])[0].hue < 1.0


def test_lanczos_emulation_is_bit_exact_with_pil():
    rng = np.random.default_rng(3)
    for h, w in [(7, 300), (300, 7), (40, 33), (33, 40), (64, 64), (5, 5), (256, 13), (31, 32)]:
        g = rng.integers(0, 256, (2, h, w), dtype=np.uint8)
        for size in [(32, 32), (9, 8)]:
            ref = np.stack([np.asarray(Image.fromarray(x).resize(size, Image.Resampling.LANCZOS)) for x in g])
            assert np.array_equal(imageio.lanczos_resize_grey(g, *size), ref), (h, w, size)


# ---- manifests ---------------------------------------------------------------------------------


def _manifest_rows(root: Path) -> list[dict]:
    F.write_image(root / "img" / "a.png", seed=1)
    F.write_image(root / "img" / "b.png", seed=2)
    return [
        {"path": "img/a.png", "label": "cat", "camera": "c1", "scene": "s1", "captured_at": "2026-03-01T12:00:00+02:00"},
        {"path": str((root / "img" / "b.png").resolve()), "label": "dog", "camera": None, "scene": "s2",
         "captured_at": "2026-03-01 08:30:00"},
    ]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_manifest_formats(tmp_path, fmt):
    root = tmp_path / "data"
    df = pl.DataFrame(_manifest_rows(root))
    path = root / f"manifest.{fmt}"
    {"csv": df.write_csv, "parquet": df.write_parquet, "jsonl": df.write_ndjson}[fmt](path)
    res = ingest(make_spec(tmp_path, f"data/manifest.{fmt}"), tmp_path / "out")
    m, q = read(res)
    assert q.height == 0
    assert m.columns == list(MANIFEST_SCHEMA) and dict(m.schema) == MANIFEST_SCHEMA
    assert m["id"].to_list() == ["img/a.png", "img/b.png"]
    assert m["rel_path"].to_list() == m["id"].to_list()
    assert m["path"].to_list() == [str((root / "img" / n).resolve()) for n in ("a.png", "b.png")]
    assert m["camera"].to_list() == ["c1", None]
    assert m["captured_at"].to_list() == [
        datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc),  # +02:00 converted
        datetime(2026, 3, 1, 8, 30, tzinfo=timezone.utc),  # naive taken as UTC
    ]
    assert res.classes == ["cat", "dog"]


def test_manifest_without_label_column_raises_naming_it(tmp_path):
    root = tmp_path / "data"
    F.write_image(root / "a.png")
    pl.DataFrame({"path": ["a.png"], "camera": ["c"]}).write_csv(root / "m.csv")
    with pytest.raises(IngestError, match=r"'label'") as err:
        ingest(make_spec(tmp_path, "data/m.csv"), tmp_path / "out")
    assert "m.csv" in str(err.value) and isinstance(err.value, ValueError)


def test_whole_source_problems_raise(tmp_path):
    with pytest.raises(IngestError, match="does not exist"):
        ingest(make_spec(tmp_path, "nowhere"), tmp_path / "out")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(IngestError, match="empty"):
        ingest(make_spec(tmp_path, "empty.csv"), tmp_path / "out")
    (tmp_path / "header.csv").write_text("path,label\n")
    with pytest.raises(IngestError, match="no rows"):
        ingest(make_spec(tmp_path, "header.csv"), tmp_path / "out")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(IngestError, match="broken.parquet"):
        ingest(make_spec(tmp_path, "broken.parquet"), tmp_path / "out")


def test_folder_sidecar_metadata_is_joined(tmp_path):
    root = tmp_path / "data"
    F.write_image(root / "cat" / "a.png", seed=1)
    F.write_image(root / "cat" / "b.png", seed=2)
    F.write_image(root / "dog" / "c.png", seed=3)
    pl.DataFrame({"path": ["cat/a.png", "dog/c.png"], "camera": ["cam1", "cam2"],
                  "captured_at": ["1767225600", "bogus"]}).write_csv(root / "metadata.csv")
    res = ingest(make_spec(tmp_path, "data"), tmp_path / "out")
    m, q = read(res)
    assert dict(zip(m["id"].to_list(), m["camera"].to_list())) == {"cat/a.png": "cam1", "cat/b.png": None}
    assert m["captured_at"][0] == datetime(2026, 1, 1, tzinfo=timezone.utc)  # epoch seconds
    assert q["reason"].to_list() == ["bad_timestamp"] and q["field"].to_list() == ["captured_at"]
    assert res.received == 3  # the sidecar itself is not an item


def test_parse_timestamp():
    utc = timezone.utc
    assert parse_timestamp("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=utc)
    assert parse_timestamp("2026-01-02") == datetime(2026, 1, 2, tzinfo=utc)
    assert parse_timestamp(1767225600) == datetime(2026, 1, 1, tzinfo=utc)
    assert parse_timestamp(1767225600000) == datetime(2026, 1, 1, tzinfo=utc)  # milliseconds
    assert parse_timestamp("") is None and parse_timestamp(None) is None
    for bad in ("2026-13-01", "soon", "1e400"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


# ---- versions, outputs, fingerprints --------------------------------------------------------


def test_outputs_schema_and_result(tmp_path):
    root = tmp_path / "data"
    F.write_image(root / "cat" / "a.png", seed=1)
    F.write_zero_byte(root / "cat" / "z.png")
    res = ingest(make_spec(tmp_path, "data", classes=["cat", "dog"]), tmp_path / "out")
    m, q = read(res)
    assert dict(m.schema) == MANIFEST_SCHEMA and dict(q.schema) == QUARANTINE_SCHEMA
    folder = Path(res.manifest_path).parent
    assert folder.name == res.dataset_version and len(res.dataset_version) == 16
    assert sorted(p.name for p in folder.iterdir()) == ["ingest.json", "manifest.parquet", "quarantine.parquet"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp folders left
    assert res.classes == ["cat", "dog"]
    assert res.to_dict()["quarantine_reasons"] == {"zero_byte": 1}
    row = m.row(0, named=True)
    assert row["format"] == "PNG" and row["mode"] == "RGB" and row["file_size"] == (root / "cat" / "a.png").stat().st_size
    assert len(row["content_hash"]) == 64 and len(row["phash"]) == 16
    assert 0 <= row["brightness"] <= 1 and 0 <= row["contrast"] <= 1 and 0 <= row["saturation"] <= 1
    import pickle

    assert pickle.loads(pickle.dumps(res)) == res


def test_dataset_version_and_fingerprint_follow_content(tmp_path):
    root = tmp_path / "data"
    for i in range(4):
        F.write_image(root / ("cat" if i % 2 else "dog") / f"{i}.png", seed=i)
    spec = make_spec(tmp_path, "data")
    r1 = ingest(spec, tmp_path / "out")
    f1 = source_fingerprint(spec)
    r2 = ingest(spec, tmp_path / "out")
    assert r1 == r2 and source_fingerprint(spec) == f1
    os.utime(root / "cat" / "1.png", (1, 1))  # touching a file changes nothing
    assert source_fingerprint(spec) == f1
    F.write_image(root / "cat" / "1.png", seed=99)  # same path, new bytes
    r3 = ingest(spec, tmp_path / "out")
    f3 = source_fingerprint(spec)
    assert r3.dataset_version != r1.dataset_version and f3 != f1
    assert Path(r1.manifest_path).is_file() and Path(r3.manifest_path).is_file()  # both versions kept
    F.write_image(root / "cat" / "1.png", seed=1)  # back to the old bytes: the old version again
    assert ingest(spec, tmp_path / "out").dataset_version == r1.dataset_version
    assert source_fingerprint(spec) == f1


def test_fingerprint_follows_manifest_content(tmp_path):
    root = tmp_path / "data"
    df = pl.DataFrame(_manifest_rows(root))
    df.write_csv(root / "m.csv")
    spec = make_spec(tmp_path, "data/m.csv")
    f1 = source_fingerprint(spec)
    v1 = ingest(spec, tmp_path / "out").dataset_version
    df.with_columns(pl.lit("cat").alias("label")).write_csv(root / "m.csv")
    f2 = source_fingerprint(spec)
    assert f2 != f1
    F.write_image(root / "img" / "a.png", seed=42)  # an image behind the manifest changes
    assert source_fingerprint(spec) not in (f1, f2)
    assert ingest(spec, tmp_path / "out").dataset_version != v1


def test_output_is_deterministic_with_threads(tmp_path, monkeypatch):
    root = tmp_path / "data"
    for i in range(150):
        F.write_image(root / f"c{i % 3}" / f"{i:03d}.png", size=(16 + i % 20, 20), seed=i)
    spec = make_spec(tmp_path, "data")
    monkeypatch.setenv("CONVEYOR_INGEST_THREADS", "1")
    a = pl.read_parquet(ingest(spec, tmp_path / "o1").manifest_path)
    monkeypatch.setenv("CONVEYOR_INGEST_THREADS", "4")
    b = pl.read_parquet(ingest(spec, tmp_path / "o2").manifest_path)
    assert a.equals(b) and a.height == 150
