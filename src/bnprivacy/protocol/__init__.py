"""The comparison protocol: what makes a BN-vs-reference comparison evidence.

A comparison is evidence only when both sides trained to a comparable state. So, for one setting
(dataset, architecture, width, pool, canaries) and the norms to compare:

1. **Budget sweep.** Each norm is trained at a ladder of epoch budgets; every budget is a complete
   training whose learning-rate schedule anneals to its own end (no mid-schedule snapshots).
2. **Per-norm learning rate**, chosen from a small grid of multiples of the base rate by accuracy
   on a validation split carved from the pool's typical samples (never the test set), at the
   first budget of the ladder; for ``nf``, jointly with its AGC threshold from ``agc_grid``.
3. **Fit.** A model has *fit* when its accuracy on its own IN samples (identity query, eval mode)
   reaches ``fit_threshold`` at the end of its budget; a side fits when its models' mean does.
4. **Comparisons**, BN against the reference, paired by seed (same masks and canaries):
   *equal epochs* (the paper's setting, at ``equal_epochs``); *equal epochs, both fit* (every
   budget at which both sides fit, the per-seed differences averaged over those budgets); *matched
   fit* (each norm at its smallest budget that fits); *matched accuracy, interpolated* (BN minus
   the reference at equal test accuracy, read off each norm's curve of the measure against test
   accuracy over its fitting budgets, across the accuracy range both reach, never extrapolated);
   and the *curves* of every measure against budget and test accuracy. Two settings that select
   the same runs are one comparison, named by both (``"equal epochs = equal epochs, both fit"``).
5. **Guard.** A comparison where a side did not fit, or trained to below ``chance_factor`` times
   chance test accuracy, is "not comparable" and is never read as evidence either way.
6. **Shared runs.** One shadow run per (norm, budget, seed) serves chapters 02, 03 and 04: the
   runs are keyed by their spec in the store, so a chapter that needs them loads what another
   chapter trained.

The package follows those jobs: :mod:`.family` (the protocol and its checks), :mod:`.learning_rates`
(step 2 and its cache), :mod:`.sweep` (steps 1 and 3), :mod:`.comparisons` (steps 4 and 5) and
:mod:`.measures` (a measure's values, differences, tests, readings and tables). This file imports
nothing (as every package ``__init__``): import a name from its module,
``from bnprivacy.protocol.comparisons import compare_each``.
"""
