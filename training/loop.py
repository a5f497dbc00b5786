"""The training loop every stage of Algorithm 1 shares.

Per epoch: reseed, train on this rank's share of every batch (micro-batches accumulate gradients;
DDP averages them over ranks), step the cosine schedule, validate, log, checkpoint. Every random
choice is seeded from (run seed, epoch, rank / sample), so a resumed run repeats an uninterrupted
one exactly.
"""
from __future__ import annotations

import contextlib
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from ACATCore.errors import ConfigError
from training.checkpointing import Checkpoints, Logger
from training.config import HyperParams
from training.runtime import Runtime, autocast, cpu_bf16_here, derive_seed, seed_everything, unwrap


@dataclass
class Stage:
    """What differs between training stages: how a batch becomes a loss and how to validate."""
    name: str
    loss: Callable            # (model, batch, runtime) -> scalar loss (mean over the rank's batch)
    validate: Callable        # (model, DataSet, runtime) -> metrics dict with "score" (higher better)
    get_batch: Callable       # (DataSet, positions, epoch) -> batch dict on CPU


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rt: Runtime,
                  micro_batches: int = 1, shuffle: bool = True) -> list:
    """This rank's share of every optimiser step of an epoch: a list (one per step) of
    `micro_batches` arrays of split positions.

    The global batch order depends only on (seed, epoch). Each global batch of `batch_size` is cut
    into world_size * micro_batches interleaved shares (padded by wrapping around when it does not
    divide); rank r takes shares r, r + world_size, ... So 2 processes x 1 micro-batch and
    1 process x 2 micro-batches see exactly the same groups of samples (and BatchNorm statistics).
    """
    parts = rt.world_size * micro_batches
    if batch_size % parts:
        raise ConfigError(f"batch_size {batch_size} must be a multiple of processes x micro_batches "
                          f"({rt.world_size} x {micro_batches})")
    if shuffle:
        g = torch.Generator().manual_seed(derive_seed("order", seed, epoch))
        order = torch.randperm(n, generator=g).numpy()
    else:
        order = np.arange(n)
    steps = []
    for start in range(0, n, batch_size):
        b = order[start:start + batch_size]
        if len(b) % parts:
            b = np.concatenate([b, np.resize(order, parts - len(b) % parts)])
        steps.append([b[rt.rank + rt.world_size * m::parts] for m in range(micro_batches)])
    return steps


def train_step(model, optimizer, stage: Stage, data, chunks: list, epoch: int,
               rt: Runtime, cpu_bf16: bool = False) -> list:
    """One optimiser step over this rank's micro-batches `chunks` (lists of split positions);
    returns each micro-batch's (detached loss, number of samples). cpu_bf16: under bf16 autocast
    on the CPU too (runtime.autocast)."""
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for m, pos in enumerate(chunks):
        batch = stage.get_batch(data, pos, epoch)
        batch = {k: v.to(rt.device, non_blocking=True) for k, v in batch.items()}
        # gradients are averaged over ranks by DDP (synchronised on the last micro-batch)
        sync = not rt.distributed or m == len(chunks) - 1
        with (contextlib.nullcontext() if sync else model.no_sync()):
            with autocast(rt, cpu_bf16):
                loss = stage.loss(model, batch, rt)
            (loss / len(chunks)).backward()
        losses.append((loss.detach(), len(pos)))
    optimizer.step()
    return losses


def train_epoch(model, optimizer, stage: Stage, data, hp: HyperParams, seed: int, epoch: int,
                rt: Runtime) -> float:
    """One epoch over `data` (a DataSet, or any dataset the stage's get_batch takes); the mean
    training loss over all ranks' samples."""
    from tqdm import tqdm
    model.train()
    batches = epoch_batches(len(data), hp.batch_size, seed, epoch, rt,
                            micro_batches=int(hp.micro_batches))
    total, count = torch.zeros((), dtype=torch.float64), 0
    for chunks in tqdm(batches, desc=f"{stage.name} {epoch + 1}/{hp.epochs}", leave=False,
                       disable=not rt.progress):
        for loss, n in train_step(model, optimizer, stage, data, chunks, epoch, rt, hp.cpu_bf16):
            total += loss.double().cpu() * n
            count += n
    if rt.distributed:
        t = torch.tensor([float(total), float(count)], dtype=torch.float64, device=rt.device)
        dist.all_reduce(t)
        total, count = t[0].cpu(), int(t[1])
    return float(total) / max(count, 1)


def param_groups(model, hp: HyperParams) -> list:
    """One Adam group at hp.lr, or two with hp.new_lr: the tensors the model did not take from the
    baseline (``model.fresh_parameters``, set by train_acat) learn at new_lr."""
    fresh = set(getattr(model, "fresh_parameters", ()))
    if not hp.new_lr or not fresh:
        return [{"params": list(model.parameters())}]
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n not in fresh]},
            {"params": [p for n, p in named if n in fresh], "lr": hp.new_lr}]


