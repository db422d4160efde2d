"""The reference notes' RL illustration, solved with preftune's own PPO pieces.

A cat on a 4×4 grid. Each step it moves up, down, left or right (a move off the grid leaves it in
place). Moving to an empty cell gives 0, onto the broom −1, into the bathtub −10 (the cat faints:
the episode ends), onto the meat +100 (the episode ends). A small policy/value network is trained
with the same ``gae``, ``policy_loss`` and ``value_loss`` functions as the language-model PPO
recipe — the textbook pieces, nothing specific to text.

    python examples/gridworld_ppo.py
"""
from __future__ import annotations

import torch
from torch import nn

from preftune.losses.ppo import gae, policy_loss, value_loss, whiten

SIZE = 4
START, MEAT, BATHTUB, BROOMS = (0, 0), (3, 3), (1, 1), {(2, 1), (1, 3)}
MOVES = [(-1, 0), (1, 0), (0, -1), (0, 1)]
MAX_STEPS = 16


def step(cell, action):
    """(next cell, reward, done)."""
    r, c = cell[0] + MOVES[action][0], cell[1] + MOVES[action][1]
    nxt = (r, c) if 0 <= r < SIZE and 0 <= c < SIZE else cell
    if nxt == MEAT:
        return nxt, 100.0, True
    if nxt == BATHTUB:
        return nxt, -10.0, True
    return nxt, (-1.0 if nxt in BROOMS else 0.0), False


class PolicyValue(nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(SIZE * SIZE, hidden), nn.Tanh())
        self.pi, self.v = nn.Linear(hidden, 4), nn.Linear(hidden, 1)

    def forward(self, cells: torch.Tensor):
        h = self.body(nn.functional.one_hot(cells, SIZE * SIZE).float())
        return torch.log_softmax(self.pi(h), -1), self.v(h).squeeze(-1)


def rollout(net: PolicyValue, episodes: int, gen: torch.Generator):
    """Batched episodes as (B, T) tensors: states, actions, log-probs, values, rewards, mask."""
    cells = [START] * episodes
    done = [False] * episodes
    cols = {k: [] for k in ("state", "action", "logp", "value", "reward", "mask")}
    with torch.no_grad():
        for _ in range(MAX_STEPS):
            state = torch.tensor([r * SIZE + c for r, c in cells])
            logp, value = net(state)
            action = torch.multinomial(logp.exp(), 1, generator=gen).squeeze(-1)
            rewards, mask = [], []
            for i in range(episodes):
                mask.append(0.0 if done[i] else 1.0)
                if done[i]:
                    rewards.append(0.0)
                    continue
                cells[i], reward, done[i] = step(cells[i], int(action[i]))
                rewards.append(reward / 100.0)          # scale returns to O(1) for the value loss
            for k, v in zip(cols, (state, action, logp.gather(1, action[:, None]).squeeze(1), value,
                                   torch.tensor(rewards), torch.tensor(mask))):
                cols[k].append(v)
    return {k: torch.stack(v, 1) for k, v in cols.items()}


def train(iterations: int = 60, episodes: int = 64, seed: int = 0, lr: float = 3e-3) -> PolicyValue:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = PolicyValue()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(iterations):
        batch = rollout(net, episodes, gen)
        adv, returns = gae(batch["reward"], batch["value"], batch["mask"], gamma=0.95, lam=0.95)
        adv = whiten(adv, batch["mask"])
        for _ in range(4):                                  # PPO epochs over the batch
            logp_all, value = net(batch["state"])
            logp = logp_all.gather(2, batch["action"][..., None]).squeeze(-1)
            pg, _ = policy_loss(logp, batch["logp"], adv, clip=0.2)
            vl = value_loss(value, batch["value"], returns, clip=0.2)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
            m = batch["mask"]
            loss = ((pg + 0.5 * vl - 0.01 * entropy) * m).sum() / m.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


def greedy_path(net: PolicyValue):
    """Follow the arg-max action from the start: (cells visited, total reward, reached the meat)."""
    cell, path, total = START, [START], 0.0
    with torch.no_grad():
        for _ in range(MAX_STEPS):
            logp, _ = net(torch.tensor([cell[0] * SIZE + cell[1]]))
            cell, reward, done = step(cell, int(logp.argmax()))
            path.append(cell)
            total += reward
            if done:
                break
    return path, total, cell == MEAT


if __name__ == "__main__":
    net = train()
    path, total, reached = greedy_path(net)
    print(f"greedy path: {' → '.join(map(str, path))}\nreturn {total:+.0f}; reached the meat: {reached}")
