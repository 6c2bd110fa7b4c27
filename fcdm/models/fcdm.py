"""FCDM: the U-shaped, fully convolutional ConvNeXt denoiser (Kwon et al., CVPR 2026).

Layout, initialisation and parameter names follow the public release (star-kwon/FCDM
`models/fcdm_models.py`), so its checkpoints load with `load_state_dict(strict=True)`.
Every choice the ablations vary is a constructor argument (README, "Models"); the presets, the allowed
values and their checks live in fcdm.models.registry, and fcdm.models builds a preset by name.
"""
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from fcdm.models.layers import (
    LabelEmbedder,
    LayerNorm2d,
    TimestepEmbedder,
    guided_forward,
    modulate,
    zero_init,
)
from fcdm.models.registry import BLOCK_CONDITIONING, check_choice, check_fcdm_arguments

#################################################################################
#                                 Core FCDM layers                              #
#################################################################################

class GRN(nn.Module):
    """ConvNeXt-V2 global response normalisation over (N, C, H, W); gamma, beta zero-initialised."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=(2, 3), keepdim=True)  # fp32 under autocast
        # Cast back to x's dtype: under bf16 autocast the (N, 3C, H, W) products would otherwise be fp32
        # (twice the memory and traffic); the casts do nothing in fp32.
        nx = (gx / (gx.mean(dim=1, keepdim=True) + 1e-6)).to(x.dtype)
        return self.gamma.to(x.dtype) * (x * nx) + self.beta.to(x.dtype) + x


class FCDMBlock(nn.Module):
    """Depthwise k x k conv -> LayerNorm -> conditioning -> 1x1 (r*D) -> GELU -> GRN -> 1x1 (D) -> residual.

    x: (N, D, H, W); c: (N, cond_dim). `conditioning` picks how c enters the block:
    adaln-zero (shift, scale and a gate, zero-initialised), adaln (shift and scale, no gate),
    additive (a projection of c added after the depthwise conv).
    """

    def __init__(self, dim: int, cond_dim: int, mlp_ratio: float = 3.0, kernel_size: int = 7,
                 grn: bool = True, conditioning: str = "adaln-zero"):
        super().__init__()
        check_choice("conditioning", conditioning, BLOCK_CONDITIONING)
        self.conditioning = conditioning
        hidden = int(dim * mlp_ratio)
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=kernel_size // 2, groups=dim)
        # Without modulation the norm would lose its scale and shift, so it keeps its own affine.
        self.norm = LayerNorm2d(dim, eps=1e-6, affine=conditioning == "additive")
        self.pwconv1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.grn = GRN(hidden) if grn else nn.Identity()
        self.pwconv2 = nn.Conv2d(hidden, dim, 1)
        if conditioning in ("adaln-zero", "adaln"):
            chunks = 3 if conditioning == "adaln-zero" else 2
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, chunks * dim, bias=True))
        elif conditioning == "additive":
            self.cond_proj = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, dim, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x)
        gate = None
        if self.conditioning == "additive":
            h = h + self.cond_proj(c)[:, :, None, None]
        h = self.norm(h)
        if self.conditioning == "adaln-zero":
            shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=1)
            h = modulate(h, shift, scale)
        elif self.conditioning == "adaln":
            shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
            h = modulate(h, shift, scale)
        h = self.pwconv2(self.grn(self.act(self.pwconv1(h))))
        if gate is not None:
            h = h * gate[:, :, None, None]
        return x + h


class ConvFinalLayer(nn.Module):
    """LayerNorm -> adaLN shift/scale from c -> 3x3 conv to out_channels. (N, D, H, W) -> (N, C_out, H, W)."""

    def __init__(self, hidden_size: int, cond_dim: int, out_channels: int):
        super().__init__()
        self.norm = LayerNorm2d(hidden_size, affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * hidden_size, bias=True))
        self.conv = nn.Conv2d(hidden_size, out_channels, kernel_size=3, stride=1, padding=1, bias=True)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.conv(modulate(self.norm(x), shift, scale))


class Downsample(nn.Module):
    """3x3 conv (no bias) to out_ch/4, then PixelUnshuffle(2): (N, in, H, W) -> (N, out, H/2, W/2)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_ch, out_ch // 4, 3, 1, 1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """3x3 conv (no bias) to 4*out_ch, then PixelShuffle(2): (N, in, H, W) -> (N, out, 2H, 2W)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_ch, out_ch * 4, 3, 1, 1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


