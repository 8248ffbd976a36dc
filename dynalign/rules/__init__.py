"""Learning rules, one file each, registered by name in ``dynalign.registry.RULES``.

``make_rule`` builds a rule from a config (or by name), ``attach_rule`` gives a model its B;
see ``base.Rule`` for what a rule does over a run.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config, RuleConfig
from ..registry import RULES
from .base import Rule, output_layer

__all__ = ["Rule", "attach_rule", "make_rule", "output_layer"]


def make_rule(rule: Config | str, seed: int = 0, **settings) -> Rule:
    """The rule ``config.rule.name`` names (with the run's seed), or the rule called ``rule``
    with ``settings`` from the config's rule section (``scale=2.0``, ...)."""
    if isinstance(rule, Config):
        return RULES.load(rule.rule.name)(rule.rule, rule.train.seed)
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES.names())}")
    return RULES.load(rule)(RuleConfig(name=rule, **settings), seed)


def attach_rule(
    model: nn.Module,
    rule: Rule,
    generator: torch.Generator,
    input_shape: tuple[int, ...] | None = None,
) -> Rule:
    """Give every feedback layer of ``model`` its B; ``input_shape`` (one sample) is needed
    by rules whose B depends on what a layer receives (DFA)."""
    rule.attach(model, generator, input_shape)
    return rule
