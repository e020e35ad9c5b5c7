"""Model files: metadata round trip, content hash, atomic writes, bad files."""

import os

import pytest
import torch
from pcshell_helpers import Jacobi, TiedMLP, rewrite_record, save

from pcshell import ModelFileError, ModelMetadata, ModelMismatchError, load_model, save_model
from pcshell import modelfile as mf


def test_round_trip_keeps_metadata_and_outputs(tmp_path):
    torch.manual_seed(0)
    net = TiedMLP(8)
    meta = save_model(net, tmp_path / "m.pt", ModelMetadata(
        method="npo", problem_family="poisson", n=8, inputs=["residual"],
        training={"epochs": 3, "seed": 0}))
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.metadata == meta
    assert loaded.metadata.content_hash.startswith("sha256:")
    r = torch.randn(8, dtype=torch.float64)
    assert torch.equal(loaded.module(r), net(r))


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.pt")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_file(tmp_path, damage):
    path = tmp_path / "m.pt"
    save(Jacobi(), path)
    data = path.read_bytes()
    path.write_bytes(os.urandom(200) if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt or not a TorchScript archive"):
        load_model(path)


def test_torchscript_without_metadata(tmp_path):
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(Jacobi()), str(path))
    with pytest.raises(ModelFileError, match="has no petsc-neural metadata"):
        load_model(path)


def test_modified_parameters_fail_the_hash(tmp_path):
    path = tmp_path / "m.pt"
    save(TiedMLP(4), path, inputs=["residual"])
    # Flip one byte of the first tensor's data: what an edited file looks like.
    rewrite_record(path, "data/0", lambda b: bytes([b[0] ^ 1]) + b[1:])
    with pytest.raises(ModelFileError, match="fails its content hash"):
        load_model(path)


def test_wrong_method(tmp_path):
    path = save(Jacobi(), tmp_path / "m.pt", method="npo")
    with pytest.raises(ModelMismatchError, match="holds a 'npo' model.*serves 'torchscript'"):
        load_model(path, method="torchscript")


@pytest.mark.parametrize(
    "field, value, message",
    [("format_version", 99, "format version 99"), ("dtype", "float16", "dtype 'float16'"),
     ("inputs", "residual", "must be a list of names")],
)
def test_invalid_metadata(field, value, message):
    meta = ModelMetadata()
    setattr(meta, field, value)
    with pytest.raises(ModelFileError, match=message):
        ModelMetadata.from_json(meta.to_json())


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    path = tmp_path / "m.pt"
    save(Jacobi(), path)
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~umask


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save(Jacobi(), path, problem_family="old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(mf.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save(Jacobi(), path, problem_family="new")
    monkeypatch.undo()
    assert load_model(path).metadata.problem_family == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary left
