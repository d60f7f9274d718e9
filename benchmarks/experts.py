"""Per-expert FFN choices against one choice shared by all experts of a layer (issue 15).

A tiny seeded Mixtral (hidden 64, 8 experts of 128 units, top-2, 2 layers) loses half of every
expert's units. Both ways keep the same number of units; the per-expert plan lets each expert keep
its own best units, the shared one keeps the same unit indices in every expert (scores summed over
the experts). Printed: the relative error of the last hidden state against the source's, on held-out
token sequences, for weight magnitude and for routed calibration statistics.

    python benchmarks/experts.py
"""

from __future__ import annotations

import torch
import transformers as T

from interprune import shrink
from interprune.preserve.expert_stats import expert_scores
from interprune.preserve.importance import magnitude_scores
from interprune.weights.shrink import plan_for


def relative_error(small, model, inputs) -> float:
    with torch.no_grad():
        a, b = small(**inputs).last_hidden_state, model(**inputs).last_hidden_state
    return float((a - b).norm() / b.norm())


def shared(plan, scores: dict) -> dict:
    """One choice per layer for all its experts: the units with the highest score summed over experts."""
    layers: dict[str, list] = {}
    for dim in plan.dimensions:
        if ".experts." in dim.name and dim.name.endswith(".ffn"):
            layers.setdefault(dim.name.split(".experts.")[0], []).append(dim)
    choices = {}
    for dims in layers.values():
        total = sum(scores[d.name] for d in dims)
        keep = torch.sort(total, descending=True, stable=True).indices[: dims[0].target].sort().values
        choices.update({d.name: keep for d in dims})
    return choices


def main() -> None:
    torch.manual_seed(0)
    config = T.MixtralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, vocab_size=200,
                             pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = T.MixtralModel(config).eval()
    gen = torch.Generator().manual_seed(1)
    calibration = {"input_ids": torch.randint(0, 200, (8, 32), generator=gen)}
    held_out = {"input_ids": torch.randint(0, 200, (8, 32), generator=gen)}
    overrides = {"intermediate_size": 64}
    plan = plan_for(model, overrides)
    for method, scores in (("magnitude", magnitude_scores(model.state_dict(), plan)),
                           ("calibrated", expert_scores(model, plan, calibration))):
        per_expert, _ = shrink(model, overrides, method, calibration=calibration if method == "calibrated" else None)
        one_choice, _ = shrink(model, overrides, "select", choices=shared(plan, scores))
        print(f"{method:<10} per-expert {relative_error(per_expert, model, held_out):.4f}   "
              f"shared {relative_error(one_choice, model, held_out):.4f}   (relative error, lower keeps more)")


if __name__ == "__main__":
    main()
