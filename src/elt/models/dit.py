"""DiT-ELT: class-conditional diffusion whose denoiser is the shared looped backbone.

DiT's layout (facebookresearch/DiT): patchify any (C, H, W) latent, add fixed 2-D sin-cos
positions (videos (C, T, H, W): tubelets of temporal_patch × p × p, the 2-D table per frame plus a
1-D one over time, as in Latte / ViViT's factorised embeddings), condition every block by adaLN-Zero
on c = timestep embedding + class embedding (null class = index num_classes, 10% label drop), then
an adaLN final layer and unpatchify. Here the blocks are ``LoopedBackbone(cond_dim=width)``: the
modulation is computed from c once per network evaluation and reused by every loop, and the final
layer is shared by every exit (ILSD's student and teacher). The process (shifted-cosine logSNR,
x0-prediction, sigmoid-weighted MSE) lives in ``elt.core.diffusion``, the solvers in
``elt.samplers.diffusion``; EMA weights live in this module's state_dict and sample by default.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from elt.core import diffusion as D
from elt.core import flops
from elt.core.backbone import LoopedBackbone, modulate
from elt.core.ema import EMA
from elt.core.positions import sincos_positions
from elt.encoders.tokenizers import Autoencoder
from elt.models.base import LoopedGenerativeModule
from elt.runtime.kernels import Linear
from elt.samplers import diffusion as sampling

TIME_FREQ_DIM = 256  # DiT's timestep sinusoid width


def timestep_embedding(t: torch.Tensor, dim: int = TIME_FREQ_DIM, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoid of t·1000 (DiT's timestep range), [cos | sin] halves."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class DiTELT(LoopedGenerativeModule):
    DEFAULT_SAMPLER = dict(
        kind="ddpm",  # ddpm (ancestral, the paper's) | ddim | dpmpp_2m | heun | euler_sde (elt.samplers.diffusion)
        steps=512,  # paper: 512 DDPM steps
        spacing="t",  # the step grid: uniform in t | logsnr
        cfg_interval=None,  # [lo, hi]: guide only evaluations whose logSNR lies inside; None = every one
        cfg_scale=3.0,  # guided = uncond + s·(cond − uncond): 1 = plain conditional, 0 = unconditional
        clip_x0=None,  # clamp x̂0 to ±clip_x0 each step (pixel data lives in [−1, 1]); None = off
        ema=True,  # sample from the EMA weights (when the model keeps them)
    )

    def __init__(
        self,
        autoencoder: Autoencoder,
        num_classes: int,
        N: int,
        Lmax: int,
        width: int,
        heads: int,
        mlp_dim: int,
        patch_size: int = 2,
        temporal_patch: int = 1,
        ilsd: dict | None = None,
        optimizer=None,
        scheduler: dict | None = None,
        label_drop: float = 0.1,
        prediction: str = "x0",
        schedule: dict | None = None,
        loss_bias: float = -2.0,
        learn_sigma: bool = False,
        ema_decay: float | None = 0.9999,
        ema_warmup: bool = True,
        sampler: dict | None = None,
        input_injection: bool = False,
        loop_embedding: bool = False,
        dropout: float = 0.0,
        checkpointing: bool = False,
        name: str = "dit_elt",
    ):
        super().__init__(N=N, Lmax=Lmax, num_classes=num_classes, ilsd=ilsd, optimizer=optimizer, scheduler=scheduler,
                         label_drop=label_drop)
        self.save_hyperparameters(logger=False, ignore=["autoencoder", "optimizer"])
        if prediction not in D.PREDICTIONS:
            raise ValueError(f"model.prediction must be one of {D.PREDICTIONS}, got {prediction!r}")
        if len(autoencoder.latent_shape) not in (3, 4):
            raise ValueError(f"model.autoencoder: latent_shape must be (C, H, W) or (C, T, H, W), "
                             f"got {tuple(autoencoder.latent_shape)}")
        c, *frames, h, w = autoencoder.latent_shape
        if patch_size < 1 or h % patch_size or w % patch_size:
            raise ValueError(f"model.patch_size ({patch_size}) must divide the latent height and width ({h}, {w})")
        if frames and (temporal_patch < 1 or frames[0] % temporal_patch):
            raise ValueError(f"model.temporal_patch ({temporal_patch}) must divide the latent frame count ({frames[0]})")
        if not frames and temporal_patch != 1:  # silently ignoring it would hide a wrong run
            raise ValueError(f"model.temporal_patch ({temporal_patch}) must be 1 for image latents (C, H, W)")
        self.autoencoder = autoencoder
        self.prediction, self.loss_bias = prediction, float(loss_bias)
        self.patch_size, self.temporal_patch, self.channels = int(patch_size), int(temporal_patch), int(c)
        self.patch = (self.temporal_patch,) * len(frames) + (self.patch_size,) * 2  # conv kernel = stride
        self.grid = tuple(n // k for n, k in zip((*frames, h, w), self.patch))
        self.schedule = self.build_schedule(dict(schedule or {}), resolution=h)
        self.sampler_defaults = {**self.DEFAULT_SAMPLER, **dict(sampler or {})}
        # learn_sigma: DiT's head also outputs a variance per channel. Our x0 loss ignores it; it is
        # offered only so that parameter counts can be compared with DiT's published models.
        self.out_channels = c * (2 if learn_sigma else 1)

        conv = nn.Conv3d if frames else nn.Conv2d
        self.patch_embed = conv(c, width, kernel_size=self.patch, stride=self.patch)
        self.register_buffer("pos_embed", sincos_positions(width, self.grid)[None], persistent=False)
        self.time_embed = nn.Sequential(nn.Linear(TIME_FREQ_DIM, width), nn.SiLU(), nn.Linear(width, width))
        self.class_embed = nn.Embedding(num_classes + 1, width)  # + null class for guidance
        self.backbone = LoopedBackbone(
            width, heads, N, mlp_dim, Lmax=Lmax, cond_dim=width, input_injection=input_injection,
            loop_embedding=loop_embedding, dropout=dropout, checkpointing=checkpointing,
        )
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.final_linear = Linear(width, math.prod(self.patch) * self.out_channels)
        self.init_weights()
        # built last, from every parameter above; None = no EMA (sampling uses the live weights)
        self.ema = EMA(self.parameters(), ema_decay, ema_warmup) if ema_decay is not None else None
        if self.ema is not None:  # every rank averages the same synced weights: DDP must not broadcast
            self._ddp_params_and_buffers_to_ignore = [f"ema.{n}" for n, _ in self.ema.named_buffers()]  # the shadow

    @staticmethod
    def build_schedule(cfg: dict, resolution: int) -> D.ShiftedCosineSchedule:
        known = {"base_resolution", "resolution", "shift", "logsnr_min", "logsnr_max"}
        if set(cfg) - known:
            raise ValueError(f"model.schedule: unknown key(s) {sorted(set(cfg) - known)}; known: {sorted(known)}")
        ends = {k: float(cfg[k]) for k in ("logsnr_min", "logsnr_max") if cfg.get(k) is not None}
        if cfg.get("shift") is not None:  # an explicit shift wins over the resolution rule
            return D.ShiftedCosineSchedule(shift=float(cfg["shift"]), **ends)
        res = int(cfg.get("resolution") or resolution)
        return D.ShiftedCosineSchedule.for_resolution(res, int(cfg.get("base_resolution") or 64), **ends)

    def init_weights(self) -> None:
        # DiT's initialisation outside the blocks (the backbone initialises its own, adaLN-Zero included)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for lin in (self.time_embed[0], self.time_embed[2]):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.class_embed.weight, std=0.02)
        for lin in (self.final_modulation[-1], self.final_linear):  # zero: the model starts at output 0
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # ---- network -----------------------------------------------------------------------------
    def condition(self, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.time_embed(timestep_embedding(t)) + self.class_embed(labels)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, tokens, prod(patch)·C_out] -> [B, C, (T,) H, W] (the learn_sigma channels, if any, are dropped)."""
        grid, patch, c, n = self.grid, self.patch, self.out_channels, len(self.grid)
        x = x.view(x.shape[0], *grid, *patch, c)
        # [B, g0.., k0.., C] -> [B, C, g0, k0, g1, k1, ..]: each grid axis next to its patch axis
        x = x.permute(0, 2 * n + 1, *(d for i in range(n) for d in (1 + i, 1 + n + i)))
        return x.reshape(x.shape[0], c, *(g * k for g, k in zip(grid, patch)))[:, : self.channels]

    def predict(self, inputs, loops: int, exits: list[int]) -> list[torch.Tensor]:
        """One evaluation: raw outputs (in ``self.prediction`` terms) at every exit."""
        h, cond = self.embed(inputs)  # the conditioning once per evaluation, reused by every loop
        return [self.readout(s, cond) for s in self.backbone(h, loops=loops, exits=exits, cond=cond)]

    def embed(self, inputs):
        h = self.patch_embed(inputs["z"]).flatten(2).transpose(1, 2) + self.pos_embed
        return h, self.condition(inputs["t"], inputs["labels"])

    def readout(self, state, cond) -> torch.Tensor:
        shift, scale = self.final_modulation(cond).chunk(2, dim=-1)
        return self.unpatchify(self.final_linear(modulate(self.final_norm(state), shift, scale)))

    def flops_per_eval(self, loops: int) -> float:
        seq, width, volume = math.prod(self.grid), self.backbone.width, math.prod(self.patch)
        patch = 2.0 * seq * self.channels * volume * width
        time_mlp = 2.0 * (TIME_FREQ_DIM * width + width * width)
        final = 2.0 * width * 2 * width + 2.0 * seq * width * volume * self.out_channels
        return self.backbone.flops(seq, loops) + patch + time_mlp + final

    def network_evals_per_sample(self, **overrides) -> int:
        """Passes of one sample: the solver's evaluations, two where guided (elt.core.flops.evaluations)."""
        return sum(p for _, p in flops.evaluations(self, overrides))

    def flops_per_exit(self) -> float:
        """The final layer once (its modulation included): what every extra exit read out costs."""
        seq, width = math.prod(self.grid), self.backbone.width
        return 2.0 * width * 2 * width + 2.0 * seq * width * math.prod(self.patch) * self.out_channels

    # ---- training ------------------------------------------------------------------------------
    def training_inputs(self, batch, generator: torch.Generator | None = None):
        with torch.no_grad():  # the autoencoder is frozen (identity for pixels, the SD VAE for latents)
            x0 = (batch["latent"] if "latent" in batch else self.autoencoder.encode(batch["image"])).float()  # shards: latents
        b, dev = x0.shape[0], x0.device
        t = torch.rand(b, generator=generator, device=dev)
        logsnr = self.schedule.logsnr(t)
        eps = torch.randn(x0.shape, generator=generator, device=dev)
        z = D.diffuse(x0, eps, logsnr)
        labels = self.drop_labels(batch["label"], generator)
        weight = D.sigmoid_loss_weight(logsnr, self.schedule.dlogsnr_dt(t), self.loss_bias)
        return {"z": z, "t": t, "labels": labels}, {"x0": x0, "z": z, "logsnr": logsnr, "weight": weight}

    def task_loss(self, pred, targets) -> torch.Tensor:
        x0_hat = D.to_x0(pred.float(), targets["z"], targets["logsnr"], self.prediction)
        return D.weighted_mse(x0_hat, targets["x0"], targets["weight"])

    def distill_loss(self, student_pred, teacher_pred, targets) -> torch.Tensor:
        """The task loss with the (stop-gradient) teacher's x̂0 as the target."""
        teacher_x0 = D.to_x0(teacher_pred.float(), targets["z"], targets["logsnr"], self.prediction)
        return self.task_loss(student_pred, {**targets, "x0": teacher_x0})

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        self.update_ema()  # here, not in on_train_batch_end: checkpoint callbacks run before that hook

    def update_ema(self) -> None:
        if self.ema is not None:
            self.ema.update(self.parameters())

    # ---- sampling ------------------------------------------------------------------------------
    def x0_of(self, out, inputs) -> torch.Tensor:
        """A raw output as x̂0 for its inputs: guidance is linear, so combining x̂0 equals combining ε̂ or v̂."""
        return D.to_x0(out.float(), inputs["z"], self.schedule.logsnr(inputs["t"]), self.prediction)

    def ema_weights(self, enabled: bool = True):
        """Context in which the parameters hold the EMA weights (a no-op without EMA)."""
        return self.ema.applied(self.parameters()) if enabled and self.ema is not None else nullcontext()

    def sample(self, labels: torch.Tensor, loops, generator: torch.Generator | None = None,
               progress: bool = False, early_exit=None, stats: dict | None = None, **overrides) -> torch.Tensor:
        """Samples from pure noise with the configured solver (elt.samplers.diffusion.sample)."""
        return sampling.sample(self, labels, loops, generator=generator, progress=progress,
                               early_exit=early_exit, stats=stats, **overrides)
