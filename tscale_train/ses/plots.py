"""Plots of a search (matplotlib, imported only when one is drawn)."""

from __future__ import annotations

import torch

from search import SearchResult


def plot_trace(search: SearchResult, path, title: str = "") -> None:
    """Best reward versus evaluations for SES, with the base noise's reward as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best_so_far = search.best_so_far()
    evaluations = torch.arange(1, len(best_so_far) + 1)
    figure, axis = plt.subplots(figsize=(5, 3.2), dpi=120)
    axis.plot(evaluations.numpy(), best_so_far.numpy(), label="SES best so far")
    axis.axhline(search.base_score, color="gray", linestyle="--", label="base noise")
    axis.set_xlabel("evaluations")
    axis.set_ylabel("reward")
    axis.set_title(title[:60])
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
