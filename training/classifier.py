"""Classification stages (baseline, ACAT, competitors): weighted cross-entropy, flips and
augmentation, validation accuracy, and class probabilities of a whole split."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from training import lesion_loss
from training.augment import augment_batch, flip_batch, flip_decisions
from training.lesion_insertion import insert_lesions
from training.config import TASK_DEFAULTS, HyperParams
from training.data import DataSet
from training.loop import Stage, fit
from training.runtime import Runtime, autocast, unwrap


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights, normalised to mean 1 over the training samples."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    w = w / (w[labels].mean() if len(labels) else 1.0)
    return torch.tensor(w, dtype=torch.float32)


def classifier_stage(name: str, hp: HyperParams, train: DataSet, *, seed: int, num_classes: int,
                     needs_saliency: bool, label_map: Optional[list], rt: Runtime) -> Stage:
    """Class-weighted cross-entropy (mean over samples, so that averaging over DDP ranks equals
    the global mean) with random left-right flips (labels swapped by `label_map`) and augmentation;
    plus hp.lesion_loss times the lesion-cell loss when it is on (training.lesion_loss: the model
    carries its training-only head, the batches their lesion masks, flipped and moved with the image).

    train: the training split (its labels give the class weights).
    """
    weights = class_weights(train.labels, num_classes) if hp.class_weighted \
        else torch.ones(num_classes)
    weights = weights.to(rt.device)
    spatial = ("x", "saliency", "mask")

    def get_batch(ds, pos, epoch):
        b = ds.get(pos, with_saliency=needs_saliency, with_mask=hp.lesion_loss > 0)
        b = insert_lesions(b, hp.insert_lesions, pos, seed, epoch)
        b = flip_batch(b, flip_decisions(pos, hp.flip, seed, epoch), label_map, keys=spatial)
        b = augment_batch(b, hp.augment, pos, seed, epoch, keys=spatial)
        b.pop("index")
        return b

    def loss(model, batch, rt):
        logits = forward(model, batch, needs_saliency)
        per = F.cross_entropy(logits.float(), batch["y"], reduction="none")
        total = (per * weights[batch["y"]]).mean()
        if hp.lesion_loss > 0:
            total = total + hp.lesion_loss * lesion_loss.loss(unwrap(model), batch["mask"])
        return total

    def validate(model, ds, rt):
        probs, y = predict(model, ds, rt, needs_saliency)
        acc = float((probs.argmax(1) == y).float().mean()) if len(y) else 0.0
        nll = float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), y)) if len(y) else 0.0
        return {"score": acc, "accuracy": acc, "loss": nll}

    return Stage(name, loss, validate, get_batch)


def fit_classifier(model, name: str, cfg: dict, hp: HyperParams, splits: dict, rt: Runtime, *,
                   folder, seed: int, resume: bool, needs_saliency: bool) -> tuple:
    """fit() with the classification stage of the config's task; returns (the best model, the
    card's metrics {val_accuracy, best_epoch, epochs_run})."""
    stage = classifier_stage(name, hp, splits["train"], seed=seed, num_classes=model.num_classes,
                             needs_saliency=needs_saliency,
                             label_map=TASK_DEFAULTS[cfg["task"]]["flip_label_map"], rt=rt)
    model, metrics, best_epoch, ran = fit(model, stage, splits, hp, rt, folder=folder, seed=seed,
                                          resume=resume, tensorboard=cfg["runtime"]["tensorboard"])
    return model, {"val_accuracy": metrics.get("accuracy"), "best_epoch": best_epoch, "epochs_run": ran}


def forward(model, batch, needs_saliency):
    """Logits; the brain MTL model's are 4-class log-probabilities, so cross-entropy on them is
    the negative log-likelihood and softmax gives back the probabilities."""
    if needs_saliency:
        return model(batch["x"], batch["saliency"])
    return model(batch["x"])


def probabilities(logits: torch.Tensor, model) -> torch.Tensor:
    """Class probabilities from logits (the model's own softmax when it has one)."""
    m = unwrap(model)
    if hasattr(m, "softmax"):
        return m.softmax(logits)
    return torch.softmax(logits, dim=1)


@torch.no_grad()
def predict(model, ds: DataSet, rt: Runtime, needs_saliency: bool, batch_size: int = 8):
    """(class probabilities (N, C), labels (N,)) of every volume of `ds`; the volumes are sharded
    across ranks and the probabilities gathered on all."""
    m = unwrap(model)
    was_training = m.training
    m.eval()
    n = len(ds)
    mine = np.arange(rt.rank, n, rt.world_size)
    out = torch.zeros(n, getattr(m, "num_classes", 2))
    got = torch.zeros(n)
    for start in range(0, len(mine), batch_size):
        pos = mine[start:start + batch_size]
        b = ds.get(pos, with_saliency=needs_saliency)
        b = {k: v.to(rt.device) for k, v in b.items()}
        with autocast(rt):
            logits = forward(m, b, needs_saliency)
        p = probabilities(logits.float(), m).float().cpu()
        if p.shape[1] != out.shape[1]:
            out = torch.zeros(n, p.shape[1])
        out[torch.as_tensor(pos)] = p
        got[torch.as_tensor(pos)] = 1
    if rt.distributed:
        out, got = out.to(rt.device), got.to(rt.device)
        dist.all_reduce(out)
        dist.all_reduce(got)
        out, got = out.cpu(), got.cpu()
    m.train(was_training)
    return out, torch.from_numpy(np.asarray(ds.labels))