def validate_start(model, stage: Stage, splits: dict, hp: HyperParams, rt: Runtime, checkpoints: Checkpoints,
                   logger: Logger) -> tuple:
    """Validate the weights before any training (logged as epoch -1) and keep them as the best so far:
    a fine-tuned model that no epoch improves on validation by more than hp.start_margin stays what it
    started as (ACAT with the identity start: exactly its baseline). Returns (the score an epoch must
    beat: the start's plus the margin, best epoch = -1)."""
    metrics = {k: float(v) for k, v in stage.validate(model, splits["val"], rt).items()}
    if rt.is_main:
        logger.log(-1, {"train_loss": float("nan"), "lr": 0.0, **{f"val_{k}": v for k, v in metrics.items()},
                        "seconds": 0.0})
        checkpoints.save_best(-1, unwrap(model), metrics)
        print(f"[{stage.name}] start " + " ".join(f"val_{k} {v:.4f}" for k, v in metrics.items()) + " *",
              flush=True)
    rt.barrier()
    return metrics["score"] + hp.start_margin, -1


def stalled(patience, epoch: int, best_epoch: int) -> bool:
    """Whether `patience` epochs have run since the best so far, before epoch `epoch` (0-based) starts;
    best_epoch -1 is the start (validate_start) or nothing yet. Never when patience is None."""
    return patience is not None and epoch - 1 - best_epoch >= patience


def fit(model, stage: Stage, splits: dict, hp: HyperParams, rt: Runtime, *, folder: Path,
        seed: int, resume: bool = False, tensorboard: bool = True) -> tuple:
    """Train `model` for hp.epochs epochs on splits["train"], validating on splits["val"].

    Adam (lr, weight_decay), cosine annealing per epoch down to lr_min. Every epoch is logged and
    checkpointed in `folder` (training.checkpointing); resume=True continues from
    checkpoint_last.pt. hp.validate_start: the starting weights compete too (epoch -1, with a
    handicap of hp.start_margin for every epoch). hp.patience: stop once that many epochs brought no
    new best (the schedule stays the one planned for hp.epochs). hp.cpu_bf16: see train_step; it takes
    effect only on a CPU with native bf16 (runtime.cpu_bf16_here).
    Returns (the best model on validation, its metrics, its epoch, the epochs run in all: fewer than
    hp.epochs when patience stopped the stage).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    folder.mkdir(parents=True, exist_ok=True)
    hp = dataclasses.replace(hp, cpu_bf16=cpu_bf16_here(hp.cpu_bf16, rt, f"{stage.name}.cpu_bf16"))
    model = rt.place(model, trains=True)
    opt = torch.optim.Adam(param_groups(model, hp), lr=hp.lr, weight_decay=hp.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp.epochs, eta_min=hp.lr_min)
    checkpoints = Checkpoints(folder, stage.name, seed)
    start, best_score, best_epoch = 0, -float("inf"), -1
    if resume:
        start, best_score, best_epoch = checkpoints.resume(model, opt, sched, rt)
    ddp = DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
              find_unused_parameters=False) if rt.distributed else model
    logger = Logger(folder, rt.is_main, tensorboard, start)
    if hp.validate_start and start == 0:
        best_score, best_epoch = validate_start(ddp, stage, splits, hp, rt, checkpoints, logger)
    ran = start
    for epoch in range(start, hp.epochs):
        if stalled(hp.patience, epoch, best_epoch):
            rt.log(f"[{stage.name}] no new best on validation in {hp.patience} epochs: stops after epoch "
                   f"{epoch} of {hp.epochs} ({stage.name}.patience)")
            break
        t0 = time.time()
        seed_everything(derive_seed("epoch", seed, epoch, rt.rank))
        train_loss = train_epoch(ddp, opt, stage, splits["train"], hp, seed, epoch, rt)
        lr = opt.param_groups[0]["lr"]
        sched.step()
        metrics = {k: float(v) for k, v in stage.validate(ddp, splits["val"], rt).items()}
        improved = metrics["score"] > best_score
        if improved:
            best_score, best_epoch = metrics["score"], epoch
        if rt.is_main:
            # the log row and the best model first, checkpoint_last last: it is the commit point
            logger.log(epoch, {"train_loss": train_loss, "lr": lr,
                               **{f"val_{k}": v for k, v in metrics.items()},
                               "seconds": time.time() - t0})
            checkpoints.save(epoch, unwrap(ddp), opt, sched, (best_score, best_epoch), metrics,
                             improved)
            print(f"[{stage.name}] epoch {epoch + 1}/{hp.epochs} loss {train_loss:.4f} " +
                  " ".join(f"val_{k} {v:.4f}" for k, v in metrics.items()) +
                  (" *" if improved else ""), flush=True)
        ran = epoch + 1
        rt.barrier()
    logger.close()
    rt.barrier()
    return (*checkpoints.load_best(unwrap(ddp)), ran)
