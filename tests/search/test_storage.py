"""The experiment filesystem: Tune's checkpoint copies become hard links."""

import os
import pickle

import pyarrow.fs as pafs

from tune_adapter.search.storage import LinkingLocalHandler, linking_filesystem


def test_tune_style_copy_of_a_folder_links_every_file(tmp_path):
    source = tmp_path / "scratch" / "epoch_0001"
    (source / "sub").mkdir(parents=True)
    (source / "adapter.safetensors").write_bytes(b"w" * 1000)
    (source / "sub" / "state.json").write_text("{}")
    fs = linking_filesystem()
    destination = tmp_path / "trial" / "checkpoint_000000"
    fs.create_dir(str(destination))
    # What Ray's StorageContext.persist_current_checkpoint does with a reported checkpoint.
    pafs.copy_files(str(source), str(destination), source_filesystem=linking_filesystem(),
                    destination_filesystem=fs, chunk_size=64 << 20)
    for name in ("adapter.safetensors", "sub/state.json"):
        assert os.path.samefile(source / name, destination / name)
    before = (destination / "adapter.safetensors").read_bytes()
    for path in sorted(source.rglob("*"), reverse=True):  # the trial drops its scratch names
        path.rmdir() if path.is_dir() else path.unlink()
    assert (destination / "adapter.safetensors").read_bytes() == before


def test_a_file_that_cannot_be_linked_is_copied(tmp_path, monkeypatch):
    source, destination = tmp_path / "a", tmp_path / "b"
    source.write_bytes(b"abc")

    def refuse(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    LinkingLocalHandler().copy_file(str(source), str(destination))
    assert destination.read_bytes() == b"abc" and not os.path.samefile(source, destination)


def test_the_filesystem_survives_pickling_and_compares_equal():
    fs = pickle.loads(pickle.dumps(linking_filesystem()))
    assert fs.equals(linking_filesystem())
    assert not fs.equals(pafs.LocalFileSystem())
