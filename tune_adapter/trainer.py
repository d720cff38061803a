"""The windowed masked-loss trainer: one run, no Ray.

`train(config, data, report)` fits an AudioProjModel to a teacher's tokens, validates every
epoch, checkpoints atomically and calls `report(metrics, checkpoint_dir)` once per epoch:
the CLI prints from it, the Ray driver forwards it to `tune.report`.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch

from .adapter import AdapterDims, AudioProjModel
from .checkpoint import STATE_FILE, is_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import BatchGatherer, BatchSampler, PackedClips, TrainData
from .data.clips import ClipShapes
from .errors import ConfigError
from .memory import keep_freed_memory, release_freed_memory
from .loss import MetricSums, masked_loss
from .runtime import Runtime, resolve_runtime
from .spare_files import SparePool
from .windows import WindowSpec

ReportFn = Callable[[dict, "Path | None"], None]


class Progress(Protocol):
    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step_done(self, loss: float | None) -> None: ...
    def epoch_done(self, metrics: dict) -> None: ...


class NoProgress:
    def epoch_started(self, epoch, epochs, steps): pass
    def step_done(self, loss): pass
    def epoch_done(self, metrics): pass


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    best_checkpoint: Path | None = None
    best_checkpoint_metrics: dict | None = None
    last_checkpoint: Path | None = None

    @property
    def last(self) -> dict | None:
        return self.history[-1] if self.history else None


def adapter_dims(config: TrainConfig, shapes: ClipShapes) -> AdapterDims:
    """The adapter's dims: W, S and I from the config, L, C, K, D from the data."""
    for flag, given, found in (("--context-tokens", config.context_tokens, shapes.tokens),
                               ("--output-dim", config.output_dim, shapes.token_dim)):
        if given is not None and given != found:
            raise ConfigError(
                f"{flag} {given} does not match the targets, which have {found}: drop the flag "
                "or use targets from a teacher with that size"
            )
    return AdapterDims(
        audio_window=config.audio_window, vae_scale=config.vae_scale,
        layers=shapes.layers, channels=shapes.channels,
        intermediate_dim=config.intermediate_dim, context_tokens=shapes.tokens,
        output_dim=shapes.token_dim, norm_output_audio=config.norm_output_audio,
    )


def make_optimizer(model: torch.nn.Module, config: TrainConfig, runtime: Runtime):
    # Fused AdamW: one kernel over all 74M parameters instead of a loop of small ones;
    # measured about 5x faster than the default (foreach=False) on this CPU.
    return torch.optim.AdamW(model.parameters(), lr=config.lr,
                             weight_decay=config.weight_decay, fused=True)


