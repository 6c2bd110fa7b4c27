"""What the FCDM and DiT families (fcdm.models.fcdm, fcdm.models.dit) share: embedders, channel LayerNorm,
adaLN modulation, zero initialisation and classifier-free guidance.

Parameter names follow the public DiT and FCDM releases so their checkpoints load strictly.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation. x: (N, T, D) with shift/scale (N, D), or x: (N, D, H, W) with (N, D)."""
    if x.dim() == 4:
        shift, scale = shift[:, :, None, None], scale[:, :, None, None]
    else:
        shift, scale = shift[:, None, :], scale[:, None, :]
    return x * (1 + scale) + shift


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of (N, C, H, W) feature maps."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        if channels_last:  # stays channels-last (a GPU model in that format): no copy either way
            return x.permute(0, 3, 1, 2)
        # Back to contiguous NCHW: left channels-last, later reductions over (H, W) such as GRN's
        # norm run ~20x slower on the CPU (bench/RESULTS.md, evaluation).
        return x.permute(0, 3, 1, 2).contiguous()


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features (256-d) -> MLP -> (N, hidden_size)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
        """t: (N,) possibly fractional timesteps -> (N, dim) cos/sin features (GLIDE's layout)."""
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels (N,) -> (N, hidden_size), with label dropout for classifier-free guidance.

    The table has num_classes + 1 rows when dropout is on; the last row is the null class.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


def zero_init(*layers: nn.Module) -> None:
    """Zero the weight and bias of each layer: adaLN-Zero's modulations and the output layer start at 0."""
    for layer in layers:
        nn.init.constant_(layer.weight, 0)
        nn.init.constant_(layer.bias, 0)


def check_guidance(model: nn.Module, cfg_scale: float) -> None:
    """Refuse classifier-free guidance (cfg_scale > 1) for a model without class input: its
    conditional and unconditional passes are identical, so guidance would only double the compute
    and a guided FID would be an unguided one under another name. (cfg_scale <= 1 is let through,
    as the config layer does: the combination is then exactly the conditional output.)"""
    if cfg_scale > 1.0 and not getattr(model, "class_conditional", True):
        raise ValueError(f"cfg_scale={cfg_scale} asks for classifier-free guidance, which needs a class-conditional "
                         f"model; this {type(model).__name__} has conditioning='unconditional' (no class input). "
                         "Sample it with cfg_scale=1.0.")


def guided_forward(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float,
                   guided_channels: int | None = None) -> torch.Tensor:
    """The models' `forward_with_cfg`: the first half of x (2N, C_in, H, W) run twice, with labels y (2N,)
    = [y; null], combined by `guided_output` on `guided_channels` (None: the model's in_channels)."""
    check_guidance(model, cfg_scale)
    half = x[: len(x) // 2]
    out = model.forward(torch.cat([half, half], dim=0), t, y)
    return guided_output(out, cfg_scale, model.in_channels if guided_channels is None else guided_channels)


def guided_output(model_out: torch.Tensor, cfg_scale: float, channels: int) -> torch.Tensor:
    """Classifier-free guidance on a doubled batch [cond; uncond] of outputs (2N, C_out, ...).

    Guidance is applied to the first `channels` output channels; the rest (learned variance, or
    the un-guided latent channel in DiT's published protocol) pass through unchanged, so a sampler
    reads them from the conditional (first) half. Returns (2N, C_out, ...), as DiT's sampler expects.
    """
    eps, rest = model_out[:, :channels], model_out[:, channels:]
    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)
