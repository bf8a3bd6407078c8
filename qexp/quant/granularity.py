"""Quantization granularity as frozen value objects.

A granularity says which elements of a tensor share one (x_min, x_max) pair.  Every granularity maps a tensor to
a 2-D *slot view* ``(n_slots, n_elements)``: statistics are taken along dim 1 of that view, so range estimators are
written once for all granularities.  ``expand`` maps per-slot parameters back to a shape that broadcasts against
the original tensor.

- ``PerTensor()``: one slot.
- ``PerChannel(axis)``: one slot per index of ``axis`` (weights: axis 0 is the output channel of ``nn.Linear``).
- ``PerToken()``: one slot per row of the last dimension (activations).  Tokens differ from batch to batch, so
  per-token ranges are *dynamic*: recomputed in every forward and never calibrated.
- ``PerGroup(n_groups)``: the tensor flattened in row-major order and cut into ``n_groups`` contiguous chunks, one
  range each (ZeroQuant's group-wise weights, Yao et al. 2022, Sec. 4.1, as DeepSpeed implements them: for an
  ``nn.Linear`` weight ``(out, in)`` with ``out % n_groups == 0`` every group is a block of whole output rows, so a
  group never splits the reduction dimension and the scale factors out of the GEMM).
- ``PerEmbeddingGroup(n_groups, permute)``: the last (embedding) dimension ``d`` is split into ``n_groups``
  contiguous groups of ``d / n_groups`` dimensions; every group gets one range over all tokens (Bondarenko et al.
  2021, Sec. 4, "PEG").  With ``permute=True`` the dimensions are first sorted by their range, measured once on
  calibration data, so that the outlier dimensions share a group; the permutation is stored with the quantizer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..common.registry import Registry, name_and_kwargs


class GranularityError(ValueError):
    """A granularity that does not fit a tensor shape or an estimator."""


@dataclass(frozen=True)
class Granularity:
    """Base class; subclasses implement :meth:`slots` and :meth:`expand`.

    ``perm`` is the permutation a granularity that :attr:`permutes` measured on calibration data (PEG's range-based
    permutation); the others ignore it, so callers never ask which granularity they hold."""

    dynamic = False  # True when ranges must be recomputed in every forward

    @property
    def permutes(self) -> bool:
        return False

    def check(self, shape: torch.Size) -> None:  # pragma: no cover - trivial default
        if len(shape) == 0:
            raise GranularityError(f"{self} needs a tensor with at least one dimension")

    def slots(self, x: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def expand(self, p: torch.Tensor, x: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def num_slots(self, shape: torch.Size) -> int:
        return self.slots(torch.empty(shape, device="meta")).shape[0]


@dataclass(frozen=True)
class PerTensor(Granularity):
    def check(self, shape: torch.Size) -> None:
        pass

    def slots(self, x: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        return x.reshape(1, -1)

    def expand(self, p: torch.Tensor, x: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        return p.reshape(())

    def __str__(self) -> str:
        return "per_tensor"


@dataclass(frozen=True)
class PerChannel(Granularity):
    axis: int = 0

    def check(self, shape: torch.Size) -> None:
        if not -len(shape) <= self.axis < len(shape):
            raise GranularityError(f"{self}: axis {self.axis} is out of range for a tensor of shape {tuple(shape)}")

    def slots(self, x: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        self.check(x.shape)
        return x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)

    def expand(self, p: torch.Tensor, x: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return p.reshape(shape)

    def __str__(self) -> str:
        return f"per_channel(axis={self.axis})"


@dataclass(frozen=True)
class PerToken(Granularity):
    dynamic = True

    def check(self, shape: torch.Size) -> None:
        if len(shape) < 2:
            raise GranularityError(f"{self} needs (..., tokens, features); got shape {tuple(shape)}")

    def slots(self, x: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        self.check(x.shape)
        return x.reshape(-1, x.shape[-1])

    def expand(self, p: torch.Tensor, x: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        return p.reshape(*x.shape[:-1], 1)

    def __str__(self) -> str:
        return "per_token"


@dataclass(frozen=True)
class PerGroup(Granularity):
    n_groups: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.n_groups, bool) or int(self.n_groups) != self.n_groups or self.n_groups < 1:
            raise GranularityError(f"per_group: n_groups must be a positive integer, got {self.n_groups!r}")

    def check(self, shape: torch.Size) -> None:
        numel = int(torch.Size(shape).numel())
        if numel % self.n_groups:
            rows = shape[0] if len(shape) else 1
            fits = [k for k in range(1, rows + 1) if rows % k == 0]
            raise GranularityError(
                f"{self}: n_groups={self.n_groups} does not divide the {numel} elements of a tensor of shape "
                f"{tuple(shape)}; n_groups that keep whole rows together: {fits}")

    def slots(self, x: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        self.check(x.shape)
        return x.reshape(self.n_groups, -1)

    def expand(self, p: torch.Tensor, x: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() and x.shape[0] % self.n_groups == 0:  # whole rows per group: broadcast along rows
            return p.reshape(-1, 1).repeat_interleave(x.shape[0] // self.n_groups, 0).reshape(
                x.shape[0], *([1] * (x.dim() - 1)))
        return p.repeat_interleave(x.numel() // self.n_groups).reshape(x.shape)

    def __str__(self) -> str:
        return f"per_group(n_groups={self.n_groups})"


@dataclass(frozen=True)
class PerEmbeddingGroup(Granularity):
    n_groups: int = 1
    permute: bool = False

    def __post_init__(self) -> None:
        if int(self.n_groups) != self.n_groups or self.n_groups < 1:
            raise GranularityError(f"per_embedding_group: n_groups must be a positive integer, got {self.n_groups!r}")

    def check(self, shape: torch.Size) -> None:
        if len(shape) < 1:
            raise GranularityError(f"{self} needs a tensor with an embedding dimension")
        d = shape[-1]
        if d % self.n_groups:
            divisors = [k for k in range(1, d + 1) if d % k == 0]
            raise GranularityError(
                f"{self}: n_groups={self.n_groups} does not divide the embedding dimension {d}; "
                f"valid n_groups for d={d}: {divisors}"
            )

    def slots(self, x: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        self.check(x.shape)
        d = x.shape[-1]
        flat = x.reshape(-1, d)
        if perm is not None:
            flat = flat[:, perm]
        # (tokens, K, d/K) -> (K, tokens * d/K)
        return flat.reshape(-1, self.n_groups, d // self.n_groups).transpose(0, 1).reshape(self.n_groups, -1)

    def expand(self, p: torch.Tensor, x: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
        d = x.shape[-1]
        per_dim_sorted = p.repeat_interleave(d // self.n_groups)
        if perm is None:
            return per_dim_sorted
        per_dim = torch.empty_like(per_dim_sorted)
        per_dim[perm] = per_dim_sorted
        return per_dim

    @property
    def permutes(self) -> bool:
        return self.permute

    def __str__(self) -> str:
        return f"per_embedding_group(n_groups={self.n_groups}, permute={self.permute})"


def range_permutation(dim_ranges: torch.Tensor) -> torch.Tensor:
    """The PEG permutation: embedding dimensions sorted by ascending range (max - min) over calibration data."""
    return torch.argsort(dim_ranges, stable=True)


GRANULARITIES: Registry[type[Granularity]] = Registry("granularity", GranularityError)
for _name, _cls in (("per_tensor", PerTensor), ("per_channel", PerChannel), ("per_token", PerToken),
                    ("per_group", PerGroup), ("per_embedding_group", PerEmbeddingGroup)):
    GRANULARITIES.register(_name)(_cls)


def make_granularity(spec) -> Granularity:
    """Build a granularity from a config value: a name, or a mapping ``{name: ..., **kwargs}``."""
    if isinstance(spec, Granularity):
        return spec
    name, kwargs = name_and_kwargs(spec, "granularity")
    cls = GRANULARITIES.get(name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise GranularityError(f"bad arguments {kwargs} for granularity {name!r}: {e}") from None
