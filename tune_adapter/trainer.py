"""The windowed masked-loss trainer: one run, no Ray.

`train(config, data, report)` fits an AudioProjModel to a teacher's tokens, validates every
epoch, checkpoints atomically and calls `report(metrics, checkpoint_dir)` once per epoch:
the CLI prints from it, the Ray driver forwards it to `tune.report`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch.profiler import record_function

from . import cpu_tuning
from .adapter import AdapterDims, AudioProjModel
from .checkpoint import STATE_FILE, is_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import BatchGatherer, BatchSampler, PackedClips, TrainData
from .data.clips import ClipShapes
from .errors import ConfigError
from .init_from import InitialAdapter, load_initial_adapter, read_initial_adapter
from .loss import MetricSums, masked_loss
from .runtime import Runtime, resolve_runtime
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


DEFAULT_INTERMEDIATE_DIM = 512  # InfiniteTalk's


def adapter_dims(config: TrainConfig, shapes: ClipShapes, initial: InitialAdapter | None = None) -> AdapterDims:
    """The adapter's dims: W, S and I from the config (I else the starting adapter's, else
    InfiniteTalk's 512), L, C, K, D from the data."""
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
        intermediate_dim=config.intermediate_dim or (
            initial.intermediate_dim if initial is not None else DEFAULT_INTERMEDIATE_DIM),
        context_tokens=shapes.tokens,
        output_dim=shapes.token_dim, norm_output_audio=config.norm_output_audio,
    )


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    # Fused AdamW: one kernel over all the parameters instead of a loop of small ones.
    return torch.optim.AdamW(model.parameters(), lr=config.lr,
                             weight_decay=config.weight_decay, fused=True)


def make_loader(pack: PackedClips, spec: WindowSpec, layout: str, sampler, config: TrainConfig,
                runtime: Runtime) -> torch.utils.data.DataLoader:
    workers = config.num_workers
    return torch.utils.data.DataLoader(
        BatchGatherer(pack, spec, layout), batch_size=None, sampler=sampler,
        num_workers=workers, persistent_workers=workers > 0,
        pin_memory=runtime.pin_memory,
    )


