"""Linear probes: a frozen linear classifier on cached teacher embeddings.

The probe standardises the time-mean of a teacher's embedding sequence with the training split's
statistics and applies one linear layer. It is the soft-target source of EAsT-KD and, evaluated
on the test split, the reference line of how well the teacher alone does. Being linear, a probe
applied to mixed-up embeddings equals the same mix of its logits, so it can run on the batches
the student sees.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.losses import masked_bce
from pipeline.metrics import mean_average_precision


class LinearProbe(nn.Module):
    """(N, T, D) or (N, D) embeddings → (N, n_classes) logits."""

    def __init__(self, mean: Tensor, std: Tensor, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone().float())
        self.register_buffer("std", std.clone().float())
        self.linear = nn.Linear(len(mean), n_classes)

    def forward(self, embeddings: Tensor) -> Tensor:
        x = embeddings.mean(dim=1) if embeddings.ndim == 3 else embeddings
        return self.linear((x - self.mean) / self.std)


def fit_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    train_mask: np.ndarray,
    valid_x: np.ndarray,
    valid_y: np.ndarray,
    valid_mask: np.ndarray,
    *,
    lr: float = 0.1,
    max_epochs: int = 100,
    batch_size: int = 64,
    plateau_patience: int = 1,
    early_stop_patience: int = 3,
    seed: int = 0,
) -> tuple[LinearProbe, dict[str, float]]:
    """Train a probe with SGD on masked BCE; keep the epoch with the lowest validation loss.

    x: (N, D) time-mean embeddings; y, mask: (N, C). The learning rate drops ×0.1 after
    ``plateau_patience`` epochs without improvement; training stops after
    ``early_stop_patience``. Returns the probe (eval mode, frozen) and its validation figures.
    """
    generator = torch.Generator().manual_seed(seed)
    x, y, m = (torch.as_tensor(a) for a in (train_x, train_y, train_mask))
    vx, vy, vm = (torch.as_tensor(a) for a in (valid_x, valid_y, valid_mask))
    x = x.float()
    vx = vx.float()
    std = x.std(dim=0).clamp(min=1e-6) if len(x) > 1 else torch.ones(x.shape[1])
    torch.manual_seed(seed)
    probe = LinearProbe(x.mean(dim=0), std, y.shape[1])
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.1, patience=plateau_patience
    )
    best_loss, best_state, best_epoch, bad_epochs = float("inf"), None, 0, 0
    for epoch in range(max_epochs):
        probe.train()
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = masked_bce(probe(x[idx]), y[idx], m[idx].bool())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        probe.eval()
        with torch.no_grad():
            valid_loss = masked_bce(probe(vx), vy, vm.bool()).item()
        scheduler.step(valid_loss)
        if valid_loss < best_loss:
            best_loss, best_state, best_epoch, bad_epochs = (
                valid_loss,
                copy.deepcopy(probe.state_dict()),
                epoch,
                0,
            )
        else:
            bad_epochs += 1
            if bad_epochs >= early_stop_patience:
                break
    probe.load_state_dict(best_state)
    probe.eval().requires_grad_(False)
    with torch.no_grad():
        scores = torch.sigmoid(probe(vx)).numpy()
    info = {
        "valid_loss": best_loss,
        "valid_map": mean_average_precision(scores, valid_y, valid_mask),
        "epochs": epoch + 1,
        "best_epoch": best_epoch + 1,
    }
    return probe, info
