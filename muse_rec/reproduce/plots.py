"""PNG figures of the reproduction (matplotlib, Agg backend: no display needed).

- `plot_table`: one paper table: our GAUC per row (mean +- seed std) and, beside it, the gain
  over the table's reference row, ours next to the paper's (absolute levels of synthetic and real
  data are not comparable; gaps and orderings are).
- `plot_fig5`: MUSE GAUC against the sequence length the GSU searches (log x, +- seed std),
  with DIN (which never looks past the newest 50) as a band.
- `plot_fig6`: relative GAUC gain of MUSE over DIN (%) per user-sequence-length group and per
  target-popularity group (+- seed std of the per-seed gains).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from muse_rec.data.files import OutputWriteError, tmp_name  # noqa: E402
from muse_rec.reproduce.paper import PaperTable  # noqa: E402
from muse_rec.reproduce.results import GroupGain, Stats  # noqa: E402

OURS_COLOR = "#1f77b4"
PAPER_COLOR = "#ff7f0e"
BASE_COLOR = "#7f7f7f"
DPI = 120


def _err(s: Stats) -> float:
    return s.std or 0.0


def plot_table(table: PaperTable, stats: Mapping[str, Stats], path: Path) -> Optional[Path]:
    """Two panels: our GAUC per row; gain over ``table.reference``, ours vs the paper's."""
    labels = [r.label for r in table.rows if stats.get(r.label) and stats[r.label].mean is not None]
    if not labels:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    means = [stats[k].mean for k in labels]
    ax1.bar(labels, means, yerr=[_err(stats[k]) for k in labels], color=OURS_COLOR, capsize=4)
    lo, hi = min(means), max(means)
    pad = max(hi - lo, 0.002)
    ax1.set_ylim(lo - pad, hi + pad)  # GAUCs differ in the 3rd decimal: zoom onto them
    ax1.set_ylabel("GAUC (ours, mean +- seed std)")
    ax1.set_title(f"{table.title}\nour GAUC")
    ax1.tick_params(axis="x", rotation=25)

    ref = stats.get(table.reference)
    paper = {r.label: r.paper_gauc for r in table.rows}
    others = [k for k in labels if k != table.reference]
    if ref is not None and ref.mean is not None and others:
        x = list(range(len(others)))
        ours_gap = [stats[k].mean - ref.mean for k in others]  # type: ignore[operator]
        has_paper = paper.get(table.reference) is not None and all(paper.get(k) is not None for k in others)
        width = 0.4 if has_paper else 0.6
        # Error bar: std of the difference of two independent runs, sqrt(sd_k^2 + sd_ref^2).
        gap_err = [(_err(stats[k]) ** 2 + _err(ref) ** 2) ** 0.5 for k in others]
        ax2.bar([i - (width / 2 if has_paper else 0) for i in x], ours_gap, width,
                yerr=gap_err, color=OURS_COLOR, capsize=4, label="ours (+- std of the difference)")
        if has_paper:
            ax2.bar([i + width / 2 for i in x], [paper[k] - paper[table.reference] for k in others], width,  # type: ignore[operator]
                    color=PAPER_COLOR, label=f"paper ({table.paper_setting})")
        ax2.axhline(0, color="black", lw=0.8)
        ax2.set_xticks(x, others, rotation=25)
        ax2.set_ylabel(f"GAUC - GAUC({table.reference})")
        ax2.set_title(f"gain over {table.reference}")
        ax2.legend(fontsize=7, loc="best", framealpha=0.8)
    else:
        ax2.set_axis_off()
    fig.tight_layout()
    return _save(fig, path)


def plot_fig5(lengths: Sequence[int], muse: Mapping[int, Stats], din: Optional[Stats], path: Path) -> Optional[Path]:
    """MUSE GAUC vs GSU sequence length N (log x, error bars = seed std); DIN as a band."""
    xs = [n for n in lengths if muse.get(n) and muse[n].mean is not None]
    if not xs:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.errorbar(xs, [muse[n].mean for n in xs], yerr=[_err(muse[n]) for n in xs], marker="o", capsize=4,
                color=OURS_COLOR, label="MUSE (GSU sees the newest N behaviours)")
    if din is not None and din.mean is not None:
        ax.axhline(din.mean, color=BASE_COLOR, ls="--", label="DIN (newest 50 only)")
        if din.std:
            ax.axhspan(din.mean - din.std, din.mean + din.std, color=BASE_COLOR, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(n) for n in xs])
    ax.set_xlabel("sequence length N given to the GSU")
    ax.set_ylabel("GAUC (mean +- seed std)")
    ax.set_title("Fig. 5: GAUC vs the sequence length the GSU searches")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_fig6(by_seq: List[GroupGain], by_pop: List[GroupGain], path: Path) -> Optional[Path]:
    """Relative GAUC gain (%) of MUSE over DIN by sequence-length group and popularity group."""
    if not by_seq and not by_pop:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, gains, xlabel in ((axes[0], by_seq, "user's behaviour-sequence length"),
                              (axes[1], by_pop, "target popularity (times a train target)")):
        if not gains:
            ax.set_axis_off()
            continue
        labels = [f"{g.group}\nn={g.gauc_samples}" for g in gains]
        ax.bar(labels, [g.gain_pct.mean for g in gains], yerr=[_err(g.gain_pct) for g in gains],
               color=OURS_COLOR, capsize=4)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("GAUC gain of MUSE over DIN (%)")
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("Fig. 6: relative GAUC gain of MUSE over DIN by group (mean +- seed std)")
    fig.tight_layout()
    return _save(fig, path)


def plot_fusion(qualities: Sequence[float], table: Mapping[float, Mapping[str, Stats]], labels: Sequence[str],
                path: Path) -> Optional[Path]:
    """GAUC of each method against SCL quality Q (+- standard error over seeds)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = False
    for label in labels:
        pts = [(q, table[q][label]) for q in sorted(qualities) if q in table and table[q].get(label)
               and table[q][label].mean is not None]
        if not pts:
            continue
        drawn = True
        ax.errorbar([q for q, _ in pts], [s.mean for _, s in pts],
                    yerr=[(s.std or 0.0) / max(s.n, 1) ** 0.5 for _, s in pts], marker="o", capsize=4, label=label)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("SCL quality Q (share of the multimodal vector that is signal)")
    ax.set_ylabel("test GAUC (mean +- standard error)")
    ax.set_title("ID + multimodal fusion vs MUSE and SIM-soft")
    ax.legend()
    return _save(fig, path)


def _save(fig: "plt.Figure", path: Path) -> Path:
    """Save ``fig`` whole or not at all (written beside, then renamed over an earlier figure): a full
    disk left a cut PNG under the figure's name, and a traceback. `OutputWriteError` names the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(str(path))
    try:
        fig.savefig(tmp, dpi=DPI, format=path.suffix.lstrip("."))
        os.replace(tmp, path)
    except OSError as e:
        raise OutputWriteError.naming(e, path) from None
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
