"""A3C (Mnih et al., 2016): asynchronous advantage actor-critic with Hogwild updates.

Mapping onto ranks: every tbdprof rank is one actor-learner process. The
actor-learners of a host share one model in shared memory: on the first
step the host's first rank copies the (broadcast, hence identical) initial weights
into a file in ``/dev/shm``, every local rank maps it and points its
parameters into it, and from then on each process runs its own
environments, computes gradients on its own and applies them to the shared
weights without locks (Hogwild); ``model.share_memory()`` does the same for a
single process. The engine's synchronous wrapper (DDP) is bypassed. Hosts do
not exchange weights: each host is one A3C instance, all started from the
same weights; a multi-host run measures N independent A3C hosts side by side.

The environment is a maze written here (no gym): levels (walls, start,
goal) come from the on-disk data set, the agent sees stacked grey frames
rendered from the grid, as an Atari agent does. The ``full`` network is the
A3C feed-forward Atari network: 84x84x4 input, conv 16 8x8/4, conv 32 4x4/2,
fc 256, a softmax policy over Atari's full 18-action set (actions past the
maze's five repeat them, as Atari's redundant actions do) and a value.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ._dist import unwrap
from .base import Preset, Workload
from .data import ShardDataset, write_shards
from .registry import register
from .train import UsageError

T_MAX = 20  # environment steps per update (n-step returns)
GAMMA, ENTROPY, VALUE, MAX_GRAD_NORM = 0.99, 0.01, 0.5, 40.0
MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])  # stay, up, down, left, right
WALL, GOAL, AGENT = 0.5, 1.0, 0.75  # grey levels of the rendered frame


class ActorCritic(nn.Module):
    def __init__(self, frames: int = 4, size: int = 84, hidden: int = 256, actions: int = 18):
        super().__init__()
        self.frames, self.size = frames, size
        self.conv1 = nn.Conv2d(frames, 16, 8, stride=4)
        self.conv2 = nn.Conv2d(16, 32, 4, stride=2)
        side = ((size - 8) // 4 + 1 - 4) // 2 + 1
        self.fc = nn.Linear(32 * side * side, hidden)
        self.policy = nn.Linear(hidden, actions)
        self.value = nn.Linear(hidden, 1)

    def forward(self, obs):
        """Observations [B, frames, size, size] -> (action logits, state values)."""
        x = F.relu(self.fc(F.relu(self.conv2(F.relu(self.conv1(obs)))).flatten(1)))
        return self.policy(x), self.value(x).squeeze(1)


class Mazes:
    """A batch of maze environments stepping together; an ended episode restarts from its slot's next level."""

    def __init__(self, levels: list[np.ndarray], size: int, frames: int):
        n, grid = levels[0].shape[:2]
        self.scale, self.max_t = size // grid, 4 * grid
        self.walls = np.zeros((n, grid, grid), dtype=bool)
        self.pos = np.zeros((n, 2), dtype=np.int64)
        self.goal = np.zeros((n, 2), dtype=np.int64)
        self.t = np.zeros(n, dtype=np.int64)
        self.stack = np.zeros((n, frames, size, size), dtype=np.float32)
        self.next_levels = levels
        self.reset(np.ones(n, dtype=bool))

    def reset(self, which: np.ndarray) -> None:
        walls, start, goal = self.next_levels
        self.walls[which], self.pos[which], self.goal[which], self.t[which] = walls[which], start[which], goal[which], 0
        self.stack[which] = self._render()[which, None]

    def _render(self) -> np.ndarray:
        n, g, _ = self.walls.shape
        frame = np.where(self.walls, WALL, 0.0).astype(np.float32)
        rows = np.arange(n)
        frame[rows, self.goal[:, 0], self.goal[:, 1]] = GOAL
        frame[rows, self.pos[:, 0], self.pos[:, 1]] = AGENT
        return frame.repeat(self.scale, axis=1).repeat(self.scale, axis=2)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move every agent; returns (rewards, done) and restarts the finished episodes."""
        target = self.pos + MOVES[actions % len(MOVES)]
        free = ~self.walls[np.arange(len(target)), target[:, 0], target[:, 1]]
        self.pos = np.where(free[:, None], target, self.pos)
        self.t += 1
        reached = (self.pos == self.goal).all(1)
        done = reached | (self.t >= self.max_t)
        self.stack = np.concatenate([self.stack[:, 1:], self._render()[:, None]], axis=1)
        if done.any():
            self.reset(done)
        return np.where(reached, 1.0, -0.01).astype(np.float32), done

    def observe(self, device) -> torch.Tensor:
        return torch.from_numpy(self.stack).to(device)


def share_parameters(net: nn.Module) -> None:
    """Put ``net``'s parameters in memory shared by the actor-learners of this host."""
    params = list(net.parameters())
    if params[0].device.type != "cpu":
        raise UsageError("a3c runs on the CPU (--device cpu): its actor-learners share host memory")
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        net.share_memory()
        return
    flat = nn.utils.parameters_to_vector(params).detach().cpu()
    key = [uuid.uuid4().hex]
    dist.broadcast_object_list(key, src=0)
    hosts = [None] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    host = hosts[dist.get_rank()]
    first_on_host = hosts.index(host) == dist.get_rank()
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    path = Path(folder) / f"tbdprof-a3c-{key[0]}-{host}"
    if first_on_host:
        tmp = path.with_suffix(".tmp")
        flat.numpy().tofile(tmp)
        os.rename(tmp, path)
    dist.barrier()
    shared = torch.from_file(str(path), shared=True, size=flat.numel(), dtype=flat.dtype)
    dist.barrier()
    if first_on_host:
        path.unlink()  # the mappings live on until every process exits
    for p, chunk in zip(params, shared.split([p.numel() for p in params])):
        p.data = chunk.view_as(p)