class Run:
    """The state of one training run; `train()` below drives it epoch by epoch."""

    def __init__(self, config: TrainConfig, data: TrainData):
        self.config = config
        self.runtime = resolve_runtime(config.device, config.mixed_precision)
        # CPU tuning (cpu_tuning.py): for CPU runs only, when the config asks for it.
        self.cpu_tuned = config.cpu_tuning and self.runtime.device.type == "cpu"
        if self.cpu_tuned:
            cpu_tuning.start_run(config.keep_freed_memory)
        self.clip_gradients = cpu_tuning.clip_gradients if self.cpu_tuned else torch.nn.utils.clip_grad_norm_
        self.spec = WindowSpec(config.audio_window, config.vae_scale)
        self.layout = data.train.layout_for(self.spec.vae_scale)
        data.val.layout_for(self.spec.vae_scale)
        initial = read_initial_adapter(Path(config.init_from)) if config.init_from else None
        self.dims = adapter_dims(config, data.train.shapes, initial)
        torch.manual_seed(config.seed)
        self.model = AudioProjModel(self.dims)
        # The layers --init-partial left at their random start (none without it).
        self.fresh = load_initial_adapter(self.model, initial, config.init_partial) if initial else []
        self.model.to(self.runtime.device)
        self.params = list(self.model.parameters())
        self.optimizer = make_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler("cuda") if self.runtime.grad_scaling else None
        self.sampler = BatchSampler(data.train.frames, config.batch_size, config.seed,
                                    bucket=config.bucket_by_length, shards=data.train.shard_of_clip,
                                    window=config.shuffle_window, read_ahead=data.train.read_ahead,
                                    release=data.train.release)
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
        """One optimizer step on a batch; returns the loss. The phases are named for
        `tune-adapter bench`, which times them with torch.profiler."""
        model, optimizer, scaler, config = self.model, self.optimizer, self.scaler, self.config
        with record_function("forward + loss"):
            with self.runtime.autocast():
                pred = model(batch.first, batch.latter)
            loss = masked_loss(pred, batch.targets, batch.positions, batch.mask, batch.weights, config.loss)
        with record_function("backward"), self.runtime.backward_precision():
            (scaler.scale(loss) if scaler is not None else loss).backward()
        with record_function("grad clip"):
            if scaler is not None:
                scaler.unscale_(optimizer)
            if config.grad_clip > 0:
                self.clip_gradients(self.params, config.grad_clip)
        with record_function("fused AdamW"):
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        # Freed now rather than at the next backward: the gradients stay out of the next
        # forward's peak memory, and backward stores fresh ones instead of adding into zeros.
        optimizer.zero_grad(set_to_none=True)
        return loss

    def validate(self) -> dict[str, float]:
        if self.cpu_tuned:
            cpu_tuning.before_validation()
        return evaluate(self.model, self.val_loader, self.runtime)

    def state(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "history": self.history,
                "config": self.config.to_json(), "dims": self.dims.to_json(),
                "layout": self.layout, "precision": self.runtime.precision}

    def save(self, folder: Path, moments: bool = True) -> Path:
        return save_checkpoint(folder, self.model, self.optimizer if moments else None, self.scaler,
                               self.state())


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
) -> TrainResult:
    """Train for `config.epochs` epochs (continuing from `resume_from` when given).

    With `output_dir`, a checkpoint is written every `save_every` epochs and at the end;
    of the older ones, only the best by `val_l1` is kept.
    """
    progress = progress or NoProgress()
    run = Run(config, data)
    if resume_from is not None:
        run.restore(Path(resume_from))
    result = TrainResult(history=run.history)
    result.best = min(trained(run.history), key=_rank, default=None)
    restore_checkpoints(result, run.history, output_dir, resume_from)
    if run.epoch == 0 and not run.history:
        # Epoch 0: the starting point, measured before the first step.
        started = time.perf_counter()
        start = {"epoch": 0, "step": 0, "train_loss": math.nan, **run.validate(),
                 "epoch_seconds": time.perf_counter() - started}
        run.history.append(start)
        progress.epoch_done(start)
        if report is not None:
            report(dict(start), None)
    while run.epoch < config.epochs:
        started = time.perf_counter()
        train_loss = run.train_epoch(progress)
        metrics = {"epoch": run.epoch + 1, "step": run.step, "train_loss": train_loss,
                   **run.validate(), "epoch_seconds": time.perf_counter() - started}
        run.epoch += 1
        run.history.append(metrics)
        if result.best is None or _rank(metrics) < _rank(result.best):
            result.best = metrics
        folder = _save_if_due(run, output_dir, result, metrics)
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


def trained(history: list[dict]) -> list[dict]:
    """The epochs that trained: all but epoch 0, the starting point."""
    return [m for m in history if m["epoch"] >= 1]


def _rank(metrics: dict) -> float:
    value = metrics["val_l1"]
    return math.inf if math.isnan(value) else value


def _save_if_due(run: Run, output_dir: Path | None, result: TrainResult, metrics: dict):
    if output_dir is None:
        return None
    last = run.epoch == run.config.epochs
    if run.epoch % run.config.save_every and not last:
        return None
    folder = Path(output_dir) / "checkpoints" / f"epoch_{run.epoch:04d}"
    folder = run.save(folder, moments=not last or run.config.moments_in_last_checkpoint)
    previous, best = result.last_checkpoint, result.best_checkpoint
    if best is None or _rank(metrics) < _rank(result.best_checkpoint_metrics):
        result.best_checkpoint, result.best_checkpoint_metrics = folder, metrics
    for old in {previous, best} - {None, folder, result.best_checkpoint}:
        # Only this run's own folders: a checkpoint resumed from elsewhere (a Tune trial's
        # stored one, another run's) is not ours to retire.
        if old.parent.resolve() == folder.parent.resolve():
            shutil.rmtree(old, ignore_errors=True)
    result.last_checkpoint = folder
    return folder
