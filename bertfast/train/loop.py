"""The training loop shared by finetune and pretrain: AdamW with linear warmup and decay,
gradient accumulation, data-parallel ranks, atomic checkpoints and exact resume.

Batching is deterministic: epoch ``e`` visits the examples in ``randperm(n, seed + e)`` order,
so the data position of a checkpoint is just its optimizer step. One optimizer step takes a
global batch of ``batch_size * accumulation * world_size`` examples; micro-batch ``k`` of rank
``r`` is slice ``k * world_size + r`` of it. Each micro-batch's mean loss is reweighted by its
share of the global batch's loss units (examples, or labelled tokens), so the gradient is
the same for any split into ranks and micro-batches.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainSettings:
    """What the loop needs from the command line."""

    output: str
    epochs: float = 3.0
    batch_size: int = 16
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.0
    weight_decay: float = 0.01
    accumulation: int = 1
    seed: int = 42
    max_grad_norm: float = 1.0
    autocast: str = "fp32"
    save_steps: int = 0
    log_steps: int = 10
    max_steps: int | None = None  # the run's length in optimizer steps (overrides epochs)
    stop_after_steps: int | None = None  # this invocation's steps, the schedule unchanged
    resume: bool = False

    def check(self) -> None:
        for name in ("batch_size", "accumulation"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name in ("max_steps", "stop_after_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not self.epochs > 0:
            raise ValueError(f"--epochs must be > 0, got {self.epochs}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"--warmup-ratio must lie in [0, 1], got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.autocast not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"--autocast must be fp32, bf16 or fp16, got {self.autocast!r}")


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def init_distributed(device: str) -> tuple[Distributed, str]:
    """Join the torchrun job named by the environment (gloo on CPUs, NCCL on GPUs); returns
    the process's place and the device it trains on."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(), device
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_gpu else "gloo")
    return Distributed(rank, world_size, local_rank), device


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: weight decay for matrices, none for biases and LayerNorm weights."""
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            no_decay_ids |= {id(p) for p in module.parameters(recurse=False)}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = id(param) in no_decay_ids or name.endswith("bias") or param.dim() < 2
        (no_decay if skip else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor: 0 -> 1 over the warmup, then 1 -> 0 at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def _describe(value: Any) -> str:
    """A fingerprint value for a message: a file by its size and hash, others as they are."""
    if isinstance(value, list):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    if isinstance(value, dict) and "sha256" in value:
        return f"{value['bytes']} bytes, sha256 {value['sha256'][:12]}"
    return repr(value)


def check_fingerprint(path: str, stored: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint written with other settings or data, naming each change."""
    changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    if changed:
        details = "; ".join(
            f"{k}: was {_describe(stored.get(k))}, now {_describe(current.get(k))}" for k in changed
        )
        raise ValueError(
            f"{path} was written by a run with different settings or data ({details}); resume "
            "with the same ones, or use a new --output"
        )


