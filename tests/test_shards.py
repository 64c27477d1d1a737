"""Parquet shards: byte-exact round trip, resuming an interrupted prepare, bad samples, checksums, the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from nrd.data import (
    CorruptImageError,
    NotPreparedError,
    RawSample,
    Sample,
    ShardChecksumError,
    ShardDataset,
    SyntheticDataset,
    create_dataset,
    prepare_shards,
    read_manifest,
)
from nrd.data.progress import format_duration, progress_line
from nrd.data.shards import EmptySplitError, write_atomic
from nrd.errors import InvalidHyperparameterError, UnknownNameError
from pipeline.commands.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SYNTHETIC = {"num_samples": {"train": 14, "val": 3}, "size": (24, 40), "num_classes": 5, "seed": 3}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shard_files(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.parquet"))


def leftovers(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.name.endswith(".tmp")]


def test_synthetic_round_trip(tmp_path, capsys):
    dataset = SyntheticDataset(**SYNTHETIC)
    manifest = prepare_shards(dataset, tmp_path, shard_size=4)
    assert "prepare synthetic train: 8/14 samples" in capsys.readouterr().err

    assert manifest == read_manifest(tmp_path) == json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["skipped"] == []
    assert manifest["num_classes"] == 5 and manifest["ignore_index"] == 255
    assert manifest["class_names"] == list(dataset.info.class_names)
    assert manifest["palette"] == [list(color) for color in dataset.info.palette]
    assert manifest["params"] == {"num_samples": {"train": 14, "val": 3}, "size": [24, 40], "num_classes": 5, "seed": 3}
    train = manifest["splits"]["train"]
    assert train["count"] == 14 and [record["rows"] for record in train["shards"]] == [4, 4, 4, 2]
    for record in train["shards"]:
        assert record["sha256"] == sha256(tmp_path / record["file"])
    table = pq.read_table(tmp_path / train["shards"][0]["file"])
    assert table.schema.names == ["id", "image", "label", "height", "width"]
    assert pa.types.is_string(table.schema.field("id").type)
    assert pa.types.is_int32(table.schema.field("height").type) and pa.types.is_int32(table.schema.field("width").type)

    for split, count in (("train", 14), ("val", 3)):
        decoded, encoded = ShardDataset(tmp_path, split, verify=True), ShardDataset(tmp_path, split, decode=False)
        assert len(decoded) == len(encoded) == count
        for index, sample in enumerate(dataset.list_samples(split)):
            raw = dataset.read_sample(sample)
            item = decoded[index]
            assert item["id"] == encoded[index]["id"] == sample.id
            assert encoded[index]["image"] == raw.image_bytes
            np.testing.assert_array_equal(item["image"], np.asarray(Image.open(io.BytesIO(raw.image_bytes))))
            np.testing.assert_array_equal(item["label"], raw.label)
    assert ShardDataset(tmp_path, "train")[-1]["id"] == "train-000013"
    with pytest.raises(IndexError):
        ShardDataset(tmp_path, "val")[3]


def test_camvid_round_trip_is_byte_exact(tmp_path):
    root = DATA / "camvid"
    if not root.is_dir():
        pytest.skip(f"shared data not found: {root}")
    prepare_shards(create_dataset("camvid", root), tmp_path, splits=["val"], shard_size=2, limit=3, progress=False)
    pairs = sorted(line.split() for line in (root / "val.txt").read_text().splitlines())[:3]
    shards = ShardDataset(tmp_path, "val", verify=True)
    raw_bytes = ShardDataset(tmp_path, "val", decode=False)
    assert len(shards) == 3
    for index, (image_file, label_file) in enumerate(pairs):
        assert raw_bytes[index]["image"] == (root / image_file).read_bytes()
        stored = np.asarray(Image.open(root / label_file))
        np.testing.assert_array_equal(shards[index]["label"], np.where(stored == 11, 255, stored))
        np.testing.assert_array_equal(shards[index]["image"], np.asarray(Image.open(root / image_file).convert("RGB")))


class FailingSynthetic(SyntheticDataset):
    """Crashes (not a data error) when it reaches one sample, like a run killed half-way."""

    fail_at = "train-000009"

    def read_sample(self, sample: Sample) -> RawSample:
        if sample.id == self.fail_at:
            raise RuntimeError("interrupted")
        return super().read_sample(sample)


def test_interrupted_prepare_resumes(tmp_path):
    reference = tmp_path / "reference"
    prepare_shards(SyntheticDataset(**SYNTHETIC), reference, shard_size=4, progress=False)

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="interrupted"):
        prepare_shards(FailingSynthetic(**SYNTHETIC), out, shard_size=4, progress=False)
    assert [path.name for path in shard_files(out)] == ["part-00000.parquet", "part-00001.parquet"]
    assert leftovers(out) == []
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    with pytest.raises(NotPreparedError, match="did not finish"):
        ShardDataset(out, "train")

    before = {path.name: path.stat() for path in shard_files(out)}
    (out / "train" / ".part-00002.parquet.x1.tmp").write_bytes(b"left by a killed run")
    (out / "train" / "part-00002.parquet").write_bytes(b"renamed but never recorded")
    prepare_shards(SyntheticDataset(**SYNTHETIC), out, shard_size=4, progress=False)

    for path in shard_files(out)[:2]:
        after = path.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before[path.name].st_ino, before[path.name].st_mtime_ns)
    assert leftovers(out) == []
    assert read_manifest(out) == read_manifest(reference)
    assert [(p.relative_to(out), sha256(p)) for p in shard_files(out)] == [
        (p.relative_to(reference), sha256(p)) for p in shard_files(reference)
    ]


def test_rerun_with_another_plan_replaces_the_shards(tmp_path):
    prepare_shards(SyntheticDataset(**SYNTHETIC), tmp_path, splits=["train"], shard_size=2, progress=False)
    assert len(shard_files(tmp_path)) == 7
    prepare_shards(SyntheticDataset(**SYNTHETIC), tmp_path, splits=["train"], shard_size=8, progress=False)
    assert [path.name for path in shard_files(tmp_path)] == ["part-00000.parquet", "part-00001.parquet"]
    assert [ShardDataset(tmp_path, "train")[i]["id"] for i in (0, 13)] == ["train-000000", "train-000013"]


def test_failed_write_leaves_nothing(tmp_path):
    def write_then_fail(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "part-00000.parquet", write_then_fail)
    assert list(tmp_path.iterdir()) == []


def write_camvid_pair(root: Path, split: str, name: str, rng: np.random.Generator) -> None:
    for folder, array in ((split, rng.integers(0, 256, (6, 8, 3))), (f"{split}annot", rng.integers(0, 12, (6, 8)))):
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array.astype(np.uint8)).save(root / folder / f"{name}.png")


@pytest.fixture
def camvid_with_bad_samples(tmp_path) -> Path:
    """Six CamVid-layout samples; f1 has an undecodable image, f3 no label, f4 a label value out of the set, f5 a
    label of another size than its image."""
    root = tmp_path / "camvid"
    rng = np.random.default_rng(0)
    for index in range(6):
        write_camvid_pair(root, "train", f"f{index}", rng)
    (root / "train" / "f1.png").write_bytes(b"\x89PNG broken")
    (root / "trainannot" / "f3.png").unlink()
    Image.fromarray(np.full((6, 8), 40, np.uint8)).save(root / "trainannot" / "f4.png")
    Image.fromarray(np.zeros((5, 8), np.uint8)).save(root / "trainannot" / "f5.png")
    return root


def test_bad_sample_raises_and_leaves_no_partial_shard(camvid_with_bad_samples, tmp_path):
    out = tmp_path / "out"
    dataset = create_dataset("camvid", camvid_with_bad_samples)
    with pytest.raises(CorruptImageError) as error:
        prepare_shards(dataset, out, splits=["train"], shard_size=1, progress=False)
    assert error.value.path == str(camvid_with_bad_samples / "train" / "f1.png")
    assert [path.name for path in shard_files(out)] == ["part-00000.parquet"]  # the complete shard before f1
    assert leftovers(out) == []


def test_skip_bad_records_every_reason(camvid_with_bad_samples, tmp_path):
    out = tmp_path / "out"
    manifest = prepare_shards(
        create_dataset("camvid", camvid_with_bad_samples),
        out,
        splits=["train"],
        shard_size=2,
        skip_bad=True,
        progress=False,
    )
    reasons = {
        entry["id"]: (Path(entry["file"]).relative_to(camvid_with_bad_samples), entry["reason"])
        for entry in manifest["skipped"]
    }
    assert sorted(reasons) == ["f1", "f3", "f4", "f5"]
    assert reasons["f1"][0] == Path("train/f1.png") and "cannot decode" in reasons["f1"][1]
    assert reasons["f3"][0] == Path("trainannot/f3.png") and "not found" in reasons["f3"][1]
    assert reasons["f4"][0] == Path("trainannot/f4.png") and "40" in reasons["f4"][1]
    assert reasons["f5"][0] == Path("trainannot/f5.png") and "8x5" in reasons["f5"][1] and "8x6" in reasons["f5"][1]
    assert manifest["splits"]["train"]["count"] == 2
    assert [ShardDataset(out, "train")[i]["id"] for i in range(2)] == ["f0", "f2"]

    with pytest.raises(CorruptImageError):  # a rerun without skip_bad does not keep shards that skipped samples
        prepare_shards(
            create_dataset("camvid", camvid_with_bad_samples), out, splits=["train"], shard_size=2, progress=False
        )


def test_skip_bad_rerun_picks_up_a_fixed_file(camvid_with_bad_samples, tmp_path):
    out = tmp_path / "out"

    def prepare() -> dict:
        return prepare_shards(
            create_dataset("camvid", camvid_with_bad_samples),
            out,
            splits=["train"],
            shard_size=2,
            skip_bad=True,
            progress=False,
        )

    first = prepare()
    assert first["splits"]["train"]["count"] == 2 and len(first["skipped"]) == 4
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(camvid_with_bad_samples / "train" / "f1.png")
    second = prepare()
    assert second["splits"]["train"]["count"] == 3
    assert sorted(entry["id"] for entry in second["skipped"]) == ["f3", "f4", "f5"]
    assert [row["id"] for row in ShardDataset(out, "train", verify=True)] == ["f0", "f1", "f2"]
    np.testing.assert_array_equal(ShardDataset(out, "train")[1]["image"], np.zeros((6, 8, 3), np.uint8))
    assert [record["rows"] for record in second["splits"]["train"]["shards"]] == [2, 1, 0]
    assert second == read_manifest(out)


def test_cli_prepare_names_a_bad_file(camvid_with_bad_samples, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "prepare",
        "--dataset",
        "camvid",
        "--root",
        str(camvid_with_bad_samples),
        "--out",
        str(out),
        "--splits",
        "train",
        "--shard-size",
        "2",
        "--quiet",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(camvid_with_bad_samples / "train" / "f1.png") in err and "cannot decode image" in err
    assert main([*args, "--skip-bad"]) == 0
    assert "skipped 4 bad samples" in capsys.readouterr().out


def test_empty_splits_are_named_errors(camvid_with_bad_samples, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["prepare", "--dataset", "camvid", "--root", str(camvid_with_bad_samples), "--out", str(out), "--quiet"]
    for splits in ("", " , "):
        assert main([*base, "--splits", splits]) == 2
        err = capsys.readouterr().err
        assert "--splits=" in err and "splits of camvid (train, val, test)" in err
    assert not out.exists()
    with pytest.raises(InvalidHyperparameterError, match="splits"):
        prepare_shards(create_dataset("camvid", camvid_with_bad_samples), out, splits=[], progress=False)

    # a split where every sample is bad: an error naming the split and the count, the manifest left incomplete
    rng = np.random.default_rng(1)
    for name in ("g0", "g1", "g2"):
        write_camvid_pair(camvid_with_bad_samples, "val", name, rng)
        (camvid_with_bad_samples / "valannot" / f"{name}.png").unlink()
    assert main([*base, "--splits", "train,val", "--skip-bad"]) == 2
    err = capsys.readouterr().err
    assert "camvid split 'val'" in err and "all 3 samples were skipped as bad" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and len(manifest["skipped"]) == 4 + 3
    with pytest.raises(NotPreparedError):
        read_manifest(out)
    with pytest.raises(EmptySplitError, match="val"):
        prepare_shards(
            create_dataset("camvid", camvid_with_bad_samples), out, splits=["val"], skip_bad=True, progress=False
        )
    with pytest.raises(EmptySplitError, match="the split lists no sample"):
        prepare_shards(
            SyntheticDataset(num_samples={"train": 2, "val": 0}, size=(16, 16)), tmp_path / "s", progress=False
        )
    assert not (tmp_path / "s").exists()


def test_progress_line_by_hand():
    assert format_duration(0) == "0:00" and format_duration(59.6) == "1:00" and format_duration(3725) == "1:02:05"
    # 120 of 367 done, 100 of them read in 10 s: 10.0/s, 247 left → 24.7 s
    line = progress_line("prepare camvid train", 120, 367, 100, 10.0)
    assert line == "prepare camvid train: 120/367 samples (32.7%), 10.0/s, ETA 0:25"
    assert progress_line("x", 4, 8, 0, 3.0) == "x: 4/8 samples (50.0%), ?/s, ETA ?"  # kept shards only: no rate
    assert progress_line("x", 8, 8, 8, 2.0) == "x: 8/8 samples (100.0%), 4.0/s, ETA 0:00"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_per_shard_in_logs_and_per_sample_on_a_terminal(tmp_path, capsys, monkeypatch):
    dataset = SyntheticDataset(**SYNTHETIC)
    prepare_shards(dataset, tmp_path, splits=["train"], shard_size=4)
    lines = capsys.readouterr().err.splitlines()  # pytest's stderr is not a terminal: one line per shard
    assert [line.split(",")[0] for line in lines] == [
        f"prepare synthetic train: {done}/14 samples ({100 * done / 14:.1f}%)" for done in (4, 8, 12, 14)
    ]
    assert all(re.search(r", [0-9.]+/s, ETA [0-9]+:[0-9]{2}$", line) for line in lines), lines
    (tmp_path / "train" / "part-00003.parquet").unlink()
    prepare_shards(dataset, tmp_path, splits=["train"], shard_size=4)
    lines = capsys.readouterr().err.splitlines()
    assert [line.endswith(" (kept)") for line in lines] == [True, True, True, False]
    assert lines[0] == "prepare synthetic train: 4/14 samples (28.6%), ?/s, ETA ? (kept)"

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    prepare_shards(dataset, tmp_path / "tty", splits=["train", "val"], shard_size=4)
    text = terminal.getvalue()
    assert text.count("\n") == 2  # one line per split, rewritten in place
    updates = [update.strip() for line in text.splitlines() for update in line.split("\r") if update]
    assert [update.split(" samples")[0] for update in updates] == [
        *(f"prepare synthetic train: {done}/14" for done in range(1, 15)),
        *(f"prepare synthetic val: {done}/3" for done in range(1, 4)),
    ]


def test_checksum_and_manifest_errors(tmp_path):
    prepare_shards(SyntheticDataset(**SYNTHETIC), tmp_path, shard_size=8, progress=False)
    shard = tmp_path / "train" / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardChecksumError) as error:
        ShardDataset(tmp_path, "train", verify=True)
    assert error.value.path == str(shard)
    ShardDataset(tmp_path, "val", verify=True)  # the other split is intact
    shard.unlink()
    with pytest.raises(ShardChecksumError, match="missing"):
        ShardDataset(tmp_path, "train")
    with pytest.raises(UnknownNameError, match="valid: train, val"):
        ShardDataset(tmp_path, "test")
    with pytest.raises(NotPreparedError, match="nrd-bench prepare"):
        ShardDataset(tmp_path / "train", "train")


def test_transform_is_applied(tmp_path):
    prepare_shards(SyntheticDataset(**SYNTHETIC), tmp_path, splits=["val"], progress=False)
    shards = ShardDataset(tmp_path, "val", transform=lambda image, label: (image.shape, label.dtype))
    assert shards[0] == ((24, 40, 3), np.uint8)


def test_cli_prepare_synthetic(tmp_path, capsys):
    out = tmp_path / "prepared"
    code = main(
        [
            "prepare",
            "--dataset",
            "synthetic",
            "--out",
            str(out),
            "--num-train",
            "5",
            "--num-val",
            "2",
            "--size",
            "32x48",
            "--num-classes",
            "3",
            "--seed",
            "1",
            "--shard-size",
            "2",
            "--quiet",
        ]
    )
    assert code == 0
    assert "train 5, val 2" in capsys.readouterr().out
    manifest = read_manifest(out)
    assert manifest["params"] == {"num_samples": {"train": 5, "val": 2}, "size": [32, 48], "num_classes": 3, "seed": 1}
    assert ShardDataset(out, "train")[4]["image"].shape == (32, 48, 3)

    assert main(["prepare", "--dataset", "camvd", "--root", str(tmp_path), "--out", str(out)]) == 2
    assert "valid: ade20k, camvid, cityscapes" in capsys.readouterr().err
    assert main(["prepare", "--dataset", "camvid", "--root", str(tmp_path), "--out", str(out), "--seed", "2"]) == 2
    assert "--seed" in capsys.readouterr().err


def test_verify_shards_names_every_bad_shard_and_caches_hashes(tmp_path, monkeypatch):
    """A shard replaced by another seed's (same size, same name) and one with a flipped byte are both named in one
    error; an unchanged folder is vouched for by the hash cache (no shard hashed), and a shard rewritten in place is
    hashed again. Shards are written with the umask's mode, not mkstemp's 0600."""
    import os
    import shutil
    import stat

    from nrd.data.verify import verify_shards

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root, other = tmp_path / "a", tmp_path / "b"
    prepare_shards(SyntheticDataset(**SYNTHETIC), root, shard_size=8, progress=False)
    prepare_shards(SyntheticDataset(**(SYNTHETIC | {"seed": 4})), other, shard_size=8, progress=False)
    manifest = read_manifest(root)
    shards = shard_files(root)
    assert verify_shards(root, manifest) == len(shards)  # first time: every shard hashed
    assert verify_shards(root, manifest) == 0  # unchanged: the cache vouches for all
    cache = tmp_path / "cache" / "nrd-bench" / "shard_sha256.json"
    damaged = {key: {"stamp": entry["stamp"]} for key, entry in json.loads(cache.read_text()).items()}
    cache.write_text(json.dumps(damaged))  # entries without their hash: hashed again, never trusted
    assert verify_shards(root, manifest) == len(shards)
    umask = os.umask(0)
    os.umask(umask)
    assert {stat.S_IMODE(path.stat().st_mode) for path in [*shards, root / "manifest.json"]} == {0o666 & ~umask}

    replaced, flipped = root / "train" / "part-00001.parquet", root / "val" / "part-00000.parquet"
    shutil.copy2(other / "train" / "part-00001.parquet", replaced)  # copy2 keeps the other file's mtime
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(ShardChecksumError) as error:
        verify_shards(root, manifest)
    message = str(error.value)
    assert "\n" not in message and "2 shard(s) differ from its manifest.json" in message
    assert f"{replaced} (SHA-256" in message and f"{flipped} (SHA-256" in message
    assert "rerun `nrd-bench prepare`" in message
    flipped.unlink()
    with pytest.raises(ShardChecksumError, match=rf"{re.escape(str(flipped))} \(listed for val, missing\)"):
        verify_shards(root, manifest)


@pytest.mark.parametrize("where", ["through a file", "under /proc"])
def test_cli_prepare_names_an_output_folder_it_cannot_write(tmp_path, capsys, where):
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "shards" if where == "through a file" else Path("/proc/nrd-bench-shards")
    assert main(["prepare", "--dataset", "synthetic", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (
        f"--out='{out}' is invalid; expected a folder that can be created and written" in err and "Traceback" not in err
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"]
