"""What a training stage leaves in its folder every epoch: resume checkpoints and the log.

    checkpoint_last.pt   model, optimiser, scheduler, epoch, best score, RNG states (resume)
    checkpoint_best.pt   the model of the best validation score so far, with its metrics
    log.csv              one row per epoch (rank 0); tensorboard/ when installed and enabled

Checkpoints are torch.save files loaded with weights_only=True (no code runs on loading); the
models for users are safetensors (training.cards).
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import torch

from ACATCore.errors import ConfigError, ModelFileError
from training.runtime import Runtime, rng_state, set_rng_state


def atomic_save(obj, path: Path):
    """torch.save to a temporary file, then rename: a killed run never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's dict (ModelFileError when the file cannot be read)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise ModelFileError(f"resume checkpoint {path} cannot be read ({e}); delete it to start "
                             "over") from e


class Checkpoints:
    """checkpoint_last.pt and checkpoint_best.pt of one stage (`name`) and run seed."""

    def __init__(self, folder: Path, name: str, seed: int):
        self.name, self.seed = name, seed
        self.last, self.best = folder / "checkpoint_last.pt", folder / "checkpoint_best.pt"

    def resume(self, model, optimizer, scheduler, rt: Runtime) -> tuple:
        """Restore checkpoint_last.pt into the objects (and the global RNGs); returns
        (first epoch to run, best score, best epoch): (0, -inf, -1) when there is none."""
        if not self.last.exists():
            rt.log(f"[{self.name}] --resume given but {self.last} does not exist: "
                   "starting from epoch 0")
            return 0, -math.inf, -1
        ck = load_checkpoint(self.last)
        if ck.get("stage") != self.name or ck.get("seed") != self.seed:
            raise ConfigError(f"{self.last} belongs to stage {ck.get('stage')} seed {ck.get('seed')}, "
                              f"not {self.name} seed {self.seed}")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        set_rng_state(ck["rng"])
        rt.log(f"[{self.name}] resumed from {self.last} at epoch {ck['epoch'] + 1}")
        return ck["epoch"] + 1, ck["best_score"], ck["best_epoch"]

    def save(self, epoch: int, model, optimizer, scheduler, best: tuple, metrics: dict,
             improved: bool):
        """checkpoint_best.pt when `improved`, then checkpoint_last.pt (the commit point: a run
        killed before it redoes this epoch, identically). best: (best score, best epoch)."""
        weights = model.state_dict()
        state = {"stage": self.name, "seed": self.seed, "epoch": epoch, "model": weights,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "best_score": best[0], "best_epoch": best[1], "rng": rng_state(),
                 "metrics": metrics}
        if improved:
            self.save_best(epoch, model, metrics, weights)
        atomic_save(state, self.last)

    def save_best(self, epoch: int, model, metrics: dict, weights=None):
        """checkpoint_best.pt: the model's weights after `epoch` (-1: before training)."""
        atomic_save({"stage": self.name, "seed": self.seed, "epoch": epoch,
                     "model": model.state_dict() if weights is None else weights, "metrics": metrics}, self.best)

    def load_best(self, model) -> tuple:
        """(model with the best weights, their validation metrics, their epoch); the model as it is
        with ({}, -1) when no epoch was saved."""
        if not self.best.exists():
            return model, {}, -1
        best = load_checkpoint(self.best)
        model.load_state_dict(best["model"])
        return model, best.get("metrics", {}), best.get("epoch", -1)


class Logger:
    """CSV log (always) and TensorBoard (when installed and enabled), rank 0 only."""

    def __init__(self, folder: Path, enabled: bool, tensorboard: bool, start_epoch: int):
        self.enabled = enabled
        self.path = folder / "log.csv"
        self.writer = None
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        if self.path.exists():          # keep the rows of epochs the checkpoint covers
            rows = list(csv.DictReader(self.path.open()))
            rows = [r for r in rows if int(r["epoch"]) < start_epoch] if start_epoch > 0 else []
            self._rewrite(rows)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(folder / "tensorboard"), purge_step=start_epoch)
            except ImportError:
                self.writer = None

    def _rewrite(self, rows):
        if not rows:
            self.path.unlink()
            return
        with self.path.open("w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)

    def log(self, epoch: int, values: dict):
        """Append one row (floats to 6 significant digits) and the scalars to TensorBoard."""
        if not self.enabled:
            return
        row = {"epoch": epoch, **{k: (f"{v:.6g}" if isinstance(v, float) else v)
                                  for k, v in values.items()}}
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(row))
            if new:
                wr.writeheader()
            wr.writerow(row)
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, epoch)
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