#################################################################################
#                                   FCDM model                                  #
#################################################################################

class FCDM(nn.Module):
    """Fully convolutional diffusion model over (N, in_channels, H, W) latents, H and W divisible by 4.

    hidden_size: width C of level 1 (levels 2 and 3 use 2C and 4C).
    depth: blocks per stage, [enc1, enc2, mid, dec2, dec1].
    conditioning: how c enters the blocks (see FCDMBlock); "unconditional" builds no class embedders,
        ignores y and conditions adaLN-Zero blocks on the timestep alone.
    shared_embedders: one timestep/class embedder of width C feeding every level, instead of the
        paper's per-level embedders of widths C, 2C, 4C.
    label_dropout: "per-level" (each level's class embedder drops labels independently with
        probability class_dropout_prob, as the public release does) or "joint" (one draw per sample
        drops them at every level, so the all-null input guidance uses is trained with probability p
        whatever the number of levels).
    """

    def __init__(self, in_channels: int = 4, hidden_size: int = 128, depth=(2, 4, 8, 4, 2),
                 mlp_ratio: float = 3.0, kernel_size: int = 7, grn: bool = True,
                 conditioning: str = "adaln-zero", shared_embedders: bool = False,
                 class_dropout_prob: float = 0.1, num_classes: int = 1000, learn_sigma: bool = True,
                 gradient_checkpointing: bool = False, label_dropout: str = "per-level"):
        super().__init__()
        check_fcdm_arguments(conditioning, label_dropout, class_dropout_prob, kernel_size, depth, hidden_size,
                             mlp_ratio)
        depth = list(depth)
        self.in_channels = in_channels
        self.learn_sigma = learn_sigma
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.num_classes = num_classes
        self.conditioning = conditioning
        self.class_conditional = conditioning != "unconditional"
        self.class_dropout_prob = class_dropout_prob
        self.label_dropout = label_dropout
        self.shared_embedders = shared_embedders
        self.gradient_checkpointing = gradient_checkpointing
        widths = [hidden_size, 2 * hidden_size, 4 * hidden_size]
        block_conditioning = "adaln-zero" if conditioning == "unconditional" else conditioning

        # A level's embedders exist only if something reads them (level 1 always: the final layer),
        # so DDP never sees parameters without gradients, e.g. for depth [1, 0, 1, 0, 1].
        used = [True, depth[1] + depth[3] > 0, depth[2] > 0]
        emb_widths = [(0, hidden_size)] if shared_embedders else [(i, w) for i, w in enumerate(widths) if used[i]]
        for i, w in emb_widths:
            suffix = "" if shared_embedders else f"_{i + 1}"
            setattr(self, f"t_embedder{suffix}", TimestepEmbedder(w))
            if self.class_conditional:
                setattr(self, f"y_embedder{suffix}", LabelEmbedder(num_classes, w, class_dropout_prob))
        cond_dims = [hidden_size] * 3 if shared_embedders else widths

        def stage(level: int, n: int) -> nn.ModuleList:
            return nn.ModuleList(FCDMBlock(widths[level], cond_dims[level], mlp_ratio, kernel_size, grn,
                                           block_conditioning) for _ in range(n))

        self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=3, stride=1, padding=1)
        self.encoder_level_1 = stage(0, depth[0])
        self.down1_2 = Downsample(widths[0], widths[1])
        self.encoder_level_2 = stage(1, depth[1])
        self.down2_3 = Downsample(widths[1], widths[2])
        self.latent = stage(2, depth[2])
        self.up3_2 = Upsample(widths[2], widths[1])
        self.reduce_chans_2 = nn.Conv2d(2 * widths[1], widths[1], kernel_size=1)
        self.decoder_level_2 = stage(1, depth[3])
        self.up2_1 = Upsample(widths[1], widths[0])
        self.reduce_chans_1 = nn.Conv2d(2 * widths[0], widths[0], kernel_size=1)
        self.decoder_level_1 = stage(0, depth[4])
        self.output_layer = nn.Conv2d(hidden_size, hidden_size, kernel_size=3, stride=1, padding=1)
        self.final_layer = ConvFinalLayer(hidden_size, cond_dims[0], self.out_channels)
        self.initialize_weights(block_conditioning)

    def _embedders(self, kind: str) -> list[nn.Module]:
        names = [f"{kind}_embedder"] if self.shared_embedders else [f"{kind}_embedder_{i}" for i in (1, 2, 3)]
        return [getattr(self, n) for n in names if hasattr(self, n)]

    def initialize_weights(self, conditioning: str) -> None:
        def _basic_init(module):
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        self.apply(_basic_init)
        # The stem is initialised like a Linear over its flattened kernel, as in the release.
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for emb in self._embedders("y"):
            nn.init.normal_(emb.embedding_table.weight, std=0.02)
        for emb in self._embedders("t"):
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity. DiT's "adaLN" keeps its xavier init.
        if conditioning == "adaln-zero":
            for block in self.blocks():
                zero_init(block.adaLN_modulation[-1])
        zero_init(self.final_layer.adaLN_modulation[-1], self.final_layer.conv)

    def blocks(self) -> list[FCDMBlock]:
        return [*self.encoder_level_1, *self.encoder_level_2, *self.latent,
                *self.decoder_level_2, *self.decoder_level_1]

    def joint_drop_ids(self, y: torch.Tensor) -> torch.Tensor | None:
        """With label_dropout="joint" in training: one Bernoulli(p) draw per sample, (N,) long (1 = use
        the null class), shared by every level's class embedder. None otherwise (per-level dropout, or
        eval, or p = 0), so the per-level path draws exactly what the public release draws."""
        if not (self.training and self.class_conditional and self.label_dropout == "joint"
                and self.class_dropout_prob > 0):
            return None
        return (torch.rand(y.shape[0], device=y.device) < self.class_dropout_prob).long()

    def conditioning_vectors(self, t: torch.Tensor, y: torch.Tensor | None) -> list[torch.Tensor | None]:
        """t: (N,), y: (N,) -> [c1 (N, C), c2 (N, 2C), c3 (N, 4C)] (all (N, C) with shared embedders;
        None for a level whose blocks do not read it). y is ignored (may be None) when unconditional."""
        if self.class_conditional and y is None:
            raise ValueError("this FCDM is class-conditional: pass labels y (N,) long, num_classes for the "
                             "null class; only conditioning='unconditional' runs without labels")
        suffixes = [""] if self.shared_embedders else ["_1", "_2", "_3"]
        drop_ids = self.joint_drop_ids(y) if self.class_conditional else None
        out = []
        for suffix in suffixes:
            t_emb = getattr(self, f"t_embedder{suffix}", None)
            c = None if t_emb is None else t_emb(t)
            if c is not None and self.class_conditional:
                c = c + getattr(self, f"y_embedder{suffix}")(y, self.training, force_drop_ids=drop_ids)
            out.append(c)
        return out * 3 if self.shared_embedders else out

    def _run_stage(self, stage: nn.ModuleList, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for block in stage:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, c, use_reentrant=False)
            else:
                h = block(h, c)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, C_in, H, W), t: (N,) timesteps, y: (N,) labels (None when unconditional) -> (N, C_out, H, W)."""
        c1, c2, c3 = self.conditioning_vectors(t, y)
        enc1 = self._run_stage(self.encoder_level_1, self.x_embedder(x), c1)
        enc2 = self._run_stage(self.encoder_level_2, self.down1_2(enc1), c2)
        mid = self._run_stage(self.latent, self.down2_3(enc2), c3)
        dec2 = self.reduce_chans_2(torch.cat([self.up3_2(mid), enc2], dim=1))
        dec2 = self._run_stage(self.decoder_level_2, dec2, c2)
        dec1 = self.reduce_chans_1(torch.cat([self.up2_1(dec2), enc1], dim=1))
        dec1 = self._run_stage(self.decoder_level_1, dec1, c1)
        return self.final_layer(self.output_layer(dec1), c1)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float,
                         guided_channels: int | None = None) -> torch.Tensor:
        """Classifier-free guidance on a batch [x; x] with labels [y; null]. x: (2N, C_in, H, W).

        guided_channels=None guides every predicted channel (in_channels); DiT's published
        numbers used 3 (of 4 latent channels). An unconditional FCDM refuses cfg_scale > 1.
        """
        return guided_forward(self, x, t, y, cfg_scale, guided_channels)
