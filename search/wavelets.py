"""Orthonormal 2-D wavelet transforms over (H, W) and the low-band codec SES searches through.

Two backends compute the same transform:

- ``torch``: Haar (``"haar"`` / ``"db1"``) in pure torch on the tensor's own device. One level maps each
  2x2 block ``[[a, b], [c, d]]`` to ``LL = (a+b+c+d)/2``, ``cH = (a+b-c-d)/2``, ``cV = (a-b+c-d)/2``,
  ``cD = (a-b-c+d)/2``: the orthonormal Haar step, with PyWavelets' band order and signs.
- ``pywt``: any orthogonal discrete wavelet of PyWavelets, mode ``"periodization"``, computed on the CPU in
  NumPy (batched over all leading dimensions in one call).

Both are orthonormal only when every level halves an even length, so :class:`LowBandCodec` pads H and W
up to a multiple of ``2**level`` with EXTRA i.i.d. standard Gaussian values (drawn once, then held fixed
like the detail bands). Because the padded transform is orthonormal, a candidate low band drawn from
N(0, 1) gives a padded tensor that is exactly i.i.d. N(0, 1), and so is its crop. Zero or symmetric
padding would not: their low band mixes in constants or duplicated samples and no longer has unit
variance, so the recombined noise would not be standard Gaussian near the border.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pywt
import torch
from torch import Tensor

HAAR_NAMES = ("haar", "db1")
BACKENDS = ("auto", "torch", "pywt")

DetailBands = list[tuple[Tensor, Tensor, Tensor]]


def validate_wavelet(name: str) -> pywt.Wavelet:
    """Return the PyWavelets wavelet called ``name``; raise ValueError unless it is discrete and orthogonal.

    Orthogonality is what makes a N(0, 1) low band recombine into N(0, 1) noise, so biorthogonal
    (``bior*``, ``rbio*``) and continuous wavelets are refused.
    """
    if not isinstance(name, str) or name not in pywt.wavelist(kind="discrete"):
        raise ValueError(
            f"unknown wavelet {name!r}: use a discrete orthogonal PyWavelets wavelet such as 'db1' (Haar), "
            "'db2', 'sym4' or 'coif1' (see pywt.wavelist(kind='discrete'))"
        )
    wavelet = pywt.Wavelet(name)
    if not wavelet.orthogonal:
        raise ValueError(
            f"wavelet {name!r} is not orthogonal, so a N(0,1) low band would not give N(0,1) noise: "
            "use an orthogonal one such as 'db1' (Haar), 'db2', 'sym4' or 'coif1'"
        )
    return wavelet


def resolve_backend(wavelet: str, backend: str) -> str:
    """Pick the transform backend: ``"auto"`` means torch for Haar and PyWavelets for everything else."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown wavelet backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "torch" if wavelet in HAAR_NAMES else "pywt"
    if backend == "torch" and wavelet not in HAAR_NAMES:
        raise ValueError(
            f"the torch wavelet backend implements only Haar ('db1'/'haar'), not {wavelet!r}: "
            "use backend='pywt' or 'auto'"
        )
    return backend


def max_level(height: int, width: int, wavelet: str) -> int:
    """Deepest useful level for an ``height x width`` plane: PyWavelets' ``dwt_max_level`` of min(H, W).

    For Haar this is ``floor(log2(min(H, W)))``, i.e. the largest level with ``2**level <= min(H, W)``,
    so the low band keeps at least one coefficient per ``2**level`` block of real (unpadded) data.
    """
    return pywt.dwt_max_level(min(height, width), pywt.Wavelet(wavelet).dec_len)


# The automatic level keeps at least this many low-band coefficients per side: 4x4, as level 4 does on
# a 1024px FLUX latent (64x64), the setting SES was published with.
AUTO_LEVEL_MIN_SIDE = 4
AUTO_LEVEL_MAX = 4


