r"""First-token attention (the attention sink) of a pretrained LM, per layer, on plain text.

For rows x_0..x_{S-1} (x_0 the BOS token), layer l, head-mean attention abar_l(q, k) under the
causal mask (`focusft.diagnostics.measure`, queries q = 1..S-1, i.e. every token but the first):

    first_l   = mean over rows of  (1 / (S-1)) sum_{q=1}^{S-1} abar_l(q, 0)
    uniform   = (1 / (S-1)) sum_{q=1}^{S-1} 1 / (q + 1)      (what q puts on key 0 if it spreads
                                                             its attention evenly over k <= q)
    ratio_l   = first_l / uniform

``ratio_l`` = 1 means no sink; the issue's target is ratio >= 20 in the middle layers (all but
the first and the last). ``middle_ratio`` is the mean of ratio_l over those layers.
"""

from __future__ import annotations

import torch


def probe_batch(rows: list[list[int]]) -> dict:
    """A measure() batch from equal-length rows: every token but the first is a query."""
    ids = torch.tensor(rows)
    loss_mask = torch.ones_like(ids, dtype=torch.bool)
    loss_mask[:, 0] = False
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": loss_mask}


def uniform_share(seq_len: int) -> float:
    """Mean over queries 1..S-1 of 1 / (q + 1).

    >>> round(uniform_share(3), 4)  # (1/2 + 1/3) / 2
    0.4167
    """
    return sum(1 / (q + 1) for q in range(1, seq_len)) / (seq_len - 1)


def first_token_ratio(model, rows: list[list[int]]) -> dict:
    """{"first": [per layer], "ratio": [per layer], "middle_ratio": float, "uniform": float}."""
    from focusft.diagnostics import measure

    batch = probe_batch(rows)
    diag = measure(model, batch, mask="causal", sink_k=1)
    first = diag.layer_means()["sink_first"]
    uniform = uniform_share(batch["input_ids"].shape[1])
    ratio = [f / uniform for f in first]
    middle = ratio[1:-1] if len(ratio) > 2 else ratio
    return {"first": [round(f, 5) for f in first], "ratio": [round(r, 2) for r in ratio],
            "middle_ratio": round(sum(middle) / len(middle), 2), "uniform": round(uniform, 6)}


def plot_history(history: list[dict], path, title: str) -> None:
    """Sink ratio per layer over pretraining steps (one line per layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    for layer in range(len(history[0]["ratio"])):
        ax.plot(steps, [h["ratio"][layer] for h in history], marker=".", label=f"layer {layer}")
    ax.axhline(20, color="grey", linestyle=":", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("first-token mass / uniform share")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