def allocate_moments(optimizer: torch.optim.AdamW, kept: list[dict] | None = None) -> None:
    """AdamW's moments now, as a fresh optimizer would make them at its first step: the
    `kept` ones (a finished run's, `KeptModel`) zeroed when given, else new.

    Made before the first step's activations, the 600 MB of moments (InfiniteTalk's dims)
    are placed before any of the step's short-lived tensors in the kept heap
    (`memory.keep_freed_memory`) instead of among their holes: `tune-adapter bench` peak
    RSS 1898 MB against 1978 MB made lazily (one run each). Their first-touch cost also
    moves from the first step to the run's set-up.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    kept = kept or [{"exp_avg": torch.empty_like(p), "exp_avg_sq": torch.empty_like(p)} for p in params]
    state = optimizer.state_dict()
    state["state"] = {i: {"step": torch.zeros((), dtype=torch.float32),
                          "exp_avg": moments["exp_avg"].zero_(),
                          "exp_avg_sq": moments["exp_avg_sq"].zero_()}
                      for i, moments in enumerate(kept)}
    optimizer.load_state_dict(state)


@dataclass
class KeptModel:
    """A finished run's model and AdamW moments, for the next run in the same process.

    A reused Ray actor trains one trial after another: instead of freeing 0.9 GB of
    parameters and moments (InfiniteTalk's dims) and allocating as much again, the next
    run with the same dims re-initialises them in place, with the same random draws as a
    new model. Memory the kernel got back is slow to touch again on the bench VM
    (spare_files.py). CPU only: on a GPU torch's caching allocator already keeps it, and
    there a model is initialised on the CPU first.
    """

    model: AudioProjModel | None = None
    moments: list[dict] | None = None

    def take(self, dims: AdapterDims, device: torch.device) -> tuple[AudioProjModel, list[dict] | None]:
        """The kept model re-initialised (RNG seeded by the caller) and its moments, or a new
        model when dims or device differ (the kept ones are freed first)."""
        model, moments = self.model, self.moments
        self.model = self.moments = None
        if model is None or model.dims != dims or device.type != "cpu":
            del model, moments
            return AudioProjModel(dims).to(device), None
        for layer in model.children():  # the order AudioProjModel.__init__ makes them in
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        return model, moments

    def keep(self, run: "Run") -> None:
        if run.runtime.device.type != "cpu":
            return  # held between trials, a GPU model would keep its memory from the next
        self.model = run.model
        self.moments = [run.optimizer.state[p] for p in run.model.parameters()]


def make_loader(pack: PackedClips, spec: WindowSpec, layout: str, sampler, config: TrainConfig,
                runtime: Runtime) -> torch.utils.data.DataLoader:
    workers = config.num_workers
    return torch.utils.data.DataLoader(
        BatchGatherer(pack, spec, layout), batch_size=None, sampler=sampler,
        num_workers=workers, persistent_workers=workers > 0,
        pin_memory=runtime.pin_memory,
    )


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float, device: torch.device) -> None:
    """clip_grad_norm_, without its second pass over the gradients when none is needed.

    clip_grad_norm_ always multiplies every gradient by min(1, max_norm / norm) so that a
    GPU never waits for the norm. On the CPU the norm is known at once, and skipping the
    multiplication when the norm is within bounds halves the cost (a pass over 74M floats,
    about 15 ms here). Same result either way.
    """
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    if device.type != "cpu" or norm > max_norm:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)


class Run:
    """The state of one training run; `train()` below drives it epoch by epoch."""

    def __init__(self, config: TrainConfig, data: TrainData, kept: KeptModel | None = None):
        keep_freed_memory(config.keep_freed_memory)
        self.config = config
        self.runtime = resolve_runtime(config.device, config.mixed_precision)
        self.spec = WindowSpec(config.audio_window, config.vae_scale)
        self.layout = data.train.layout_for(self.spec.vae_scale)
        data.val.layout_for(self.spec.vae_scale)
        self.dims = adapter_dims(config, data.train.shapes)
        torch.manual_seed(config.seed)
        self.model, moments = (kept or KeptModel()).take(self.dims, self.runtime.device)
        self.optimizer = make_optimizer(self.model, config, self.runtime)
        allocate_moments(self.optimizer, moments)
        self.scaler = torch.amp.GradScaler("cuda") if self.runtime.grad_scaling else None
        self.sampler = BatchSampler(data.train.frames, config.batch_size, config.seed,
                                    bucket=config.bucket_by_length)
        val_sampler = BatchSampler(data.val.frames, config.batch_size, shuffle=False)
        self.train_loader = make_loader(data.train, self.spec, self.layout, self.sampler,
                                        config, self.runtime)
        self.val_loader = make_loader(data.val, self.spec, self.layout, val_sampler, config,
                                      self.runtime)
        self.epoch = 0
        self.step = 0
        self.history: list[dict] = []

    def restore(self, folder: Path) -> None:
        ckpt = load_checkpoint(folder)
        saved = AdapterDims.from_json(ckpt.state["dims"])
        if saved != self.dims:
            raise ConfigError(f"--resume {folder}: checkpoint dims {saved} differ from this run's {self.dims}")
        self.model.load_state_dict(ckpt.weights)
        if ckpt.optimizer is not None:
            self.optimizer.load_state_dict(ckpt.optimizer)
        elif ckpt.state["epoch"] < self.config.epochs:
            warnings.warn(f"--resume {folder}: the checkpoint has no optimizer state (a search "
                          "trial's last checkpoint): AdamW's moments start afresh", stacklevel=2)
        if self.scaler is not None and ckpt.scaler is not None:
            self.scaler.load_state_dict(ckpt.scaler)
        self.epoch, self.step = ckpt.state["epoch"], ckpt.state["step"]
        self.history = ckpt.state["history"]

    def train_epoch(self, progress: Progress) -> float:
        self.model.train()
        self.sampler.set_epoch(self.epoch)
        progress.epoch_started(self.epoch + 1, self.config.epochs, len(self.sampler))
        device, every = self.runtime.device, self.config.log_every
        loss_sum = torch.zeros((), device=device)
        weight_sum = torch.zeros((), device=device)
        for batch in self.train_loader:
            batch = batch.to(device, non_blocking=True)
            loss = self.train_step(batch)
            w = batch.weights.sum()
            loss_sum += loss.detach() * w
            weight_sum += w
            self.step += 1
            # .item() waits for the device: only every log_every steps.
            progress.step_done(float(loss.detach()) if self.step % every == 0 else None)
        return float(loss_sum / weight_sum.clamp(min=1e-12))

    def train_step(self, batch) -> torch.Tensor:
        loss = self.forward_loss(batch)
        self.backward(loss)
        self.optimizer_step()
        return loss

    # The step's phases, kept apart so `bench` times the trainer's own code, phase by phase.
    def forward_loss(self, batch) -> torch.Tensor:
        with self.runtime.autocast():
            pred = self.model(batch.first, batch.latter)
        return masked_loss(pred, batch.targets, batch.positions, batch.mask, batch.weights,
                           self.config.loss)

    def backward(self, loss: torch.Tensor) -> None:
        # set_to_none: backward then stores fresh gradients instead of adding them into
        # zeroed ones, skipping a memset and an add pass over 300 MB at InfiniteTalk's dims
        # (reasoned, not timed apart: the profile of the step shows no such passes).
        self.optimizer.zero_grad(set_to_none=True)
        with self.runtime.backward_precision():
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def optimizer_step(self) -> None:
        self.clip_gradients()
        self.apply_gradients()
        self.free_gradients()

    def clip_gradients(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.grad_clip > 0:
            clip_gradients(list(self.model.parameters()), self.config.grad_clip, self.runtime.device)

    def apply_gradients(self) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def free_gradients(self) -> None:
        # Spent once applied: freeing them then, not at the next backward, keeps 300 MB of
        # gradients (InfiniteTalk's dims) out of the next forward's peak, and their memory
        # serves its activations instead.
        self.optimizer.zero_grad(set_to_none=True)

    def validate(self) -> dict[str, float]:
        # Gradients left by a caller that stepped without freeing them are not needed again.
        self.free_gradients()
        # The steps' kept heap (memory.keep_freed_memory) goes back first: validation's
        # differently sized tensors would otherwise grow the heap past the steps' peak.
        release_freed_memory()
        return evaluate(self.model, self.val_loader, self.runtime)

    def state(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "history": self.history,
                "config": self.config.to_json(), "dims": self.dims.to_json(),
                "layout": self.layout, "precision": self.runtime.precision}

    def save(self, folder: Path, spares: SparePool | None = None, moments: bool = True) -> Path:
        return save_checkpoint(folder, self.model, self.optimizer if moments else None, self.scaler,
                               self.state(), spares)


@torch.no_grad()
def evaluate(model: AudioProjModel, batches, runtime: Runtime) -> dict[str, float]:
    """`val_l1`, `val_mse`, `val_cos` of a model over batches (the same in every trial)."""
    model.eval()
    sums = MetricSums()
    for batch in batches:
        batch = batch.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            pred = model(batch.first, batch.latter)
        sums.add(pred, batch.targets, batch.positions, batch.mask, batch.weights)
    return sums.means()


def evaluate_pack(model: AudioProjModel, pack: PackedClips, batch_size: int = 8) -> dict[str, float]:
    """Validation metrics of a model (e.g. an exported one) on a pack, in float32 on the CPU."""
    spec = WindowSpec(model.dims.audio_window, model.dims.vae_scale)
    gatherer = BatchGatherer(pack, spec, pack.layout_for(spec.vae_scale))
    batches = (gatherer[b] for b in BatchSampler(pack.frames, batch_size, shuffle=False))
    return evaluate(model, batches, resolve_runtime("cpu", False))


def train(
    config: TrainConfig,
    data: TrainData,
    report: ReportFn | None = None,
    progress: Progress | None = None,
    output_dir: Path | None = None,
    resume_from: Path | None = None,
    spares: SparePool | None = None,
    kept: KeptModel | None = None,
) -> TrainResult:
    """Train for `config.epochs` epochs (continuing from `resume_from` when given).

    With `output_dir`, a checkpoint is written every `save_every` epochs and at the end;
    of the older ones, only the best by `val_l1` is kept. Those no longer wanted become
    spares the next checkpoints are written over (spare_files.py): in `spares`, which
    outlive the run (a Ray actor's next trial uses them), or in `output_dir`, removed at the
    end. With `kept`, the model and moments come from it and go back to it at the end
    (`KeptModel`).
    """
    if output_dir is not None and spares is None:
        spares = SparePool(Path(output_dir) / "checkpoints" / ".spares")
        try:
            return train(config, data, report, progress, output_dir, resume_from, spares, kept)
        finally:
            spares.clear()
    progress = progress or NoProgress()
    run = Run(config, data, kept)
    if resume_from is not None:
        run.restore(Path(resume_from))
    try:
        return run_epochs(run, report, progress, output_dir, spares, resume_from)
    finally:  # also when Tune stops the trial inside `report` (SystemExit)
        if kept is not None:
            kept.keep(run)


def run_epochs(run: Run, report: ReportFn | None, progress: Progress, output_dir: Path | None,
               spares: SparePool | None, resume_from: Path | None = None) -> TrainResult:
    result = TrainResult(history=run.history)
    result.best = min(run.history, key=_rank, default=None)
    restore_checkpoints(result, run.history, output_dir, resume_from)
    while run.epoch < run.config.epochs:
        started = time.perf_counter()
        train_loss = run.train_epoch(progress)
        metrics = {"epoch": run.epoch + 1, "step": run.step, "train_loss": train_loss,
                   **run.validate(), "epoch_seconds": time.perf_counter() - started}
        run.epoch += 1
        run.history.append(metrics)
        if result.best is None or _rank(metrics) < _rank(result.best):
            result.best = metrics
        folder = _save_if_due(run, output_dir, result, metrics, spares)
        progress.epoch_done(metrics)
        if report is not None:
            report(dict(metrics), folder)
    return result


def restore_checkpoints(result: TrainResult, history: list[dict], output_dir: Path | None,
                        resume_from: Path | None) -> None:
    """The resumed run's best and last checkpoints, as if it had never stopped: the one it
    resumed from and those it kept under `output_dir` up to that epoch (later ones belong
    to a run that went past the checkpoint resumed from). Without them, a best epoch
    before the resume was forgotten and the checkpoints before it never retired."""
    if resume_from is None:
        return
    metrics = {m["epoch"]: m for m in history}
    found = [Path(resume_from)]
    if output_dir is not None:
        found += sorted((Path(output_dir) / "checkpoints").glob("epoch_*"))
    saved = {}
    for folder in found:
        if is_checkpoint(folder):
            epoch = json.loads((folder / STATE_FILE).read_text())["epoch"]
            if epoch in metrics:
                saved.setdefault(epoch, folder)
    if not saved:
        return
    best = min(saved, key=lambda e: (_rank(metrics[e]), e))
    result.best_checkpoint, result.best_checkpoint_metrics = saved[best], metrics[best]
    result.last_checkpoint = saved[max(saved)]


def _rank(metrics: dict) -> float:
    value = metrics["val_l1"]
    return math.inf if math.isnan(value) else value


def _save_if_due(run: Run, output_dir: Path | None, result: TrainResult, metrics: dict,
                 spares: SparePool | None):
    if output_dir is None:
        return None
    last = run.epoch == run.config.epochs
    if run.epoch % run.config.save_every and not last:
        return None
    folder = Path(output_dir) / "checkpoints" / f"epoch_{run.epoch:04d}"
    if last and not run.config.moments_in_last_checkpoint:
        # Written afresh, so both spares stay for the next run in this process.
        folder = run.save(folder, moments=False)
    else:
        folder = run.save(folder, spares)
    previous, best = result.last_checkpoint, result.best_checkpoint
    if best is None or _rank(metrics) < _rank(result.best_checkpoint_metrics):
        result.best_checkpoint, result.best_checkpoint_metrics = folder, metrics
    for old in {previous, best} - {None, folder, result.best_checkpoint}:
        # Only this run's own folders: a checkpoint resumed from elsewhere (a Tune trial's
        # stored one, another run's) is not ours to retire.
        if old.parent.resolve() == folder.parent.resolve():
            spares.retire(old)  # train() gives a pool whenever there is an output_dir
    result.last_checkpoint = folder
    return folder
