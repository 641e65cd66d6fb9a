"""What an analysis computes (`Spec`: policies, sparsities, settings, answers) and the provenance
of its RESULTS."""

from __future__ import annotations

from dataclasses import dataclass, field

from analyze import keptsets, policies
from analyze.options import AnalyzeOptions
from analyze.policies import Policy, label
from core import settings

RETRIEVAL_HEADS = AnalyzeOptions.retrieval_heads  # the option's default


@dataclass(frozen=True)
class Spec:
    """What to compute for every document-layer."""

    policies: tuple[Policy, ...]
    sparsities: tuple[float, ...]
    gqa: str = "kv"
    seed: int = 0
    reference: bool = False  # numpy references instead of numba kernels (tests, benchmark)
    skip_corrupt: bool = False  # a document with a missing or corrupt chunk is left out and listed
    answers: bool = False  # also decode the model's answer under every pruned cache (analyze/answers.py)
    answer_device: str = "cpu"  # where the answer pass runs (in the dump's dtype): cpu, cuda, cuda:N or auto
    setting: str = "aware"  # which query rows a policy may see (core.settings): the one being scored
    settings: tuple[str, ...] = ()  # every setting of the run (RESULTS' `setting` dimension); () = (setting,)
    labels: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "labels", tuple(label(m) for m in self.policies))

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """Agreement pairs (label, reference name), as each policy declares in `compare_with`."""
        return [(lab, ref) for lab, m in zip(self.labels, self.policies) for ref in m.compare_with]

    @property
    def curvature_variants(self) -> list[str]:
        """Policies with block scores, whose rank correlation with block mass is reported."""
        return [lab for lab, m in zip(self.labels, self.policies) if m.block_scores]

    @property
    def reads(self) -> tuple[str, ...]:
        return keptsets.reads_of(self.policies)


def spec_from(opt) -> Spec:
    """The Spec of an `analyze.options.AnalyzeOptions` (the CLI and a study config both build it here)."""
    return Spec(
        tuple(policies.parse_policy(m) for m in opt.policies),
        tuple(opt.sparsity),
        gqa=opt.gqa,
        seed=opt.seed,
        reference=opt.reference,
        skip_corrupt=opt.skip_corrupt,
        answers=opt.answers,
        answer_device=opt.answer_device,
        setting=opt.setting[0],
        settings=tuple(opt.setting),
    )


def provenance(path: str, spec: Spec, retrieval_heads: int = RETRIEVAL_HEADS) -> str:
    """What RESULTS are made from (JSON, in their `provenance` attribute): the RUN store's identity
    (`core.provenance.run_identity`: its documents' state included) and every analysis setting that
    changes a number. The pipeline reruns analyze when it differs; viz checks `--store` against it."""
    import json

    from core.provenance import run_identity

    analysis = {
        "policies": list(spec.labels),
        "sparsities": list(spec.sparsities),
        "gqa": spec.gqa,
        "seed": spec.seed,
        "setting": list(setting_names(spec)),
        "answers": spec.answers,
        "retrieval_heads": retrieval_heads,
    }
    return json.dumps({"run": run_identity(path), "analysis": analysis}, sort_keys=True)


def defined_in(pols, setting: str) -> tuple:
    """The policies that can be scored in `setting`."""
    alone = settings.get(setting).context_only
    return tuple(p for p in pols if not (alone and p.reads_answer_row))


def setting_names(spec: Spec) -> tuple[str, ...]:
    return spec.settings or (spec.setting,)
