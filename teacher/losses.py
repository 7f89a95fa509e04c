"""Stage one's loss: the model's own latent term plus terms on the decoded one-step result.

    L = latent_weight    * L_model                       flow matching | latent MSE (hypir)
      + pixel_mse_weight * || D(z_hat) - D(z_target) ||^2
      + l1_weight        * || D(z_hat) - D(z_target) ||_1
      + hist_weight      * W1(D(z_hat), D(z_target))        colour histograms: per image and channel
      + ssim_weight      * (1 - SSIM(D(z_hat), D(z_target)))
      + lpips_weight     * LPIPS_net(D(z_hat), D(z_target))        net: vgg (HYPIR) | alex
      + gan.weight       * L_gan_G(Disc(D(z_hat), D(z_in)))         after gan.warmup_steps
    L_disc = L_gan_D(Disc(D(z_target), D(z_in)), Disc(D(z_hat), D(z_in)))

D is the codec's decoder. HYPIR's stage-one recipe is latent_weight 0, pixel_mse_weight 1,
lpips_weight 5 (vgg), gan.weight 0.5 with a frozen OpenCLIP ConvNeXt and trainable heads (BCE,
real label 0.8), at learning rate 1e-5: see configs/hypir_sd21.yaml. Differences from HYPIR: the
real pixels are the decoded target latents (the pairs are cached as latents), and the
discriminator is conditioned on the decoded input, as the distillation's is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

from core.config import Config
from core.discriminators import OpenCLIPDiscriminator
from core.gan import gan_d_loss, gan_g_loss
from core.perceptual import load_lpips
from core.trainer import Phase, make_optimizer


def histogram_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Colour-histogram distance of (B, 3, H, W) images: the 1-D Wasserstein-1 distance between the
    value distributions of each channel of each image (the mean |sorted x - sorted y|), averaged.
    Blind to where a colour is, so it asks for the edit's tone and colour distribution only."""
    return (x.flatten(2).sort(-1).values - y.flatten(2).sort(-1).values).abs().mean()


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - SSIM of (B, C, H, W) images in [0, 1]: the eval's own SSIM (torchmetrics, Gaussian window
    11, sigma 1.5), which is differentiable."""
    return 1 - structural_similarity_index_measure(x, y, data_range=1.0)


class TeacherLoss:
    """loss_fn(batch, step) for the teacher's Phase, and the discriminator's Phase if there is a GAN term.

    model(z_in, z_target) -> (latent loss, z_hat): the prepared teacher; codec: its frozen codec.
    """

    def __init__(self, cfg: Config, model, kind: str, codec, accelerator, total_steps: int):
        self.t, self.model, self.codec, self.accelerator = cfg.teacher, model, codec, accelerator
        self.latent_name = "loss_flow" if kind == "flow" else "loss_mse"
        t = self.t
        self.lpips = (load_lpips(accelerator.device, t.lpips_net, t.lpips_random_backbone)
                      if t.lpips_weight > 0 else None)
        self.disc_phase = None
        self._fake = None  # the last z_hat's pixels, detached, for the discriminator's step
        if t.gan.weight > 0:
            g = t.gan
            disc = OpenCLIPDiscriminator(lambda x: x, g.openclip_model, g.openclip_pretrained,  # sees pixels
                                         g.openclip_image_size, head_channels=g.head_channels)
            disc = disc.to(accelerator.device)
            opt, sched = make_optimizer(disc.trainable_parameters(), g.learning_rate, cfg.train, total_steps)
            disc_p, opt = accelerator.prepare(disc, opt)
            self.disc, self.disc_p = disc, disc_p
            self.disc_phase = Phase("disc", disc_p, opt, sched, self.disc_loss, active=self.adversarial)

    def adversarial(self, step: int) -> bool:
        return self.t.gan.weight > 0 and step >= self.t.gan.warmup_steps

    def phases(self, teacher_phase: Phase) -> list[Phase]:
        """The teacher first (its z_hat is the discriminator's fake), then the discriminator."""
        return [teacher_phase] + ([self.disc_phase] if self.disc_phase is not None else [])

    def _decoded(self, batch):
        with torch.no_grad():
            return {k: self.codec.decode(batch[k]).float() for k in ("z_in", "z_target")}

    def loss_fn(self, batch, step):
        t = self.t
        latent, z_hat = self.model(batch["z_in"], batch["z_target"])
        loss = t.latent_weight * latent
        parts = {self.latent_name: latent.detach()}
        pixel_terms = (t.pixel_mse_weight, t.l1_weight, t.hist_weight, t.ssim_weight)
        if not (any(w > 0 for w in pixel_terms) or self.lpips is not None or self.adversarial(step)):
            return loss, parts
        x = self._decoded(batch)
        x_hat, x_tgt = self.codec.decode(z_hat).float(), x["z_target"]
        if t.pixel_mse_weight > 0:
            mse = F.mse_loss(x_hat, x_tgt)  # || D(z_hat) - D(z_target) ||^2
            loss, parts["loss_pixel_mse"] = loss + t.pixel_mse_weight * mse, mse.detach()
        if t.l1_weight > 0:
            l1 = (x_hat - x_tgt).abs().mean()  # || D(z_hat) - D(z_target) ||_1
            loss, parts["loss_l1"] = loss + t.l1_weight * l1, l1.detach()
        if t.hist_weight > 0:
            hist = histogram_loss(x_hat, x_tgt)
            loss, parts["loss_hist"] = loss + t.hist_weight * hist, hist.detach()
        if t.ssim_weight > 0:
            ss = ssim_loss(x_hat.clamp(0, 1), x_tgt.clamp(0, 1))
            loss, parts["loss_ssim"] = loss + t.ssim_weight * ss, ss.detach()
        if self.lpips is not None:
            lp = self.lpips(x_hat.clamp(0, 1) * 2 - 1, x_tgt.clamp(0, 1) * 2 - 1).mean()
            loss, parts["loss_lpips"] = loss + t.lpips_weight * lp, lp.detach()
        if self.adversarial(step):
            # the unwrapped D with its heads frozen here, so this term trains only the teacher
            self.disc.requires_grad_(False)
            adv = gan_g_loss(t.gan.loss, self.disc(x_hat, x["z_in"]))
            for p in self.disc.trainable_parameters():
                p.requires_grad_(True)
            loss, parts["loss_gan"] = loss + t.gan.weight * adv, adv.detach()
            self._fake = (x_hat.detach(), x)
        return loss, parts

    def disc_loss(self, batch, step):
        fake, x = self._fake  # this micro-batch's, computed by the teacher's phase just before
        real_logits = self.disc_p(x["z_target"], x["z_in"])
        loss = gan_d_loss(self.t.gan.loss, real_logits, self.disc_p(fake, x["z_in"]),
                          real_label=self.disc.real_label)
        return loss, {"loss_d": loss.detach()}