def auto_level(height: int, width: int, wavelet: str) -> int:
    """The level ``level=None`` means: the deepest level up to 4 whose low band keeps at least 4x4
    coefficients (4 on a 64x64 latent, 2 on 16x16, 1 on 8x8). A latent below 8 px a side cannot keep 4x4
    at any level; there it is the deepest level that fits, up to 4, as for an explicit level 4."""
    side = min(height, width)
    if side < 2 * AUTO_LEVEL_MIN_SIDE:
        return max(1, min(AUTO_LEVEL_MAX, max_level(height, width, wavelet)))
    level = 1
    while level < AUTO_LEVEL_MAX and side // 2 ** (level + 1) >= AUTO_LEVEL_MIN_SIDE:
        level += 1
    return min(level, max(max_level(height, width, wavelet), 1))


def resolve_level(height: int, width: int, wavelet: str, level: int | None) -> int:
    """Return ``level``, lowered with a warning when the latent is too small for it (see :func:`max_level`);
    ``None`` takes :func:`auto_level`.

    Raises ValueError when not even level 1 fits (e.g. a 1-pixel-high latent, or a long wavelet on a
    small latent).
    """
    deepest = max_level(height, width, wavelet)
    if deepest < 1:
        raise ValueError(
            f"latent of {height}x{width} is too small for a {wavelet!r} wavelet transform at any level: "
            "use wavelet='db1' (Haar) or a latent with min(H, W) >= 2"
        )
    if level is None:
        return auto_level(height, width, wavelet)
    if level > deepest:
        warnings.warn(
            f"wavelet level {level} is too deep for a {height}x{width} latent with {wavelet!r} "
            f"(at most {deepest}); using level {deepest}",
            UserWarning,
            stacklevel=3,
        )
        return deepest
    return level


# ---------------------------------------------------------------------------------------------------------
# Haar in pure torch
# ---------------------------------------------------------------------------------------------------------


