"""An evaluation protocol: everything besides the weights that determines an evaluation's numbers, its
digest, and how metrics are logged under it (one curve, one protocol; any other protocol is suffixed).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from fcdm.config.schema import RunConfig

TAG_PROTOCOL = "eval.protocol"
TAG_NOISE_SEEDS = "eval.noise_seeds"  # sampling seeds of the final checkpoint's re-samplings, "1,2,3"


@dataclass(frozen=True)
class Protocol:
    """Everything that determines an evaluation's numbers, besides the weights."""
    num_samples: int
    sampler: str
    sampling_steps: int
    cfg_scale: float
    guided_channels: int | None
    precision: str
    extractor: str
    reference: str
    vae: str | None
    seed: int = 0  # the sampling seed (eval.seed), never the run's training seed: seeds of a configuration pool
    extractor_weights: str | None = None  # "sha256:<12 hex>" of the extractor's weights; set by `resolved`
    fid_reference: str | None = None  # "stored-statistics" | "images"; set by `resolved`

    @classmethod
    def from_config(cls, cfg: RunConfig, **overrides) -> Protocol:
        e = cfg.eval
        proto = cls(e.num_samples, cfg.sampler, e.sampling_steps, float(e.cfg_scale), e.guided_channels,
                    e.precision, cfg.extractor, cfg.reference, e.vae, e.seed)
        return replace(proto, **{k: v for k, v in overrides.items() if v is not None})

    def resolved(self, cache_dir: Path, fid_weights: str | None = None) -> Protocol:
        """This protocol completed with what only the files tell: the digest of the extractor weights
        (`fid_weights`, else the default file) and whether FID uses stored statistics or images."""
        # heavy: fcdm.metrics imports torch_fidelity (seconds); a run without metrics never resolves a protocol
        from fcdm.metrics import extractor_weights_digest, extractor_weights_path, fid_reference_kind

        weights = extractor_weights_path(self.extractor, cache_dir, fid_weights)
        return replace(self, cfg_scale=float(self.cfg_scale),
                       extractor_weights=extractor_weights_digest(self.extractor, weights),
                       fid_reference=fid_reference_kind(self.reference))

    @property
    def digest(self) -> str:
        """12 hex digits naming this (resolved) protocol."""
        if self.extractor_weights is None or self.fid_reference is None:
            raise ValueError("Protocol.digest needs a resolved protocol: call .resolved(cache_dir, fid_weights)")
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def slug(self) -> str:
        """Metric-name suffix of this protocol: the sampling settings to read, the digest to be exact."""
        guided = "" if self.guided_channels is None else f"-g{self.guided_channels}"
        return (f"{self.sampler}-{self.sampling_steps}-cfg{self.cfg_scale:g}{guided}-n{self.num_samples}"
                f"-{self.precision}-seed{self.seed}-{self.digest[:8]}")

    def tags(self, num_channels: int) -> dict[str, str]:
        """The `eval.*` tags that record this protocol as a run's own."""
        from fcdm.metrics import protocol  # heavy: torch_fidelity, only once an evaluation is logged

        tags = protocol(self.extractor, self.reference, self.num_samples, fid_reference=self.fid_reference)
        tags.update({f"eval.{k}": str(v) for k, v in asdict(self).items()
                     if k not in ("extractor", "reference", "num_samples", "fid_reference")})
        tags["eval.guided_channels"] = f"{self.guided_channels or num_channels} of {num_channels}"
        tags[TAG_PROTOCOL] = self.digest
        return tags


def noise_key(key: str, sampling_seed: int) -> str:
    """The key of a re-sampling of `key`'s checkpoint with another sampling seed: `fid` -> `fid.eval_seed1`;
    under another protocol the seed comes before the protocol suffix: `fid.eval_seed1/<slug>`."""
    base, slash, suffix = key.partition("/")
    return f"{base}.eval_seed{sampling_seed}{slash}{suffix}"


def log_evaluation(tracker, proto: Protocol, values: dict[str, float], step: int, num_channels: int,
                   sampling_seed: int | None = None) -> dict:
    """Log metric values at `step` under the run's protocol or, if `proto` is another one, suffixed.

    The run's first evaluation records its protocol (tags before metrics: a crash in between leaves a
    recorded protocol without numbers, never numbers under an unrecorded one). `sampling_seed`: the values
    are a re-sampling of the checkpoint under `proto` with that sampling seed instead of proto.seed
    (evaluation noise), logged as `<metric>.eval_seed<S>` (noise_key). Returns what was logged.
    """
    recorded = tracker.client.get_run(tracker.run_id).data.tags.get(TAG_PROTOCOL)
    if recorded is None:
        tracker.set_tags(proto.tags(num_channels))
    suffix = "" if recorded in (None, proto.digest) else f"/{proto.slug}"
    if suffix:  # the protocol, and its digest (a reader joins it with runs whose own protocol it is); not `eval.*`
        # tags: those describe the run's own protocol
        tracker.set_tags({f"eval{suffix}": json.dumps(asdict(proto), sort_keys=True),
                          f"eval{suffix}.digest": proto.digest})
    logged = {f"{k}{suffix}" if sampling_seed is None else noise_key(f"{k}{suffix}", sampling_seed): v
              for k, v in values.items()}
    tracker.log_metrics(logged, step)
    return logged
