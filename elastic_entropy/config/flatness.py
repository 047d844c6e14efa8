"""``flatness``: how flat the final reference is, measured when the run ends (off by default).

Off by default because it costs more than the default job's training itself (about 1,000
gradients and 40 Hessian-vector products on ``num_samples`` training points: 31 s against 12 s of
training on a 2-core CPU), and it changes nothing that is trained; ``flatness.enabled=true``
writes its numbers into ``results.json`` under ``flatness`` (see :mod:`elastic_entropy.flatness`
for the equations).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from elastic_entropy.config._checks import _non_negative, _positive, _require, _seed

# power iteration and chains of more steps than this take hours on a real network
MAX_ITERATIONS = 100_000


@dataclass
class FlatnessConfig:
    enabled: bool = False
    num_samples: int = 1024  # the first training samples: the loss f is their mean
    batch_size: int = 512  # chunks of those samples, for memory (f is the same)
    iterations: int = 100  # power iteration's cap on Hessian-vector products
    tolerance: float = 1e-3  # stop when the eigenvalue changes by less than this, relatively
    probes: int = 32  # Hutchinson's Rademacher probes for the trace
    radii: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1])  # relative to |w|
    draws: int = 8  # random directions per radius
    gamma: float = 1.0  # the local entropy's coupling, the same for every algorithm
    # Langevin temperature scale of the measuring chain, as algorithm.noise (temperature
    # noise^2); 0: the inviscid limit, the Moreau envelope
    noise: float = 0.01
    num_inner_steps: int = 200  # per Langevin chain (half burn-in); 0 leaves the local entropy out
    num_nodes: int = 4  # Gauss-Legendre nodes of the thermodynamic integration
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("num_samples", "batch_size", "iterations", "probes", "draws", "num_nodes"):
            value = getattr(self, key)
            _require(
                1 <= value <= MAX_ITERATIONS,
                f"flatness.{key}",
                value,
                f"must be in [1, {MAX_ITERATIONS}]",
            )
        _positive("flatness.tolerance", self.tolerance)
        _require(
            len(self.radii) >= 1 and all(0.0 < r <= 10.0 for r in self.radii),
            "flatness.radii",
            self.radii,
            "must be a list of relative radii in (0, 10], e.g. [0.01,0.05,0.1]",
        )
        _positive("flatness.gamma", self.gamma)
        _non_negative("flatness.noise", self.noise)
        _require(
            self.num_inner_steps == 0 or 2 <= self.num_inner_steps <= MAX_ITERATIONS,
            "flatness.num_inner_steps",
            self.num_inner_steps,
            f"must be 0 (no local entropy) or in [2, {MAX_ITERATIONS}]: half of it is burn-in",
        )
        _seed("flatness.seed", self.seed)
