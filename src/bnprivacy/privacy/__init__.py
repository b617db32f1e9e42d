"""Differential privacy: models Opacus can train (:mod:`.opacus`), the accountant and empirical
epsilon (:mod:`.accounting`), and DP-SGD shadow runs (:mod:`.training`).

This file imports nothing, so importing one module of the package loads only what that module needs.
"""
