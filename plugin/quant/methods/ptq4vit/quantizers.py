"""PTQ4ViT's twin-uniform grid (registered as "twin_uniform"), for post-Softmax and post-GELU activations."""
import torch

from ...errors import ConfigError
from ...quantizers import Quantizer, _broadcast, register_quantizer, round_ste


@register_quantizer("twin_uniform")
class TwinUniformQuantizer(Quantizer):
    """Twin uniform quantizer of PTQ4ViT (Yuan et al., ECCV 2022, Sec. 3.2).

    Two uniform ranges share the b-bit code, one bit choosing the range, 2^(b-1) levels each, with steps Δ1 and
    Δ2 = 2^m·Δ1 (a power-of-two ratio, so both ranges align to one integer grid).
    - `mode="magnitude"` (post-Softmax): R1 = [0, (2^(b-1)-1)Δ1] holds the many small values, R2 = [0, (2^(b-1)-1)Δ2]
      the large ones; a value goes to R1 when it fits there.
    - `mode="sign"` (post-GELU): R1 = [-(2^(b-1))Δ1, 0] holds the negative values, R2 = [0, (2^(b-1)-1)Δ2] the
      positive ones.
    Δ2 comes from the maximum (shrunk by an MSE search), m from an MSE search over 0 … 10. PTQ4ViT searches with a
    Hessian-guided output metric; here the search is on the activation's own quantization error.
    """
    learnable_buffers = ("delta1", "delta2")

    def __init__(self, spec, channel_axis=-1):
        super().__init__(spec, channel_axis)
        self.mode = spec.opts.get("mode", "magnitude")
        if self.mode not in ("magnitude", "sign"):
            raise ConfigError(f"twin_uniform mode must be 'magnitude' or 'sign', got {self.mode!r}")
        self.register_buffer("delta1", torch.ones(1))
        self.register_buffer("delta2", torch.ones(1))
        self.half = 2 ** (spec.bits - 1)

    def fake_quant(self, x, d1, d2):
        top = self.half - 1
        if self.mode == "sign":
            q1 = round_ste(torch.clamp(x / d1, -self.half, 0)) * d1
            q2 = round_ste(torch.clamp(x / d2, 0, top)) * d2
            return torch.where(x < 0, q1, q2)
        q1 = round_ste(torch.clamp(x / d1, 0, top)) * d1
        q2 = round_ste(torch.clamp(x / d2, 0, top)) * d2
        # Each value takes the nearer of its two candidate levels (R1's when it fits R1, which it then always is).
        return torch.where((q1 - x).abs() <= (q2 - x).abs(), q1, q2)

    def quantize(self, x):
        return self.fake_quant(x, _broadcast(self.delta1, x, self.channel_axis), _broadcast(self.delta2, x, self.channel_axis))

    def _calibrate(self, obs):
        lo, hi, samples = self._reduce_stats(obs)
        top = self.half - 1
        best, best_err = None, None
        for frac in torch.linspace(1.0, 0.5, 8).tolist():
            d2 = (hi.clamp_min(1e-8) * frac) / top
            for m in range(0, 11):
                d1 = d2 / (2 ** m)
                err = (self.fake_quant(samples, d1, d2) - samples).pow(2).sum(0)
                if best is None:
                    best, best_err = (d1, d2), err
                else:
                    better = err < best_err
                    best = (torch.where(better, d1, best[0]), torch.where(better, d2, best[1]))
                    best_err = torch.where(better, err, best_err)
        self._set(delta1=best[0], delta2=best[1])


__all__ = ["TwinUniformQuantizer"]
