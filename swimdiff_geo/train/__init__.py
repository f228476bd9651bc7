"""Training loops (Lightning). Needs the ``train`` extra.

- :func:`swimdiff_geo.train.pretrain.pretrain`: SwiMDiff self-supervised pretraining
  (``swimdiff-geo pretrain``; docs/pretraining.md).
- :mod:`swimdiff_geo.train.finetune`: change-detection and land-cover heads.
"""
