"""The reward-vs-KL frontier: rows aggregated over seeds (means and 95% intervals), frontier.csv,
frontier.png (with error bars) and report.md."""
from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

COLUMNS = ["method", "beta", "name", "reward", "kl", "kl_k1", "length", "eos_share", "win_rate_vs_sft", "elo",
           "n_seeds", "reward_ci_low", "reward_ci_high", "kl_ci_low", "kl_ci_high", "win_rate_ci_low",
           "win_rate_ci_high"]
# t quantiles (0.975) for the 95% interval of a mean over n seeds, by n − 1 degrees of freedom
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its 95% t-interval (Student's t over the n values, n − 1
    degrees of freedom); a single value has no interval (NaN bounds)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def aggregate(runs: list[list[dict]]) -> list[dict]:
    """Each seed's evaluation rows (one list per seed, the same policies in each) as one row per
    policy: means over the seeds, with 95% intervals for reward, KL and win rate."""
    out = []
    for rows in zip(*runs):
        row = {k: rows[0][k] for k in ("name", "method", "beta")} | {"n_seeds": len(rows)}
        for key in ("reward", "kl", "kl_k1", "length", "eos_share", "win_rate_vs_sft", "elo"):
            row[key] = statistics.fmean(r[key] for r in rows)
        for key, prefix in (("reward", "reward"), ("kl", "kl"), ("win_rate_vs_sft", "win_rate")):
            _, row[f"{prefix}_ci_low"], row[f"{prefix}_ci_high"] = mean_interval([r[key] for r in rows])
        out.append(row)
    return out


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.4f}" if isinstance(r.get(k), float) else r.get(k, "")) for k in COLUMNS})


def _error(rows: list[dict], key: str, prefix: str):
    """matplotlib's (2, n) error-bar lengths from the rows' intervals (0 where there is none)."""
    low = [r[key] - r.get(f"{prefix}_ci_low", math.nan) for r in rows]
    high = [r.get(f"{prefix}_ci_high", math.nan) - r[key] for r in rows]
    return [[0.0 if math.isnan(x) else x for x in side] for side in (low, high)]


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m != "sft", m))
    for method in methods:
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["kl"])
        ax.errorbar([p["kl"] for p in pts], [p["reward"] for p in pts], xerr=_error(pts, "kl", "kl"),
                    yerr=_error(pts, "reward", "reward"), label=method, capsize=3,
                    marker="*" if method == "sft" else "o", markersize=12 if method == "sft" else 6,
                    linestyle="-" if len(pts) > 1 else "none")
        for p in pts:
            if p.get("beta") not in (None, ""):
                ax.annotate(f"{p['beta']:g}", (p["kl"], p["reward"]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
    seeds = max(r.get("n_seeds", 1) for r in rows)
    ax.set_xlabel("KL(π ‖ π_ref) per completion (nats; exact per-token KL summed)")
    ax.set_ylabel("mean ground-truth reward (held-out prompts)")
    ax.set_title(title + (f" (mean and 95% interval over {seeds} seeds)" if seeds > 1 else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _with_interval(row: dict, key: str, prefix: str, digits: int) -> str:
    low, high = row.get(f"{prefix}_ci_low", math.nan), row.get(f"{prefix}_ci_high", math.nan)
    if math.isnan(low):
        return f"{row[key]:.{digits}f}"
    return f"{row[key]:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown(rows: list[dict], samples: dict[str, list[tuple[str, str, float]]], extra: str = "") -> str:
    seeds = max(r.get("n_seeds", 1) for r in rows)
    lines = [f"| policy | method | β | reward{' [95% interval]' if seeds > 1 else ''} | KL | KL (k1) | length | EOS | "
             "win vs SFT | Elo |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        beta = "" if r.get("beta") in (None, "") else f"{r['beta']:g}"
        lines.append(f"| {r['name']} | {r['method']} | {beta} | {_with_interval(r, 'reward', 'reward', 3)} | "
                     f"{_with_interval(r, 'kl', 'kl', 2)} | {r['kl_k1']:.2f} | {r['length']:.1f} | "
                     f"{r['eos_share']:.2f} | "
                     f"{_with_interval(r, 'win_rate_vs_sft', 'win_rate', 2)} | {r['elo']:.0f} |")
    out = ["\n".join(lines), extra]
    for name, items in samples.items():
        out.append(f"\n**{name}**\n")
        for prompt, completion, reward in items:
            out.append(f"- `{prompt}` → {completion.strip()} *(reward {reward:+.2f})*")
    return "\n".join(out) + "\n"


def compare_frontiers(rows: list[dict], a: str, b: str) -> list[str]:
    """Method ``a`` against method ``b`` where their KL intervals overlap (comparable KL): which has
    the higher ground-truth reward with non-overlapping reward intervals, or undecided."""
    lines = []
    for x in (r for r in rows if r["method"] == a):
        for y in (r for r in rows if r["method"] == b):
            if x["kl_ci_low"] > y["kl_ci_high"] or y["kl_ci_low"] > x["kl_ci_high"]:
                continue   # not at a comparable KL
            if x["reward_ci_low"] > y["reward_ci_high"]:
                verdict = f"{a} higher"
            elif y["reward_ci_low"] > x["reward_ci_high"]:
                verdict = f"{b} higher"
            else:
                verdict = "undecided (reward intervals overlap)"
            lines.append(f"{x['name']} (KL {x['kl']:.1f}, reward {x['reward']:.3f}) vs {y['name']} "
                         f"(KL {y['kl']:.1f}, reward {y['reward']:.3f}): {verdict}")
    return lines
