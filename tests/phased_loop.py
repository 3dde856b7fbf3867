"""The training loop the Profiler's docstring shows, for tests in every folder: ``prof.watch``,
``prof.loader`` and the three phase blocks around a cross-entropy step."""

import torch


def train_phased(prof, model, opt, batches, device=None) -> None:
    """Run ``prof`` over one pass of ``batches`` (pairs of inputs and class labels); with ``device``, each
    batch is copied there in an ``h2d`` phase first."""
    with prof:
        prof.watch(model, opt)
        for x, y in prof.loader(batches):
            if device is not None:
                with prof.phase("h2d"):
                    x, y = x.to(device), y.to(device)
            with prof.phase("forward"):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            with prof.phase("backward"):
                loss.backward()
            with prof.phase("optimizer"):
                opt.step()
                opt.zero_grad()
