"""Attention diagnostics: how much of the response's attention reaches the context?

FocuSFT's motivation is *training-time attention dilution*: response tokens spend their
attention on sinks (the first tokens) instead of the long context. These metrics measure it.

Definitions (one sample, one layer l; docs/diagnostics.md has the full text)
---------------------------------------------------------------------------
* Queries R: the response tokens, positions q with loss_mask[q] = 1 (real tokens only).
* Keys of q: K(q) = [lo(q), hi(q)) under the chosen layout (`focusft.core.masks.AttentionLayout`):
  GLM turn blocks (as FocuSFT trains) or plain causal. lo(q) is the start of q's sample.
* Weights: a_lh(q, k) = softmax_{k in K(q)} (scale * <Q_lh(q), K_l,g(h)(k)>), with the layer's
  post-RoPE queries and keys, g(h) = h // (H / Hkv) for GQA; then the head mean
  abar_l(q, k) = (1/H) sum_h a_lh(q, k).
* Key classes (each real key is in exactly one of sink / context / response):
      sink_first = {lo}                      the first token of the sample
      sink       = {lo, ..., lo + k_s - 1}   the first k_s tokens (--sink_k, default 4)
      context    = {k : loss_mask[k] = 0} minus sink
      response   = {k : loss_mask[k] = 1} minus sink
      evidence   = context tokens overlapping the sample's evidence char spans
* Class mass of layer l:   M_l(X) = (1/|R|) sum_{q in R} sum_{k in K(q) and X} abar_l(q, k)
  reported as sink_first (sink mass, first token), sink (first-k sink mass), context (context
  engagement), response, evidence (evidence mass). sink + context + response = 1.
* Received mass: m_l(k) = (1/|R|) sum_{q in R} abar_l(q, k) (0 where q cannot see k).
  Evidence rank: rank_l = min_{e in evidence} (1 + #{c in context : m_l(c) > m_l(e)}), i.e. the
  rank of the best-attended evidence token when the context tokens are sorted by received mass
  (1 = the most attended context token; ties in the evidence's favour); evidence_rank_frac =
  rank_l / |context| (chance is about 1 / (#evidence + 1)).
* Aggregation: per-layer value = mean over samples (each sample weighs the same, whatever its
  response length; samples where a metric is undefined are skipped); the "averaged" value is
  the mean of the per-layer values over all layers.

Computation: the ``"focusft_probe"`` attention implementation computes each layer's normal
output, then reduces the response queries' attention chunk by chunk (`mass.MassCollector`), so
the peak extra memory is one chunk x keys score block of one layer; long contexts (16K+) run on
CPU. Weights are plain softmax attention: models with logit soft-capping or learned sink
logits are measured without those terms.

API
---
``measure(model, batch, mask="glm"|"causal"|AttentionLayout, sink_k=4, chunk_size=None)``
    -> `Diagnostics` (``per_sample[metric]`` (L, N), ``layer_means()``, ``averaged()``).
``MassCollector`` / ``probing(model)``: the pieces of `measure`, for custom forwards.
``render_sample(tokenizer, row, where)``: a chat row -> ids, loss mask, evidence token mask.
``DiagnosticsCallback(probe_batch, every_n_steps, out_path).attach(trainer)``: over training.

Layer 5: imports `focusft.data`, `focusft.core` and `focusft.errors`.
"""

from focusft.diagnostics.callback import DiagnosticsCallback
from focusft.diagnostics.evidence import RenderedSample, render_sample
from focusft.diagnostics.mass import (
    KEY_CLASSES,
    METRICS,
    Diagnostics,
    MassCollector,
    head_mean_weights,
    key_classes,
)
from focusft.diagnostics.probe import PROBE, batch_layout, measure, probe_attention, probing

__all__ = [
    "DiagnosticsCallback", "RenderedSample", "render_sample", "KEY_CLASSES", "METRICS",
    "Diagnostics", "MassCollector", "head_mean_weights", "key_classes", "PROBE", "batch_layout",
    "measure", "probe_attention", "probing",
]
