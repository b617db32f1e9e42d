"""Shadow runs on disk and where they train.

One shadow run, followed through the code: :mod:`.spec` (what is trained, its key and folder) ->
:mod:`.shadow` (``shadow_run``: plan, open, an executor trains, load) -> :mod:`.local` or
:mod:`.ray` (the executors, one interface in :mod:`.executor`) -> :mod:`.chunks` (the chunk grid,
train and seal, signals) with :mod:`.locks` (who trains a chunk) and :mod:`.disk` (atomic,
checksummed files). :mod:`.cache` stores single trained models.

This file imports nothing, so importing one module of the package loads only what that module needs.
"""
