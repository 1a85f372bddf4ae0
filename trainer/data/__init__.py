"""Dataset tools of the trainer: ``python -m trainer.data <verb> ...``.

Verbs:

``build-references``
    Kiwi CSV triplets (src_video, tgt_video, prompt) -> quadruplets with a ``ref_image`` column, the
    CSV the reference training stage reads (:mod:`trainer.data.build_references`).
"""
