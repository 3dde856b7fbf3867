"""A script that uses tbdprof itself: its own Profiler, phases and steps win over
the automatic ones (even after a warm-up forward that woke the automatic recorder)."""

import torch
import torch.nn.functional as F

import tbdprof

STEPS = 4
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
model(torch.randn(2, 32)).sum().backward()  # warm-up, before the profiler starts
batches = [(torch.randn(8, 32), torch.randint(0, 4, (8,))) for _ in range(STEPS)]

with tbdprof.Profiler(metadata={"explicit": True}) as prof:
    for x, y in prof.loader(batches):
        with prof.phase("my_forward"):
            loss = F.cross_entropy(model(x), y)
        with prof.phase("backward"):
            optimizer.zero_grad()
            loss.backward()
        with prof.phase("optimizer"):
            optimizer.step()
print(f"rank 0 steps {STEPS}", flush=True)