def level_fields(grid: int) -> dict:
    return {"walls": {"dtype": "uint8", "shape": [grid, grid]}, "start": {"dtype": "int64", "shape": [2]}, "goal": {"dtype": "int64", "shape": [2]}}


def write_levels(root: Path, grid: int, samples: int, seed: int) -> None:
    """Random mazes (walled border, 25% inner walls) with a corridor carved from start to goal."""

    def make(i: int):
        r = np.random.default_rng((seed, i))
        walls = r.random((grid, grid)) < 0.25
        walls[[0, -1], :] = walls[:, [0, -1]] = True
        start, goal = r.integers(1, grid - 1, size=(2, 2))
        (y0, x0), (y1, x1) = start, goal
        walls[min(y0, y1) : max(y0, y1) + 1, x0] = False
        walls[y1, min(x0, x1) : max(x0, x1) + 1] = False
        return {"walls": walls.astype(np.uint8), "start": start, "goal": goal}

    write_shards(root, level_fields(grid), samples, make, extra={"seed": seed})


def augment(rec, i: int):
    """Levels are transposed at random (a maze and its mirror image are equally hard)."""
    walls, start, goal = rec["walls"].astype(bool), rec["start"].copy(), rec["goal"].copy()
    if np.random.default_rng((i, torch.initial_seed() % 2**32)).random() < 0.5:
        walls, start, goal = walls.T.copy(), start[::-1].copy(), goal[::-1].copy()
    return torch.from_numpy(walls), torch.from_numpy(start), torch.from_numpy(goal)


@register
class A3C(Workload):
    name = "a3c"
    domain = "reinforcement learning"
    unit = "frames"
    phases = ("env_step", "forward", "backward", "optimizer")
    engines = ("ddp",)
    engines_reason = ("its actor-learners update weights shared in host memory, with no gradient allreduce; "
                      "Horovod's DistributedOptimizer would make them synchronous")
    presets = {
        "tiny": Preset(model=dict(frames=2, size=40, hidden=64, actions=5), batch_size=4, samples=256, lr=7e-4, data=dict(grid=10)),
        "small": Preset(model=dict(frames=4, size=60, hidden=128, actions=5), batch_size=4, samples=1024, lr=7e-4, data=dict(grid=15)),
        "full": Preset(model=dict(frames=4, size=84, hidden=256, actions=18), batch_size=1, samples=4096, lr=7e-4, data=dict(grid=21)),
    }
    reference_params = {"full": 681_027}
    reference_source = "A3C feed-forward Atari network (Mnih et al. 2016; network of Mnih et al. 2013), 18 actions, counted from that layout"

    def __init__(self):
        self._envs: Mazes | None = None

    def build_model(self, preset: Preset) -> nn.Module:
        return ActorCritic(**preset.model)

    def write_dataset(self, root: Path, preset: Preset, seed: int) -> None:
        write_levels(root, preset.data["grid"], preset.samples, seed)

    def dataset(self, root: Path, preset: Preset, train: bool = True):
        return ShardDataset(root, level_fields(preset.data["grid"]), augment)

    def optimizer(self, model, preset):
        return torch.optim.RMSprop(model.parameters(), lr=preset.lr, alpha=0.99, eps=0.1)

    def batch_units(self, batch) -> int:
        """Environment frames the step played: ``T_MAX`` per environment."""
        return T_MAX * len(batch[0])

    def loss(self, model, batch):
        """Actor-critic loss of one ``T_MAX``-step rollout from the batch's levels."""
        return self._rollout(unwrap(model), batch, lambda name: contextlib.nullcontext())

    def _rollout(self, net, batch, phase) -> torch.Tensor:
        levels = [t.cpu().numpy() for t in batch]
        if self._envs is None:  # this process's environments, started on first use
            self._envs = Mazes(levels, net.size, net.frames)
        envs = self._envs
        envs.next_levels = levels
        device = next(net.parameters()).device
        log_probs, values, entropies, rewards, dones = [], [], [], [], []
        for _ in range(T_MAX):
            with phase("forward"):
                logits, value = net(envs.observe(device))
                dist = torch.distributions.Categorical(logits=logits)
                action = dist.sample()
            with phase("env_step"):
                reward, done = envs.step(action.cpu().numpy())
            log_probs.append(dist.log_prob(action))
            values.append(value)
            entropies.append(dist.entropy())
            rewards.append(torch.from_numpy(reward).to(device))
            dones.append(torch.from_numpy(done).to(device))
        with phase("forward"), torch.no_grad():
            ret = net(envs.observe(device))[1]
        loss = 0.0
        for t in reversed(range(T_MAX)):
            ret = rewards[t] + GAMMA * ret * (~dones[t])
            advantage = ret - values[t]
            loss = loss - (log_probs[t] * advantage.detach()).mean() + VALUE * advantage.pow(2).mean() - ENTROPY * entropies[t].mean()
        return loss / T_MAX

    def train_step(self, model, optimizer, batch, phase, average_gradients) -> bool:
        net = unwrap(model)  # asynchronous: no gradient allreduce
        if self._envs is None:
            share_parameters(net)
        loss = self._rollout(net, batch, phase)
        with phase("backward"):
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), MAX_GRAD_NORM)
        with phase("optimizer"):
            optimizer.step()  # lock-free update of the shared weights
            optimizer.zero_grad(set_to_none=True)
        return True