def truncate_metrics(path: str, step: int) -> None:
    """Keep the log records of steps up to ``step`` (the checkpoint's): a run killed after it
    logged later steps would otherwise log them twice on resume. A torn last line goes too."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file beside ``path``, then rename over it: a kill mid-write
    leaves the previous checkpoint intact."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class Progress:
    """A one-line bar on a terminal; plain log lines every ``log_steps`` otherwise."""

    def __init__(self, total: int, log_steps: int, enabled: bool, stream=None):
        stream = sys.stderr if stream is None else stream
        self.total, self.log_steps, self.enabled, self.stream = total, log_steps, enabled, stream
        self.tty = enabled and stream.isatty()
        self.started = time.perf_counter()

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        text = f"step {step}/{self.total} loss {loss:.4f} lr {lr:.3g} {tokens_per_s:,.0f} tok/s"
        if self.tty:
            width = 30
            done = int(width * step / max(self.total, 1))
            self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {text}")
            self.stream.flush()
        elif step % self.log_steps == 0 or step == self.total:
            self.stream.write(text + "\n")

    def message(self, text: str) -> None:
        if self.enabled:
            self.stream.write(("\n" if self.tty else "") + text + "\n")
            self.stream.flush()


@dataclass
class Task:
    """What the loop needs from a task.

    ``collate(features)`` gives the model's keyword inputs (targets included); ``weight`` the
    loss units a micro-batch's mean loss is over; ``evaluate(model)`` the metrics (rank 0).
    """

    collate: Callable[[Sequence[Any]], dict[str, torch.Tensor]]
    weight: Callable[[dict[str, torch.Tensor]], int]
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    tokens: Callable[[dict[str, torch.Tensor]], int] = lambda batch: int(
        batch["attention_mask"].sum()
    )


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(
    model: nn.Module,
    features: Sequence[Any],
    task: Task,
    settings: TrainSettings,
    dist: Distributed,
    fingerprint: dict[str, Any],
    save_model: Callable[[nn.Module], None],
) -> list[dict[str, Any]]:
    """Train ``model`` on ``features``; returns the epoch records written to the metrics log.

    ``fingerprint`` (the settings and data that shape the run) is stored in each checkpoint;
    resuming with a different one is an error rather than a silently different run. Each
    checkpoint also writes the model as it stands with ``save_model``, so that a stopped or
    interrupted run leaves a loadable model.
    """
    settings.check()
    device = next(model.parameters()).device
    # The ranks and the device change the arithmetic (the batch split, the kernels) too.
    fingerprint = {**fingerprint, "world_size": dist.world_size, "device": device.type}
    n = len(features)
    global_batch = settings.batch_size * settings.accumulation * dist.world_size
    steps_per_epoch = math.ceil(n / global_batch)
    total_steps = settings.max_steps or max(1, math.ceil(steps_per_epoch * settings.epochs))
    warmup = int(settings.warmup_ratio * total_steps)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, settings.weight_decay), lr=settings.learning_rate
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(warmup, total_steps))
    os.makedirs(settings.output, exist_ok=True)
    checkpoint_path = os.path.join(settings.output, CHECKPOINT_FILE)
    metrics_path = os.path.join(settings.output, METRICS_FILE)
    step, epoch_loss = 0, [0.0, 0]
    if settings.resume and os.path.isfile(checkpoint_path):
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        check_fingerprint(checkpoint_path, state["fingerprint"], fingerprint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        step, epoch_loss = state["step"], state["epoch_loss"]
    else:
        if settings.resume and dist.is_main:
            print(f"no checkpoint in {settings.output}: starting from step 0", file=sys.stderr)
        torch.manual_seed(settings.seed)
        random.seed(settings.seed)
    if dist.is_main and step == 0 and os.path.exists(metrics_path):
        os.remove(metrics_path)
    elif dist.is_main:
        truncate_metrics(metrics_path, step)

    ddp = model
    if dist.world_size > 1:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    scaler = torch.amp.GradScaler(enabled=settings.autocast == "fp16" and device.type == "cuda")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.autocast)
    progress = Progress(total_steps, settings.log_steps, dist.is_main)
    records: list[dict[str, Any]] = []

    def log(record: dict[str, Any]) -> None:
        if dist.is_main:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    saved_at = -1  # the step whose model is on disk

    def checkpoint() -> None:
        nonlocal saved_at
        if dist.is_main:
            atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(),
                    "step": step,
                    "epoch_loss": epoch_loss,
                    "fingerprint": fingerprint,
                },
                checkpoint_path,
            )
            save_model(model)
            saved_at = step
        dist.barrier()

    order = None
    started, tokens_seen = time.perf_counter(), 0
    stop_at = total_steps if settings.stop_after_steps is None else step + settings.stop_after_steps
    where = f"the model so far is in {settings.output}; --resume continues"
    interrupted = CtrlC()
    with interrupted:  # Ctrl-C finishes the step, writes the checkpoint, then stops
        while step < min(total_steps, stop_at):
            epoch, position = divmod(step, steps_per_epoch)
            if order is None or position == 0:
                order = torch.randperm(
                    n, generator=torch.Generator().manual_seed(settings.seed + epoch)
                )
            ddp.train()
            chosen = order[position * global_batch : (position + 1) * global_batch].tolist()
            micro = [
                chosen[(k * dist.world_size + r) * settings.batch_size :][: settings.batch_size]
                for k in range(settings.accumulation)
                for r in range(dist.world_size)
            ]
            batches = [task.collate([features[i] for i in m]) if m else None for m in micro]
            total_weight = sum(task.weight(b) for b in batches if b is not None)
            step_loss = 0.0
            for k in range(settings.accumulation):
                index = k * dist.world_size + dist.rank
                batch = batches[index]
                weight = task.weight(batch) if batch is not None else 0
                if batch is None:  # this rank's share ran out: a zero-weight stand-in keeps DDP
                    batch = task.collate([features[chosen[0]]])
                batch = {key: v.to(device) for key, v in batch.items()}
                syncing = k == settings.accumulation - 1 or dist.world_size == 1
                context = ddp.no_sync() if not syncing and dist.world_size > 1 else _null()
                with context:
                    with torch.autocast(
                        device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
                    ):
                        out = ddp(**batch) if weight else None
                        if out is not None:
                            loss = out.loss.float()
                        else:
                            inputs = {key: v for key, v in batch.items() if key in INPUT_KEYS}
                            outputs = ddp(**inputs).to_tuple()
                            tensors = [t for t in outputs if isinstance(t, torch.Tensor)]
                            loss = sum(t.float().sum() for t in tensors) * 0.0
                    # DDP averages gradients over ranks: scale by world size to get the sum.
                    share = weight * dist.world_size / max(total_weight, 1)
                    scaler.scale(loss * share).backward()
                step_loss += loss.item() * weight / max(total_weight, 1)
                tokens_seen += task.tokens(batch)
            if dist.world_size > 1:
                summed = torch.tensor([step_loss], device=device)
                torch.distributed.all_reduce(summed)
                step_loss = summed.item()
            scaler.unscale_(optimizer)
            if settings.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            epoch_loss = [epoch_loss[0] + step_loss, epoch_loss[1] + 1]
            rate = tokens_seen * dist.world_size / max(time.perf_counter() - started, 1e-9)
            progress.update(step, step_loss, lr, rate)
            if step % settings.log_steps == 0:
                log({"step": step, "epoch": epoch + 1, "loss": step_loss, "learning_rate": lr})
            epoch_done = step % steps_per_epoch == 0 or step == total_steps
            if epoch_done:
                record: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "step": step,
                    "train_loss": epoch_loss[0] / max(epoch_loss[1], 1),
                }
                epoch_loss = [0.0, 0]
                if task.evaluate is not None:
                    if dist.is_main:
                        model.eval()
                        with torch.no_grad():
                            record["eval"] = task.evaluate(model)
                    dist.barrier()
                records.append(record)
                log(record)
                progress.message(json.dumps(record))
            if epoch_done or (settings.save_steps and step % settings.save_steps == 0):
                checkpoint()
            if interrupted.agreed(dist, device):
                checkpoint()
                progress.message(
                    f"interrupted: checkpoint at step {step} of {total_steps}; {where}"
                )
                raise KeyboardInterrupt
    if step < total_steps:
        checkpoint()
        progress.message(f"stopped at step {step} of {total_steps}; {where}")
        return records
    if dist.is_main and saved_at != step:
        model.eval()
        save_model(model)
    dist.barrier()
    progress.message(f"finished at step {step} of {total_steps}; the model is in {settings.output}")
    return records


def close_distributed(dist: Distributed) -> None:
    """Leave the torchrun job (torch warns at exit about a process group left open)."""
    if dist.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class CtrlC:
    """While active, the first SIGINT only sets a flag (the loop stops after the step, with a
    checkpoint); a second one interrupts at once. Inactive off the main thread."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False

    def agreed(self, dist: Distributed, device: torch.device) -> bool:
        """Whether any rank was interrupted (all ranks stop at the same step)."""
        if dist.world_size == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