def haar_dwt2(x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """One orthonormal Haar level over the last two dims (both even): ``(LL, (cH, cV, cD))``."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"haar_dwt2 needs even H and W, got {tuple(x.shape[-2:])}: pad the input first")
    a = x[..., 0::2, 0::2]
    b = x[..., 0::2, 1::2]
    c = x[..., 1::2, 0::2]
    d = x[..., 1::2, 1::2]
    top, bottom = a + b, c + d
    top_diff, bottom_diff = a - b, c - d
    low = (top + bottom) * 0.5
    horizontal = (top - bottom) * 0.5
    vertical = (top_diff + bottom_diff) * 0.5
    diagonal = (top_diff - bottom_diff) * 0.5
    return low, (horizontal, vertical, diagonal)


def haar_idwt2(low: Tensor, details: tuple[Tensor, Tensor, Tensor] | None) -> Tensor:
    """Inverse of :func:`haar_dwt2`; ``details=None`` means all-zero detail bands."""
    if details is None:
        # With zero details every output pixel of a 2x2 block is LL / 2 (exact: a power-of-two scale).
        half = low * 0.5
        a = b = c = d = half
    else:
        horizontal, vertical, diagonal = details
        low_plus_h, low_minus_h = low + horizontal, low - horizontal
        v_plus_d, v_minus_d = vertical + diagonal, vertical - diagonal
        a = (low_plus_h + v_plus_d) * 0.5
        b = (low_plus_h - v_plus_d) * 0.5
        c = (low_minus_h + v_minus_d) * 0.5
        d = (low_minus_h - v_minus_d) * 0.5
    top = torch.stack((a, b), dim=-1).flatten(-2)  # [..., h, 2w]: a b a b ...
    bottom = torch.stack((c, d), dim=-1).flatten(-2)
    return torch.stack((top, bottom), dim=-2).flatten(-3, -2)  # [..., 2h, 2w]


def haar_wavedec2(x: Tensor, level: int) -> tuple[Tensor, DetailBands]:
    """Multi-level Haar DWT over the last two dims, PyWavelets' layout: ``(low, [coarsest ... finest])``.

    H and W must be multiples of ``2**level``.
    """
    step = 2**level
    if x.shape[-1] % step or x.shape[-2] % step:
        raise ValueError(
            f"haar_wavedec2 at level {level} needs H and W divisible by {step}, got {tuple(x.shape[-2:])}"
        )
    details: DetailBands = []
    low = x
    for _ in range(level):
        low, bands = haar_dwt2(low)
        details.append(bands)
    details.reverse()
    return low, details


def haar_waverec2(low: Tensor, details: DetailBands | None, level: int | None = None) -> Tensor:
    """Inverse of :func:`haar_wavedec2`. ``details=None`` (with ``level``) means all-zero detail bands."""
    if details is None:
        if level is None:
            raise ValueError("haar_waverec2 needs level when details is None")
        out = low
        for _ in range(level):
            out = haar_idwt2(out, None)
        return out
    out = low
    for bands in details:
        out = haar_idwt2(out, bands)
    return out


# ---------------------------------------------------------------------------------------------------------
# Backend-dispatching transform
# ---------------------------------------------------------------------------------------------------------


def _to_numpy(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu").numpy()


def wavedec2(
    x: Tensor, wavelet: str = "db1", level: int = 4, backend: str = "auto"
) -> tuple[Tensor, DetailBands]:
    """Orthonormal multi-level 2-D DWT over the last two dims of ``x`` (H, W divisible by ``2**level``).

    Returns ``(low, [(cH, cV, cD) coarsest ... finest])`` as tensors on ``x``'s device and dtype.
    """
    validate_wavelet(wavelet)
    if resolve_backend(wavelet, backend) == "torch":
        return haar_wavedec2(x, level)
    step = 2**level
    if x.shape[-1] % step or x.shape[-2] % step:
        raise ValueError(
            f"wavedec2 at level {level} needs H and W divisible by {step}, got {tuple(x.shape[-2:])}"
        )
    coeffs = pywt.wavedec2(_to_numpy(x), wavelet, mode="periodization", level=level, axes=(-2, -1))

    def back(array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device=x.device, dtype=x.dtype)

    return back(coeffs[0]), [tuple(back(band) for band in bands) for bands in coeffs[1:]]


def waverec2(
    low: Tensor,
    details: DetailBands | None,
    wavelet: str = "db1",
    level: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """Inverse of :func:`wavedec2`. ``details=None`` (give ``level``) reconstructs from the low band alone."""
    validate_wavelet(wavelet)
    if resolve_backend(wavelet, backend) == "torch":
        return haar_waverec2(low, details, level)
    if details is None:
        if level is None:
            raise ValueError("waverec2 needs level when details is None")
        numpy_details = [(None, None, None)] * level  # PyWavelets treats None bands as zeros
    else:
        numpy_details = [tuple(_to_numpy(band) for band in bands) for bands in details]
    out = pywt.waverec2([_to_numpy(low), *numpy_details], wavelet, mode="periodization", axes=(-2, -1))
    return torch.from_numpy(np.ascontiguousarray(out)).to(device=low.device, dtype=low.dtype)


# ---------------------------------------------------------------------------------------------------------
# The codec: base noise's fixed detail bands + a searched low band -> full noise
# ---------------------------------------------------------------------------------------------------------


class LowBandCodec:
    """Splits one noise ``[C, H, W]`` into a searchable low band and everything else, held fixed.

    ``decode(low)`` returns the noise whose level-``level`` approximation band is ``low`` and whose
    detail bands are the base noise's. H and W are first padded up to multiples of ``2**level`` with
    extra i.i.d. N(0, 1) values drawn once from ``generator`` on the CPU (none are drawn when no padding
    is needed), then the orthonormal transform runs on the padded tensor and the result is cropped. So:

    - a N(0, 1) low band gives exactly i.i.d. N(0, 1) noise, at any H and W;
    - ``decode(base_low)`` returns the base noise exactly (bit for bit).

    The decode uses linearity: ``decode(low) = crop(padded_base + synthesis(low - base_low))``, where
    ``synthesis`` inverts the transform with zero detail bands. For Haar that synthesis is each low
    coefficient divided by ``2**level`` spread over its ``2**level x 2**level`` block, computed on the
    noise's device without a full inverse transform.

    Work happens in float32 (float64 when the base is float64) on the base noise's device; decoded
    noise is returned in the base noise's dtype.
    """

    def __init__(
        self,
        base_noise: Tensor,
        wavelet: str = "db1",
        level: int | None = 4,
        generator: torch.Generator | None = None,
        backend: str = "auto",
    ) -> None:
        if base_noise.dim() != 3:
            raise ValueError(f"LowBandCodec expects a [C, H, W] noise, got shape {tuple(base_noise.shape)}")
        validate_wavelet(wavelet)
        self.wavelet = wavelet
        self.backend = resolve_backend(wavelet, backend)
        channels, height, width = base_noise.shape
        self.shape = (channels, height, width)
        self.level = resolve_level(height, width, wavelet, level)
        self.device = base_noise.device
        self.dtype = base_noise.dtype
        self.work_dtype = torch.float64 if base_noise.dtype == torch.float64 else torch.float32
        step = 2**self.level
        padded_height = math.ceil(height / step) * step
        padded_width = math.ceil(width / step) * step
        self.padded_shape = (channels, padded_height, padded_width)
        self.low_shape = (channels, padded_height // step, padded_width // step)

        base = base_noise.detach().to(self.work_dtype)
        if (padded_height, padded_width) != (height, width):
            # Extra Gaussian values, not zeros or mirrored samples: keeps the padded tensor i.i.d. N(0, 1)
            # so the orthonormal transform's low band has unit variance (see module docstring).
            padded = torch.randn(self.padded_shape, generator=generator, dtype=torch.float32)
            padded = padded.to(device=self.device, dtype=self.work_dtype)
            padded[:, :height, :width] = base
        else:
            padded = base.clone()
        self.padded_base = padded
        self.base_low = self.forward_low(padded.unsqueeze(0))[0]

    def rebased(self, padded_noise: Tensor) -> LowBandCodec:
        """This codec around another padded noise ``[C, Hp, Wp]``, whose detail bands are kept from now on."""
        codec = copy.copy(self)
        codec.padded_base = padded_noise.to(device=self.device, dtype=self.work_dtype)
        codec.base_low = codec.forward_low(codec.padded_base.unsqueeze(0))[0]
        return codec

    @property
    def low_numel(self) -> int:
        """Number of searched coefficients, ``C * h * w``."""
        return math.prod(self.low_shape)

    def forward_low(self, padded: Tensor) -> Tensor:
        """Approximation band ``[N, C, h, w]`` of padded noises ``[N, C, Hp, Wp]``."""
        low, _ = wavedec2(padded.to(self.work_dtype), self.wavelet, self.level, self.backend)
        return low

    def synthesize_low(self, low: Tensor) -> Tensor:
        """Inverse transform of ``low`` ``[N, C, h, w]`` with zero detail bands -> ``[N, C, Hp, Wp]``."""
        if self.backend == "torch":
            step = 2**self.level
            n, channels, h, w = low.shape
            spread = low[:, :, :, None, :, None].expand(n, channels, h, step, w, step)
            # Dividing by a power of two is exact, so this equals haar_waverec2(low, None, level) bitwise.
            return spread.reshape(n, channels, h * step, w * step) * (1.0 / step)
        return waverec2(low, None, self.wavelet, self.level, self.backend)

    def decode(self, low: Tensor) -> Tensor:
        """Full noises ``[N, C, H, W]`` (base device and dtype) from low bands ``[N, C, h, w]`` (any device)."""
        if low.dim() == 3:
            low = low.unsqueeze(0)
        if tuple(low.shape[1:]) != self.low_shape:
            raise ValueError(
                f"low band must have shape [N, {', '.join(map(str, self.low_shape))}], got {tuple(low.shape)}"
            )
        delta = low.to(device=self.device, dtype=self.work_dtype) - self.base_low
        channels, height, width = self.shape
        if self.backend == "torch":
            # One broadcast add over [n, C, h, step, w, step] writes the output in a single pass; the values
            # are the same as padded_base + synthesize_low(delta) (scaling by a power of two is exact).
            step = 2**self.level
            _, h, w = self.low_shape
            blocks = self.padded_base.view(channels, h, step, w, step)
            full = blocks + (delta * (1.0 / step))[:, :, :, None, :, None]
            full = full.view(-1, *self.padded_shape)
        else:
            full = self.padded_base + self.synthesize_low(delta)
        return full[:, :, :height, :width].to(self.dtype).contiguous()
