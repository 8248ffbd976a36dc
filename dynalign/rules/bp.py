"""Backpropagation: no feedback tensor; every layer sends its error down through W."""

from __future__ import annotations

from .base import Rule


class Backprop(Rule):
    name = "bp"
