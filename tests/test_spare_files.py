"""Checkpoints written over a spare checkpoint's files: same bytes, and never over a file
another name (Tune's stored checkpoint) still links."""

import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tune_adapter.adapter import AdapterDims, AudioProjModel
from tune_adapter.checkpoint import ADAPTER_FILE, OPTIMIZER_TENSORS, STATE_FILE, is_checkpoint, load_checkpoint, save_checkpoint
from tune_adapter.spare_files import SparePool, open_for_overwrite, save_tensors, write_bytes

DIMS = AdapterDims(layers=2, channels=8, intermediate_dim=16, context_tokens=4, output_dim=8)


def test_tensors_are_written_byte_for_byte_as_the_library_writes_them(tmp_path):
    mixed = {"f": torch.randn(2, 3), "h": torch.randn(3).bfloat16(), "i": torch.arange(3),
             "z": torch.tensor([True, False]), "u": torch.arange(5, dtype=torch.uint8),
             "step": torch.tensor(3.0), "t": torch.randn(4, 6).t()}  # not contiguous
    save_file({k: v.contiguous() for k, v in mixed.items()}, tmp_path / "library.safetensors",
              metadata={"format": "pt"})
    save_tensors(tmp_path / "ours.safetensors", mixed, metadata={"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "library.safetensors").read_bytes()
    loaded = load_file(tmp_path / "ours.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in mixed.items())
    with safe_open(tmp_path / "ours.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_a_longer_file_is_written_over_in_place_and_cut_to_the_new_length(tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_bytes(b"x" * 10_000)
    inode = path.stat().st_ino
    save_tensors(path, {"a": torch.ones(4)})
    assert path.stat().st_ino == inode
    assert torch.equal(load_file(path)["a"], torch.ones(4))


def test_a_file_linked_elsewhere_is_left_alone_and_a_new_one_made(tmp_path):
    path, stored = tmp_path / "state.json", tmp_path / "stored.json"
    path.write_bytes(b"old checkpoint")
    os.link(path, stored)
    write_bytes(path, b"new")
    assert stored.read_bytes() == b"old checkpoint"
    assert path.read_bytes() == b"new"
    assert path.stat().st_ino != stored.stat().st_ino
    with open_for_overwrite(tmp_path / "fresh.bin") as f:
        f.write(b"made")
    assert (tmp_path / "fresh.bin").read_bytes() == b"made"


def checkpoint_of(seed: int, folder, spares=None, moments=True):
    torch.manual_seed(seed)
    model = AudioProjModel(DIMS)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 1, 5, 2, 8), torch.randn(1, 2, 8, 2, 8)).sum().backward()
    optimizer.step()
    return model, save_checkpoint(folder, model, optimizer if moments else None, None,
                                  {"epoch": seed, "history": []}, spares)


def test_a_checkpoint_written_over_a_spare_reuses_its_files_and_loads_the_same(tmp_path):
    _, first = checkpoint_of(1, tmp_path / "epoch_0001")
    inode = (first / OPTIMIZER_TENSORS).stat().st_ino
    spares = SparePool(tmp_path / "spares")
    spares.retire(first)
    assert not first.exists() and len(spares.spares()) == 1 and not is_checkpoint(spares.spares()[0])
    model, second = checkpoint_of(2, tmp_path / "epoch_0002", spares)
    assert spares.spares() == []
    assert (second / OPTIMIZER_TENSORS).stat().st_ino == inode
    fresh_model, fresh = checkpoint_of(2, tmp_path / "fresh")
    for name in (ADAPTER_FILE, OPTIMIZER_TENSORS):
        assert (second / name).read_bytes() == (fresh / name).read_bytes()
    loaded = load_checkpoint(second)
    assert loaded.state["epoch"] == 2
    assert all(torch.equal(loaded.weights[k], v) for k, v in model.state_dict().items())


def test_a_spare_whose_files_tune_still_links_is_taken_last_and_its_files_left_alone(tmp_path):
    _, first = checkpoint_of(1, tmp_path / "epoch_0001")
    _, second = checkpoint_of(2, tmp_path / "epoch_0002")
    stored = tmp_path / "stored"  # Tune's hard-linked copy of the first (search/storage.py)
    stored.mkdir()
    for path in first.iterdir():
        os.link(path, stored / path.name)
    before = {p.name: p.read_bytes() for p in stored.iterdir()}
    spares = SparePool(tmp_path / "spares")
    spares.retire(first)
    spares.retire(second)
    unlinked_inode = (spares.spares()[1] / ADAPTER_FILE).stat().st_ino
    _, third = checkpoint_of(3, tmp_path / "epoch_0003", spares)
    assert (third / ADAPTER_FILE).stat().st_ino == unlinked_inode  # the spare no one links
    checkpoint_of(4, tmp_path / "epoch_0004", spares)
    assert {p.name: p.read_bytes() for p in stored.iterdir()} == before
    assert load_checkpoint(stored).state["epoch"] == 1


def test_a_spare_serves_a_checkpoint_whose_folder_is_not_made_yet(tmp_path):
    _, first = checkpoint_of(1, tmp_path / "a" / "epoch_0001")
    inode = (first / OPTIMIZER_TENSORS).stat().st_ino
    spares = SparePool(tmp_path / "spares")
    spares.retire(first)
    _, second = checkpoint_of(2, tmp_path / "next_run" / "checkpoints" / "epoch_0001", spares)
    assert (second / OPTIMIZER_TENSORS).stat().st_ino == inode


def test_a_full_pool_deletes_what_is_retired(tmp_path):
    folders = [checkpoint_of(i, tmp_path / f"epoch_{i:04d}")[1] for i in range(3)]
    spares = SparePool(tmp_path / "spares", size=2)
    for folder in folders:
        spares.retire(folder)
    assert not any(f.exists() for f in folders)
    assert len(spares.spares()) == 2
    assert all((s / ADAPTER_FILE).is_file() and not (s / STATE_FILE).exists() for s in spares.spares())
    spares.clear()
    assert not (tmp_path / "spares").exists()


def test_a_checkpoint_without_moments_drops_the_spare_s_optimizer_files(tmp_path):
    _, first = checkpoint_of(1, tmp_path / "epoch_0001")
    spares = SparePool(tmp_path / "spares")
    spares.retire(first)
    _, last = checkpoint_of(2, tmp_path / "epoch_0002", spares, moments=False)
    assert {p.name for p in last.iterdir()} == {ADAPTER_FILE, STATE_FILE}
    loaded = load_checkpoint(last)
    assert loaded.optimizer is None and loaded.state["epoch"] == 2
