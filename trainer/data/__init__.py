"""Dataset tools of the trainer: ``python -m trainer.data <verb> ...``.

Verbs:

``build-references``
    Kiwi CSV triplets (src_video, tgt_video, prompt) -> quadruplets with a ``ref_image`` column, the
    CSV the reference training stage reads (:mod:`trainer.data.build_references`).

``pairs-csv``
    A folder of source clips + a folder of edited clips (same names, ``<name>.txt`` instructions) -> a Kiwi
    CSV (:mod:`trainer.data.pairs_csv`).
"""
