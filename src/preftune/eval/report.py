"""The reward-vs-KL frontier: frontier.csv, frontier.png and report.md."""
from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ["method", "beta", "name", "reward", "kl", "length", "eos_share", "win_rate_vs_sft", "elo"]


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.4f}" if isinstance(r.get(k), float) else r.get(k, "")) for k in COLUMNS})


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m != "sft", m))
    for i, method in enumerate(methods):
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["kl"])
        style = dict(marker="*" if method == "sft" else "o", markersize=14 if method == "sft" else 7,
                     linestyle="-" if len(pts) > 1 else "none")
        ax.plot([p["kl"] for p in pts], [p["reward"] for p in pts], label=method, **style)
        for p in pts:
            if p.get("beta") not in (None, ""):
                ax.annotate(f"β={p['beta']:g}", (p["kl"], p["reward"]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
    ax.set_xlabel("KL(π ‖ π_ref) per completion (nats, sampled estimate)")
    ax.set_ylabel("mean ground-truth reward (held-out prompts)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(rows: list[dict], samples: dict[str, list[tuple[str, str, float]]], extra: str = "") -> str:
    lines = ["| policy | method | β | reward | KL | length | EOS | win vs SFT | Elo |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        beta = "" if r.get("beta") in (None, "") else f"{r['beta']:g}"
        lines.append(f"| {r['name']} | {r['method']} | {beta} | {r['reward']:.3f} | {r['kl']:.2f} | {r['length']:.1f} | "
                     f"{r['eos_share']:.2f} | {r['win_rate_vs_sft']:.2f} | {r['elo']:.0f} |")
    out = ["\n".join(lines), extra]
    for name, items in samples.items():
        out.append(f"\n**{name}**\n")
        for prompt, completion, reward in items:
            out.append(f"- `{prompt}` → {completion.strip()} *(reward {reward:+.2f})*")
    return "\n".join(out) + "\n"
