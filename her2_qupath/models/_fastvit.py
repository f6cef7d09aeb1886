"""A fused inference path for ViT classifiers.

``transformers``' ViT runs attention as separate view/transpose/matmul/softmax
steps, which in bfloat16 on CPUs spends as much time copying tensors as
multiplying them. PyTorch's ``nn.TransformerEncoderLayer`` has a fused
inference kernel (the "fast path" of ``torch._transformer_encoder_layer_fwd``)
computing the same pre-norm block. :func:`fast_vit` copies a ViT's weights into
such layers once; the result gives the same logits (to float rounding) at
about 2-3x the bf16 throughput. Used by ``classify_tiles`` in bf16.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fast_vit", "supports_fast_path"]


def supports_fast_path(network: Any) -> bool:
    """Whether ``network`` is a plain ViT classifier the fused layers reproduce exactly."""
    cfg = getattr(network, "config", None)
    vit = getattr(network, "vit", None)
    return (cfg is not None and vit is not None and getattr(cfg, "model_type", None) == "vit"
            and getattr(cfg, "hidden_act", None) == "gelu" and bool(getattr(cfg, "qkv_bias", True))
            and hasattr(vit, "layers") and hasattr(network, "classifier")
            and all(hasattr(layer, "attention") and hasattr(layer.attention, "q_proj") and hasattr(layer, "mlp")
                    for layer in vit.layers))


def fast_vit(network: Any) -> Any:
    """A module ``f(pixel_values) -> logits`` with ``network``'s weights in fused encoder layers."""
    import torch
    from torch import nn

    cfg = network.config
    dtype = next(network.parameters()).dtype

    class FastViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = network.vit.embeddings
            self.layers = nn.ModuleList()
            for layer in network.vit.layers:
                t = nn.TransformerEncoderLayer(
                    cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, dropout=0.0,
                    activation="gelu", layer_norm_eps=cfg.layer_norm_eps, batch_first=True,
                    norm_first=True, dtype=dtype)
                a = layer.attention
                with torch.no_grad():
                    t.self_attn.in_proj_weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight,
                                                                a.v_proj.weight]))
                    t.self_attn.in_proj_bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
                    t.self_attn.out_proj.load_state_dict(a.o_proj.state_dict())
                    t.linear1.load_state_dict(layer.mlp.fc1.state_dict())
                    t.linear2.load_state_dict(layer.mlp.fc2.state_dict())
                    t.norm1.load_state_dict(layer.layernorm_before.state_dict())
                    t.norm2.load_state_dict(layer.layernorm_after.state_dict())
                self.layers.append(t)
            self.layernorm = network.vit.layernorm
            self.classifier = network.classifier

        def forward(self, pixel_values: Any) -> Any:
            h = self.embeddings(pixel_values)
            for t in self.layers:
                h = t(h)
            return self.classifier(self.layernorm(h)[:, 0])

    return FastViT().eval().requires_grad_(False)
